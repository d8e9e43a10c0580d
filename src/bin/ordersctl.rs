//! `ordersctl`: the command-line client of the orders service, built on the
//! SDK (`orders::sdk`) only.
//!
//! ```text
//! $ export ORDERS_ENDPOINT=https://localhost:50051 ORDERS_CA_CERT=certs/dev/ca.pem
//! $ export ORDERS_TOKEN="$(orders-server dev-token --sub alice --scope 'orders:read orders:write')"
//! $ ordersctl register --item APPLE-1:3:250 --item MILK:2:99 \
//!       --street "Main Street" --number 12 --city Utrecht --postal-code "3511 AB"
//! $ ordersctl --output json get 0193f1c2-...
//! $ ordersctl update 0193f1c2-... --address "Oak Lane|7|Delft|2611 AA"
//! $ ordersctl watch 0193f1c2-...
//! ```
//!
//! Exit codes: 0 on success, 10 + the gRPC code number on a failed call
//! (15 NOT_FOUND, 24 UNAVAILABLE, 26 UNAUTHENTICATED, ...), 2 for usage
//! errors, 1 when `health` answers but the service is not SERVING.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand, ValueEnum};
use orders::sdk::{Client, Error, pb};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tonic::Code;

const AFTER_HELP: &str = "\
Output:
  --output json prints the canonical proto3 JSON mapping, as grpcurl does:
  one object for unary calls; one object per line for streams (watch, track)
  and for list, which prints each Order of every page on its own line.

Exit codes:
  0         success
  1         health: the server answered, but the service is not SERVING
  2         usage error (bad flag or value, unreadable --ca-cert/--client-* file)
  10 + N    the call failed with gRPC code N: 13 INVALID_ARGUMENT, 15 NOT_FOUND,
            17 PERMISSION_DENIED, 19 FAILED_PRECONDITION, 20 ABORTED,
            24 UNAVAILABLE (also: endpoint unreachable), 26 UNAUTHENTICATED";

/// Command-line client of the orders service (orders.v1.OrderService).
#[derive(Debug, Parser)]
#[command(name = "ordersctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// The server: https://HOST:PORT (a bare HOST:PORT means https;
    /// http:// for a plaintext server).
    #[arg(
        long,
        env = "ORDERS_ENDPOINT",
        default_value = "https://localhost:50051",
        global = true
    )]
    endpoint: String,

    /// PEM file of the CA that signed the server's certificate.
    #[arg(long, env = "ORDERS_CA_CERT", value_name = "PEM", global = true)]
    ca_cert: Option<PathBuf>,

    /// Bearer token (JWT) sent with every call.
    // hide_env_values: `--help` must never show the token taken from the environment.
    #[arg(long, env = "ORDERS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, value_name = "PEM", requires = "client_key", global = true)]
    client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, value_name = "PEM", requires = "client_cert", global = true)]
    client_key: Option<PathBuf>,

    /// Deadline of each call, e.g. 5s, 500ms, 1m (watch and track have none).
    #[arg(long, default_value = "10s", value_parser = parse_timeout, global = true)]
    timeout: Duration,

    /// How to print results.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Proto3 JSON, one object per line.
    Json,
    /// Aligned columns for people.
    Table,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register an order (status PENDING).
    Register(RegisterArgs),
    /// Show one order.
    Get {
        /// The order id.
        id: String,
    },
    /// List the orders you may see, following every page.
    ///
    /// With --output json, prints one Order object per line (not a
    /// ListOrdersResponse): the pages are joined into one listing.
    List {
        /// Only orders in this status: pending, confirmed, shipped, delivered,
        /// cancelled (any case; ORDER_STATUS_PENDING also accepted).
        #[arg(long, value_parser = parse_status)]
        status: Option<pb::OrderStatus>,
        /// Orders per page requested from the server (default: the server's, 50).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        page_size: Option<i32>,
    },
    /// Cancel an order (PENDING or CONFIRMED).
    Cancel(VersionedArgs),
    /// Move an order one step: PENDING, CONFIRMED, SHIPPED, DELIVERED (staff).
    Advance(VersionedArgs),
    /// Change the delivery address; all addresses are sent on one stream and
    /// applied together (all or none), each as its own version.
    Update {
        /// The order id.
        id: String,
        /// A new address, "STREET|NUMBER|CITY|POSTAL_CODE" (repeatable).
        #[arg(long = "address", required = true, value_parser = parse_address)]
        addresses: Vec<pb::Address>,
    },
    /// Print the order, then every change, one event per line, until it is
    /// DELIVERED or CANCELLED.
    Watch {
        /// The order id.
        id: String,
        /// Start with the versions after this one (to resume a watch).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        after_version: i64,
    },
    /// Follow several orders on one stream until all of them are final.
    Track {
        /// The order ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Ask grpc.health.v1.Health whether the server is serving.
    Health {
        /// The service name to check ("" means the whole server; also
        /// liveness, readiness, orders.v1.OrderService).
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// A line item, SKU:QUANTITY:UNIT_PRICE_CENTS (repeatable, at least one).
    #[arg(long = "item", required = true, value_parser = parse_item)]
    items: Vec<pb::LineItem>,
    /// Delivery address: street.
    #[arg(long)]
    street: String,
    /// Delivery address: house number.
    #[arg(long)]
    number: i64,
    /// Delivery address: city.
    #[arg(long)]
    city: String,
    /// Delivery address: postal code.
    #[arg(long)]
    postal_code: String,
    /// Idempotency key (a UUID): repeating the same request returns the same
    /// order. Without it a fresh one is generated.
    #[arg(long)]
    request_id: Option<String>,
}

#[derive(Debug, Args)]
struct VersionedArgs {
    /// The order id.
    id: String,
    /// Fail with ABORTED unless the order is at this version (0: any).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    expected_version: i64,
}

// ---- value parsers: syntax only; the server checks ranges and reports every
// violation at once, so the client does not duplicate (and drift from) its rules.

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| "expected a duration such as 5s, 500ms or 1m".to_string())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    if seconds <= 0.0 {
        return Err("the timeout must be greater than zero".into());
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

fn parse_item(s: &str) -> Result<pb::LineItem, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [sku, quantity, price] = parts[..] else {
        return Err("expected SKU:QUANTITY:UNIT_PRICE_CENTS, e.g. APPLE-1:3:250".into());
    };
    Ok(pb::LineItem {
        sku: sku.to_string(),
        quantity: quantity
            .parse()
            .map_err(|_| format!("quantity {quantity:?} is not a whole number"))?,
        unit_price_cents: price
            .parse()
            .map_err(|_| format!("unit price {price:?} is not a whole number of cents"))?,
    })
}

fn parse_address(s: &str) -> Result<pb::Address, String> {
    // Spaces around the separators are layout, not data: "Oak Lane | 7 | ...".
    let parts: Vec<&str> = s.split('|').map(str::trim).collect();
    let [street, number, city, postal_code] = parts[..] else {
        return Err(
            "expected STREET|NUMBER|CITY|POSTAL_CODE, e.g. \"Oak Lane|7|Delft|2611 AA\"".into(),
        );
    };
    Ok(pb::Address {
        street: street.to_string(),
        number: number
            .parse()
            .map_err(|_| format!("house number {number:?} is not a whole number"))?,
        city: city.to_string(),
        postal_code: postal_code.to_string(),
    })
}

fn parse_status(s: &str) -> Result<pb::OrderStatus, String> {
    let upper = s.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("ORDER_STATUS_").unwrap_or(&upper);
    match pb::OrderStatus::from_str_name(&format!("ORDER_STATUS_{short}")) {
        // UNSPECIFIED would mean "no filter": leaving out --status says that.
        Some(status) if status != pb::OrderStatus::Unspecified => Ok(status),
        _ => Err("expected pending, confirmed, shipped, delivered or cancelled".into()),
    }
}

// ---- failures and how they are shown

/// What the user gave, so an error can say how to fix it.
struct Setup {
    endpoint: String,
    token_given: bool,
    ca_given: bool,
}

enum Failure {
    /// A local mistake found before any call (an unreadable PEM file).
    Usage(String),
    /// A call failed.
    Call(Error),
    /// Writing the output failed.
    Output(io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Call(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Output(e)
    }
}

impl Failure {
    fn report(self, setup: &Setup) -> ExitCode {
        match self {
            Failure::Usage(message) => {
                eprintln!("ordersctl: {message}");
                ExitCode::from(2)
            }
            Failure::Call(error) => {
                eprintln!("{}", describe(&error, setup));
                for (field, description) in error.violations() {
                    eprintln!("  {field}: {description}");
                }
                // Codes are 1..=16, so 10 + code fits in a u8.
                ExitCode::from(10 + error.code() as u8)
            }
            // The reader went away (`ordersctl list | head`): nothing left to say.
            Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Failure::Output(e) => {
                eprintln!("ordersctl: cannot write the output: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The one-line summary: `ordersctl: CODE: message (hint)`.
fn describe(error: &Error, setup: &Setup) -> String {
    let message = match error {
        Error::Status(status) => status.message().to_string(),
        Error::Connect(cause) => format!("cannot connect to {}: {cause}", setup.endpoint),
        other => other.to_string(),
    };
    let mut line = format!("ordersctl: {}: {message}", code_name(error.code()));
    if let Some(hint) = hint(error, setup) {
        line.push_str(" (");
        line.push_str(&hint);
        line.push(')');
    }
    // One line, whatever the server or the transport put in its message.
    line.replace(['\n', '\r'], " ")
}

fn hint(error: &Error, setup: &Setup) -> Option<String> {
    let message = match error {
        Error::Status(status) => status.message().to_ascii_lowercase(),
        other => other.to_string().to_ascii_lowercase(),
    };
    let tls_trouble = ["certificate", "unknownissuer", "tls", "handshake"]
        .iter()
        .any(|needle| message.contains(needle));
    match error.code() {
        Code::Unauthenticated if !setup.token_given => {
            Some("no token was sent: pass --token or set ORDERS_TOKEN".into())
        }
        Code::Unauthenticated => match error.reason().as_deref() {
            Some("TOKEN_EXPIRED") => {
                Some("token expired; get a new one (orders-server dev-token in development)".into())
            }
            Some(reason) => Some(format!("the token was refused: {reason}")),
            None => None,
        },
        Code::PermissionDenied => error
            .error_metadata()
            .get("required_scope")
            .map(|scope| format!("the token lacks the scope {scope}")),
        Code::Unavailable | Code::Unknown | Code::Internal if tls_trouble => {
            Some(if setup.ca_given {
                "TLS failed: is --ca-cert the CA that signed the server's certificate, \
                 and does that certificate name the --endpoint host?"
                    .into()
            } else {
                "TLS failed: pass the CA that signed the server's certificate with \
                 --ca-cert or ORDERS_CA_CERT"
                    .into()
            })
        }
        Code::Unavailable if matches!(error, Error::Connect(_)) => Some(format!(
            "is the server running at {}? set --endpoint or ORDERS_ENDPOINT",
            setup.endpoint
        )),
        _ => None,
    }
}

/// The gRPC name of a code (`tonic::Code`'s Display is a prose description).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// ---- output

const HEADERS: [&str; 6] = ["ID", "CUSTOMER", "STATUS", "TOTAL", "VERSION", "ADDRESS"];

/// Aligned columns. The last column (the address) is not padded, so lines
/// carry no trailing spaces.
struct Table {
    widths: [usize; 5],
}

impl Table {
    /// Columns as wide as the widest of `rows`.
    fn fitting(rows: &[[String; 6]]) -> Self {
        let mut widths = [0; 5];
        for (i, width) in widths.iter_mut().enumerate() {
            *width = rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([HEADERS[i].len()])
                .max()
                .unwrap_or(0);
        }
        Self { widths }
    }

    /// For streams, whose rows are not known in advance: wide enough for a
    /// UUID, a status name and the usual totals.
    fn streaming() -> Self {
        Self {
            widths: [36, 10, 9, 10, 7],
        }
    }

    fn line(&self, cells: [&str; 6]) -> String {
        let mut line = String::new();
        for (i, width) in self.widths.iter().enumerate() {
            // TOTAL and VERSION are numbers: right-aligned.
            if i == 3 || i == 4 {
                line.push_str(&format!("{:>width$}  ", cells[i]));
            } else {
                line.push_str(&format!("{:<width$}  ", cells[i]));
            }
        }
        line.push_str(cells[5]);
        line
    }

    fn header(&self) -> String {
        self.line(HEADERS)
    }

    fn row(&self, cells: &[String; 6]) -> String {
        self.line(cells.each_ref().map(String::as_str))
    }
}

fn cells(order: &pb::Order) -> [String; 6] {
    let address = order
        .address
        .as_ref()
        .map(|a| format!("{} {}, {}", a.street, a.number, a.city))
        .unwrap_or_default();
    [
        order.id.clone(),
        order.customer_id.clone(),
        status_name(order.status),
        money(order.total_cents),
        order.version.to_string(),
        address,
    ]
}

fn status_name(status: i32) -> String {
    match pb::OrderStatus::try_from(status) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("ORDER_STATUS_")
            .to_string(),
        // A status newer than this client: show the number rather than guess.
        Err(_) => status.to_string(),
    }
}

/// Cents as a decimal amount: 948 → "9.48".
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

struct Printer {
    format: Output,
    out: io::Stdout,
    stream_table: Option<Table>,
}

impl Printer {
    fn new(format: Output) -> Self {
        Self {
            format,
            out: io::stdout(),
            stream_table: None,
        }
    }

    fn line(&mut self, text: &str) -> io::Result<()> {
        let mut out = self.out.lock();
        writeln!(out, "{text}")?;
        // Streams must reach a pipe as they happen, not when a buffer fills.
        out.flush()
    }

    fn json<T: serde::Serialize>(&mut self, message: &T) -> io::Result<()> {
        let text = serde_json::to_string(message).map_err(io::Error::other)?;
        self.line(&text)
    }

    fn orders(&mut self, orders: &[pb::Order]) -> io::Result<()> {
        match self.format {
            Output::Json => orders.iter().try_for_each(|o| self.json(o)),
            Output::Table => {
                let rows: Vec<[String; 6]> = orders.iter().map(cells).collect();
                let table = Table::fitting(&rows);
                self.line(&table.header())?;
                rows.iter().try_for_each(|r| self.line(&table.row(r)))
            }
        }
    }

    fn order(&mut self, order: &pb::Order) -> io::Result<()> {
        self.orders(std::slice::from_ref(order))
    }

    /// One event of a stream, printed as it arrives.
    fn event(&mut self, event: &pb::OrderEvent) -> io::Result<()> {
        if self.format == Output::Json {
            return self.json(event);
        }
        let Some(order) = &event.order else {
            return Ok(());
        };
        if self.stream_table.is_none() {
            let table = Table::streaming();
            self.line(&table.header())?;
            self.stream_table = Some(table);
        }
        let row = self.stream_table.as_ref().map(|t| t.row(&cells(order)));
        self.line(&row.unwrap_or_default())
    }
}

// ---- running a command

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {flag} {}: {e}", path.display())))
}

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let mut builder = Client::builder(cli.endpoint.clone()).timeout(cli.timeout);
    if let Some(path) = &cli.ca_cert {
        builder = builder.ca_certificate(read_pem("--ca-cert", path)?);
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        builder = builder.client_identity(
            read_pem("--client-cert", cert)?,
            read_pem("--client-key", key)?,
        );
    }
    // An empty ORDERS_TOKEN is as good as none: send no header at all.
    if let Some(token) = cli.token.as_ref().filter(|t| !t.is_empty()) {
        builder = builder.token(token.clone());
    }
    Ok(builder.connect().await?)
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let client = connect(&cli).await?;
    let mut out = Printer::new(cli.output);
    match cli.command {
        Command::Register(args) => {
            let address = pb::Address {
                street: args.street,
                number: args.number,
                city: args.city,
                postal_code: args.postal_code,
            };
            let response = match args.request_id {
                Some(request_id) => {
                    client
                        .register(pb::RegisterOrderRequest {
                            items: args.items,
                            address: Some(address),
                            request_id,
                        })
                        .await?
                }
                // The SDK generates the request_id; the response is rebuilt
                // so both paths print the same message.
                None => {
                    let order = client.register_order(args.items, address).await?;
                    pb::RegisterOrderResponse {
                        order_id: order.id.clone(),
                        order: Some(order),
                    }
                }
            };
            match (cli.output, &response.order) {
                (Output::Table, Some(order)) => out.order(order)?,
                _ => out.json(&response)?,
            }
        }
        Command::Get { id } => out.order(&client.get_order(&id).await?)?,
        Command::List { status, page_size } => {
            let status = status.unwrap_or(pb::OrderStatus::Unspecified);
            // 0 asks for the server's default page size.
            let orders = client.list_all(status, page_size.unwrap_or(0)).await?;
            if orders.is_empty() && cli.output == Output::Table {
                eprintln!("no orders");
            } else {
                out.orders(&orders)?;
            }
        }
        Command::Cancel(args) => {
            let order = client.cancel_order(&args.id, args.expected_version).await?;
            out.order(&order)?;
        }
        Command::Advance(args) => {
            let order = client
                .advance_order(&args.id, args.expected_version)
                .await?;
            out.order(&order)?;
        }
        Command::Update { id, addresses } => {
            let response = client.update_order(&id, addresses).await?;
            match (cli.output, &response.order) {
                (Output::Table, Some(order)) => {
                    out.order(order)?;
                    out.line(&format!("updates applied: {}", response.updates_applied))?;
                }
                _ => out.json(&response)?,
            }
        }
        Command::Watch { id, after_version } => {
            let events = client.watch_order(&id, after_version).await?;
            follow(&mut out, events).await?;
        }
        Command::Track { ids } => {
            use pb::track_orders_request::Action;
            // Subscribe to everything, then half-close: the server ends the
            // stream once every tracked order is final.
            let requests: Vec<pb::TrackOrdersRequest> = ids
                .into_iter()
                .map(|id| pb::TrackOrdersRequest {
                    action: Some(Action::Subscribe(id)),
                })
                .collect();
            let events = client.track_orders(tokio_stream::iter(requests)).await?;
            follow(&mut out, events).await?;
        }
        Command::Health { service } => {
            let status = client.health(&service).await?;
            let name = status.as_str_name();
            match cli.output {
                Output::Json => out.json(&serde_json::json!({ "status": name }))?,
                Output::Table => out.line(name)?,
            }
            if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints events until the server ends the stream (OK) or fails it.
async fn follow(
    out: &mut Printer,
    mut events: tonic::Streaming<pb::OrderEvent>,
) -> Result<(), Failure> {
    while let Some(event) = events.message().await.map_err(Error::from)? {
        out.event(&event)?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit here with code 2 (clap's convention).
    let cli = Cli::parse();
    let setup = Setup {
        endpoint: cli.endpoint.clone(),
        token_given: cli.token.as_deref().is_some_and(|t| !t.is_empty()),
        ca_given: cli.ca_cert.is_some(),
    };
    match run(cli).await {
        Ok(code) => code,
        Err(failure) => failure.report(&setup),
    }
}
