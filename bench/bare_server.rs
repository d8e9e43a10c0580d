//! `bench-bare-server`: the floor of `bench/compare`. The same
//! `orders.v1.OrderService` proto on plain tonic, with no middleware, no
//! authentication and no database: orders live in a `HashMap`, changes go to
//! watchers through a `tokio::sync::broadcast` per order.
//!
//! With `--tls-cert` and `--tls-key` it serves TLS through tonic's own
//! `ServerTlsConfig` (rustls), and `bench/compare` sends it the same
//! `authorization` header as the full service: that is the floor, what any
//! secure tonic server pays (TLS, and receiving the token), so the full
//! service's figures divided by these are the price of everything it adds on
//! top (checking the token, tracing, metrics, deadlines, durable storage).
//! Without them it serves plaintext: a reference for what TLS itself costs.
//!
//! ```sh
//! cargo run --profile production --bin bench-bare-server -- --addr 127.0.0.1:50061 \
//!     --tls-cert certs/dev/server.pem --tls-key certs/dev/server.key
//! ```
//!
//! It answers `GetOrder`, `RegisterOrder` (idempotent per `request_id`, in
//! memory), `ListOrders` (the first page), `UpdateOrder` and `WatchOrder`, the
//! calls `orders-load` makes; the others are UNIMPLEMENTED. It receives the
//! `authorization` header with the rest of the metadata and reads nothing
//! from it. On SIGTERM or Ctrl-C it prints the number of calls it answered
//! by gRPC code (for `h2load`, which cannot see `grpc-status`) and exits 0.
#![forbid(unsafe_code)]

use orders::pb;
use orders::pb::order_service_server::{OrderService, OrderServiceServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// Events a slow watcher may fall behind by before it is told it lagged.
const WATCH_BUFFER: usize = 64;

struct Entry {
    order: pb::Order,
    /// Made by the first watcher: a broadcast channel allocates its whole
    /// buffer up front, which every registered order would otherwise pay.
    changes: Option<broadcast::Sender<pb::Order>>,
}

#[derive(Default)]
struct State {
    orders: HashMap<String, Entry>,
    by_request_id: HashMap<String, String>,
}

#[derive(Default)]
struct Bare {
    state: RwLock<State>,
    ok: AtomicU64,
    not_found: AtomicU64,
    other_errors: AtomicU64,
}

impl Bare {
    /// Counts the outcome of a unary call (see the module docs).
    fn count<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        match &result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.not_found.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => self.other_errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn get(&self, id: &str) -> Result<pb::Order, Status> {
        let state = self.state.read().expect("state lock");
        state
            .orders
            .get(id)
            .map(|e| e.order.clone())
            .ok_or_else(|| Status::not_found("no such order"))
    }

    fn register(&self, req: pb::RegisterOrderRequest) -> Result<pb::Order, Status> {
        if req.items.is_empty() || req.address.is_none() {
            return Err(Status::invalid_argument("items and address are required"));
        }
        let mut state = self.state.write().expect("state lock");
        if !req.request_id.is_empty()
            && let Some(id) = state.by_request_id.get(&req.request_id)
        {
            return Ok(state.orders[id].order.clone());
        }
        let now = timestamp();
        let order = pb::Order {
            id: uuid::Uuid::now_v7().to_string(),
            customer_id: "bench".into(),
            total_cents: req
                .items
                .iter()
                .map(|i| i64::from(i.quantity) * i.unit_price_cents)
                .sum(),
            items: req.items,
            address: req.address,
            status: pb::OrderStatus::Pending as i32,
            version: 1,
            create_time: Some(now),
            update_time: Some(now),
        };
        if !req.request_id.is_empty() {
            state.by_request_id.insert(req.request_id, order.id.clone());
        }
        state.orders.insert(
            order.id.clone(),
            Entry {
                order: order.clone(),
                changes: None,
            },
        );
        Ok(order)
    }
}

fn timestamp() -> pbjson_types::Timestamp {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OrderEvent, Status>> + Send>>;

#[tonic::async_trait]
impl OrderService for Bare {
    async fn register_order(
        &self,
        request: Request<pb::RegisterOrderRequest>,
    ) -> Result<Response<pb::RegisterOrderResponse>, Status> {
        let result = self.register(request.into_inner());
        self.count(result).map(|order| {
            Response::new(pb::RegisterOrderResponse {
                order_id: order.id.clone(),
                order: Some(order),
            })
        })
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let result = self.get(&request.get_ref().order_id);
        self.count(result).map(Response::new)
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let size = match request.get_ref().page_size {
            n if n <= 0 => 50,
            n => n.min(500) as usize,
        };
        let orders = {
            let state = self.state.read().expect("state lock");
            state
                .orders
                .values()
                .take(size)
                .map(|e| e.order.clone())
                .collect()
        };
        self.count(Ok(Response::new(pb::ListOrdersResponse {
            orders,
            next_page_token: String::new(),
        })))
    }

    async fn cancel_order(
        &self,
        _: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        self.count(Err(Status::unimplemented("not in the bare baseline")))
    }

    async fn advance_order(
        &self,
        _: Request<pb::AdvanceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        self.count(Err(Status::unimplemented("not in the bare baseline")))
    }

    async fn update_order(
        &self,
        request: Request<Streaming<pb::UpdateOrderRequest>>,
    ) -> Result<Response<pb::UpdateOrderResponse>, Status> {
        let mut stream = request.into_inner();
        let mut updates = Vec::new();
        while let Some(msg) = stream.message().await? {
            updates.push(msg);
        }
        let Some(first) = updates.first() else {
            return self.count(Err(Status::invalid_argument("no update")));
        };
        let id = first.order_id.clone();
        let mut state = self.state.write().expect("state lock");
        let Some(entry) = state.orders.get_mut(&id) else {
            return self.count(Err(Status::not_found("no such order")));
        };
        let applied = updates.len() as i32;
        for update in updates {
            entry.order.address = update.address;
            entry.order.version += 1;
            entry.order.update_time = Some(timestamp());
            if let Some(changes) = &entry.changes {
                // No receiver is not an error: nobody is watching any more.
                let _ = changes.send(entry.order.clone());
            }
        }
        self.count(Ok(Response::new(pb::UpdateOrderResponse {
            order: Some(entry.order.clone()),
            updates_applied: applied,
        })))
    }

    type WatchOrderStream = EventStream;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (current, changes) = {
            let mut state = self.state.write().expect("state lock");
            match state.orders.get_mut(&request.get_ref().order_id) {
                Some(e) => {
                    let changes = e
                        .changes
                        .get_or_insert_with(|| broadcast::channel(WATCH_BUFFER).0);
                    (e.order.clone(), changes.subscribe())
                }
                None => return Err(Status::not_found("no such order")),
            }
        };
        let first = tokio_stream::once(Ok(pb::OrderEvent {
            order: Some(current),
        }));
        let later = tokio_stream::wrappers::BroadcastStream::new(changes).map(|r| match r {
            Ok(order) => Ok(pb::OrderEvent { order: Some(order) }),
            Err(lagged) => Err(Status::data_loss(lagged.to_string())),
        });
        Ok(Response::new(Box::pin(first.chain(later))))
    }

    type TrackOrdersStream = EventStream;

    async fn track_orders(
        &self,
        _: Request<Streaming<pb::TrackOrdersRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("not in the bare baseline"))
    }
}

fn main() -> anyhow::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:50061".parse()?;
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    // A few flags only; clap would be fine too, but this keeps the baseline a
    // page of plain tonic.
    let value = |flag: &str, args: &mut std::iter::Skip<std::env::Args>| {
        args.next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = value("--addr", &mut args)?.parse()?,
            "--tls-cert" => cert = Some(std::fs::read(value("--tls-cert", &mut args)?)?),
            "--tls-key" => key = Some(std::fs::read(value("--tls-key", &mut args)?)?),
            "-h" | "--help" => {
                println!(
                    "bench-bare-server [--addr HOST:PORT] [--tls-cert PEM --tls-key PEM]  (default 127.0.0.1:50061, plaintext)\n\
                     With a certificate and key it serves TLS through tonic's own TLS (rustls): \
                     the floor any secure tonic server pays, which bench/compare measures the service against."
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (see --help)"),
        }
    }
    // Half a TLS configuration would quietly measure plaintext.
    if cert.is_some() != key.is_some() {
        anyhow::bail!("--tls-cert and --tls-key go together");
    }
    // The default runtime: one worker per CPU this process may run on, as the
    // full service has.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let bare = Arc::new(Bare::default());
        // Bound here (not by `serve`) to print the port when given port 0;
        // TCP_NODELAY as the full service sets it, or Nagle's algorithm
        // would hold small stream messages back.
        let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
        println!("listening on {}", incoming.local_addr()?);
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let mut server = tonic::transport::Server::builder();
        if let Some((cert, key)) = cert.zip(key) {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            server =
                server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        server
            .add_service(OrderServiceServer::from_arc(bare.clone()))
            .serve_with_incoming_shutdown(incoming, stop)
            .await?;
        println!(
            "handled: OK={} NotFound={} other={}",
            bare.ok.load(Ordering::Relaxed),
            bare.not_found.load(Ordering::Relaxed),
            bare.other_errors.load(Ordering::Relaxed)
        );
        Ok(())
    })
}
