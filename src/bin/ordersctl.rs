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

/// Subcommand help lists the connection flags apart from the command's own.
const GLOBAL: &str = "Global options";

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
        global = true,
        help_heading = GLOBAL
    )]
    endpoint: String,

    /// PEM file of the CA that signed the server's certificate.
    #[arg(
        long,
        env = "ORDERS_CA_CERT",
        value_name = "PEM",
        global = true,
        help_heading = GLOBAL
    )]
    ca_cert: Option<PathBuf>,

    /// Bearer token (JWT) sent with every call.
    // hide_env_values: `--help` must never show the token taken from the environment.
    #[arg(
        long,
        env = "ORDERS_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = GLOBAL
    )]
    token: Option<String>,

    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(
        long,
        value_name = "PEM",
        requires = "client_key",
        global = true,
        help_heading = GLOBAL
    )]
    client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(
        long,
        value_name = "PEM",
        requires = "client_cert",
        global = true,
        help_heading = GLOBAL
    )]
    client_key: Option<PathBuf>,

    /// Deadline of each call, e.g. 5s, 500ms, 1m (watch and track have none).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_timeout,
        global = true,
        help_heading = GLOBAL
    )]
    timeout: Duration,

    /// How to print results.
    #[arg(
        long,
        value_enum,
        default_value_t = Output::Table,
        global = true,
        help_heading = GLOBAL
    )]
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
        #[arg(
            long = "address",
            value_name = "STREET|NUMBER|CITY|POSTAL_CODE",
            required = true,
            value_parser = parse_address
        )]
        addresses: Vec<pb::Address>,
        /// Apply only if the order is at this version (0: any). With it set,
        /// the call is retried on UNAVAILABLE like the others: an attempt
        /// already applied makes the retry ABORTED, never a second change.
        #[arg(long, default_value_t = 0)]
        expected_version: i64,
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
    #[arg(
        long = "item",
        value_name = "SKU:QUANTITY:UNIT_PRICE_CENTS",
        required = true,
        value_parser = parse_item
    )]
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
    client_cert_given: bool,
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
        Error::Status(status) => {
            let message = without_violations(status.message(), &error.violations());
            // A transport failure mid-call says only "transport error"; the
            // why (a TLS alert, a reset) is in the status's source chain.
            let mut chain = message.clone();
            let mut source = std::error::Error::source(status);
            while let Some(cause) = source {
                chain.push_str(": ");
                chain.push_str(&cause.to_string());
                source = cause.source();
            }
            if chain == message {
                message
            } else {
                tidy(&chain)
            }
        }
        Error::Connect(chain) => format!("cannot connect to {}: {}", setup.endpoint, tidy(chain)),
        other => other.to_string(),
    };
    let mut line = format!(
        "ordersctl: {}: {message}",
        orders::sdk::code_name(error.code())
    );
    if let Some(hint) = hint(error, &message, setup) {
        line.push_str(" (");
        line.push_str(&hint);
        line.push(')');
    }
    // One line, whatever the server or the transport put in its message.
    line.replace(['\n', '\r'], " ")
}

/// The server's message up to where it starts listing the violations, which
/// follow on lines of their own: saying them twice buries them.
fn without_violations(message: &str, violations: &[(String, String)]) -> String {
    let Some((field, _)) = violations.first() else {
        return message.to_string();
    };
    match message.find(&format!("{field}: ")) {
        Some(at) => {
            let head = message[..at].trim_end_matches([':', ';', ' ']);
            if head.is_empty() {
                "invalid request"
            } else {
                head
            }
            .to_string()
        }
        None => message.to_string(),
    }
}

/// The SDK joins a connection error's source chain with ": ", and tonic's and
/// hyper's errors repeat their source in their own text, so the chain says
/// things twice ("dns error: dns error: ..."). Each part is kept once, and the
/// uninformative "transport error" not at all.
fn tidy(chain: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in chain.split(": ") {
        if part != "transport error" && !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// How to fix the common mistakes, when the error shows which one it is.
fn hint(error: &Error, message: &str, setup: &Setup) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let mentions = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    // Codes tonic gives failures of the connection rather than of the call
    // (CANCELLED too: this client never cancels, the transport did).
    let transport = matches!(
        error.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    );
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
            .filter(|scope| !message.contains(scope.as_str()))
            .map(|scope| format!("the token lacks the scope {scope}")),
        _ if transport && mentions(&["certificaterequired"]) => Some(
            "the server requires a client certificate: pass --client-cert and --client-key".into(),
        ),
        _ if transport && setup.client_cert_given && mentions(&["fatal alert"]) => Some(
            "the server refused the TLS connection: is --client-cert signed by a CA it trusts?"
                .into(),
        ),
        // With TLS 1.3 a server that wants a client certificate may just
        // hang up after the handshake, before its alert is read.
        _ if transport
            && !setup.client_cert_given
            && !setup.endpoint.starts_with("http://")
            && mentions(&["connection closed", "broken pipe", "connection reset"]) =>
        {
            Some(
                "the server closed the connection; if it requires mutual TLS, \
                 pass --client-cert and --client-key"
                    .into(),
            )
        }
        // A TLS client talking to a plaintext port reads garbage as a record.
        _ if transport && mentions(&["corrupt message", "invalidcontenttype"]) => Some(
            "the server did not answer in TLS; for a plaintext server use an http:// endpoint"
                .into(),
        ),
        _ if transport && mentions(&["certificate", "unknownissuer", "tls", "handshake"]) => {
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
        // Plaintext HTTP/2 to a TLS port fails without saying why.
        _ if transport && setup.endpoint.starts_with("http://") => {
            Some("the endpoint is plaintext http://; if the server uses TLS, use https://".into())
        }
        _ => None,
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

/// How the Timestamp fields of this API (`Order.create_time`, `update_time`)
/// open in serde_json's compact output.
const TIMESTAMP_KEYS: [&str; 2] = ["\"createTime\":\"", "\"updateTime\":\""];

/// pbjson-types 0.9 writes Timestamps with chrono's `to_rfc3339`, which ends
/// in `+00:00`; the proto3 JSON mapping (and grpcurl) writes `Z`. The digits
/// before it (0, 3, 6 or 9 fractional) already match, so only the suffix is
/// rewritten. This works on the text, not a `serde_json::Value`, to keep the
/// fields in proto order as grpcurl prints them (a `Value` sorts its keys).
/// The key pattern cannot occur inside a string value, where every quote is
/// escaped, so user data is never touched.
fn z_normalize_timestamps(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some((at, key)) = TIMESTAMP_KEYS
        .iter()
        .filter_map(|key| rest.find(key).map(|at| (at, key)))
        .min()
    {
        let value_at = at + key.len();
        out.push_str(&rest[..value_at]);
        rest = &rest[value_at..];
        // A timestamp has no escapes: its value ends at the next quote.
        let end = rest.find('"').unwrap_or(rest.len());
        match rest[..end].strip_suffix("+00:00") {
            Some(utc) => {
                out.push_str(utc);
                out.push('Z');
            }
            None => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

struct Printer {
    format: Output,
    out: io::Stdout,
    /// Whether a stream's table header is out (it goes before the first row).
    stream_header_done: bool,
}

impl Printer {
    fn new(format: Output) -> Self {
        Self {
            format,
            out: io::stdout(),
            stream_header_done: false,
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
        self.line(&z_normalize_timestamps(&text))
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
        let table = Table::streaming();
        if !self.stream_header_done {
            self.line(&table.header())?;
            self.stream_header_done = true;
        }
        self.line(&table.row(&cells(order)))
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
        Command::Update {
            id,
            addresses,
            expected_version,
        } => {
            let response = if expected_version == 0 {
                client.update_order(&id, addresses).await?
            } else {
                client
                    .update_order_at(&id, expected_version, addresses)
                    .await?
            };
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
            // Subscribe to everything, then close: the stream ends once every
            // tracked order is final. It survives reconnects (the SDK
            // subscribes again and drops versions already printed).
            let mut tracker = client.track_orders();
            for id in &ids {
                tracker.subscribe(id).await;
            }
            tracker.close();
            follow(&mut out, tracker).await?;
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
/// Prints each version of a resumable stream (`watch`, `track`) as an event.
async fn follow(
    out: &mut Printer,
    mut orders: impl tokio_stream::Stream<Item = Result<pb::Order, Error>> + Unpin,
) -> Result<(), Failure> {
    use tokio_stream::StreamExt;
    while let Some(order) = orders.next().await {
        out.event(&pb::OrderEvent {
            order: Some(order?),
        })?;
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
        client_cert_given: cli.client_cert.is_some(),
    };
    match run(cli).await {
        Ok(code) => code,
        Err(failure) => failure.report(&setup),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_parse_as_sku_quantity_and_price() {
        let item = parse_item("APPLE-1:3:250").unwrap();
        assert_eq!(
            (item.sku.as_str(), item.quantity, item.unit_price_cents),
            ("APPLE-1", 3, 250)
        );
        // Ranges are the server's to judge (it reports every violation at once).
        assert_eq!(parse_item("APPLE-1:0:-1").unwrap().quantity, 0);
        for bad in ["APPLE:x:1", "APPLE:1", "APPLE:1:2:3", "APPLE:1:1.5"] {
            assert!(parse_item(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_parse_from_four_parts() {
        let a = parse_address("Oak Lane | 7 | Delft | 2611 AA").unwrap();
        assert_eq!(
            (
                a.street.as_str(),
                a.number,
                a.city.as_str(),
                a.postal_code.as_str()
            ),
            ("Oak Lane", 7, "Delft", "2611 AA")
        );
        for bad in [
            "Oak Lane|7|Delft",
            "Oak Lane|seven|Delft|2611 AA",
            "a|1|b|c|d",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_parse_in_any_case_and_either_form() {
        for (text, status) in [
            ("pending", pb::OrderStatus::Pending),
            ("Shipped", pb::OrderStatus::Shipped),
            ("ORDER_STATUS_CANCELLED", pb::OrderStatus::Cancelled),
            ("order_status_delivered", pb::OrderStatus::Delivered),
        ] {
            assert_eq!(parse_status(text), Ok(status), "{text}");
        }
        for bad in ["unspecified", "lost", ""] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_take_units() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("7"), Ok(Duration::from_secs(7)));
        for bad in ["0s", "soon", "5d", "-1s", ""] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(948), "9.48");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(100), "1.00");
        assert_eq!(money(-250), "-2.50");
    }

    #[test]
    fn timestamps_end_in_z_and_nothing_else_changes() {
        let json = r#"{"id":"x","address":{"street":"\"createTime\":\"+00:00"},"createTime":"2025-01-02T03:04:05.123+00:00","updateTime":"2025-01-02T03:04:05+00:00"}"#;
        assert_eq!(
            z_normalize_timestamps(json),
            r#"{"id":"x","address":{"street":"\"createTime\":\"+00:00"},"createTime":"2025-01-02T03:04:05.123Z","updateTime":"2025-01-02T03:04:05Z"}"#
        );
    }

    #[test]
    fn connection_error_chains_say_each_thing_once() {
        assert_eq!(
            tidy("transport error: dns error: dns error: failed to lookup"),
            "dns error: failed to lookup"
        );
        assert_eq!(
            tidy(
                "transport error: invalid peer certificate: UnknownIssuer: invalid peer certificate: UnknownIssuer"
            ),
            "invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn the_summary_leaves_violations_to_their_own_lines() {
        let violations = vec![(
            "items[0].quantity".to_string(),
            "must be between 1 and 1000".to_string(),
        )];
        assert_eq!(
            without_violations(
                "invalid request: items[0].quantity: must be between 1 and 1000",
                &violations
            ),
            "invalid request"
        );
        assert_eq!(
            without_violations("something else", &violations),
            "something else"
        );
        assert_eq!(without_violations("not found", &[]), "not found");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
