//! `Application`: the orders service mounted on the platform's server.
//! Binds first (so callers learn the real port, even for port 0), serves
//! later, and stops when the shutdown future it is given resolves.
//!
//! What is the service's here: its store, the readiness check (a database
//! ping), its metrics, and the `OrderService` with its codecs and limits.
//! Everything else (TLS, the layers, authorization from the proto's access
//! options, health, the admin port, draining) is the platform's.

use crate::config::{OrdersSections, Settings, mask_password};
use crate::pb::order_service_server::OrderServiceServer;
use crate::service::Orders;
use crate::store::{self, Store};
use anyhow::Context;
use grpc_platform::health::HealthState;
use grpc_platform::program::Service;
use grpc_platform::server::{Server, ServerBuilder};
use grpc_platform::telemetry::CallTelemetry;
use grpc_platform::tls;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;

/// The service's short name: the prefix of its own metrics, the name of its
/// traces, the name on its development certificates.
pub const SERVICE_NAME: &str = "orders";

pub use grpc_platform::server::SHUTDOWN_GRACE;

pub struct Application {
    server: Server,
    store: Arc<dyn Store>,
}

/// The orders service as a program of the platform's
/// (`grpc_platform::program`): `orders-server`'s `main` runs it.
pub struct OrdersServer;

impl Service for OrdersServer {
    const PROGRAM: &'static str = "orders-server";
    const ABOUT: &'static str = "The orders gRPC service";
    const NAME: &'static str = SERVICE_NAME;
    const ENV_PREFIX: &'static str = crate::config::ENV_PREFIX;
    const DEV_SCOPE: &'static str = "orders:read orders:write";
    const SERVICES: &'static [(&'static str, &'static [u8])] = &[(
        <OrderServiceServer<Orders> as NamedService>::NAME,
        crate::pb::FILE_DESCRIPTOR_SET,
    )];
    type Sections = OrdersSections;

    async fn mount(settings: Settings, server: ServerBuilder) -> anyhow::Result<ServerBuilder> {
        Ok(mount(&settings, server).await?.0)
    }
}

/// Connects the store (migrating it) and mounts the orders service on
/// `server`, with the store's ping as readiness and its metrics.
async fn mount(
    settings: &Settings,
    server: ServerBuilder,
) -> anyhow::Result<(ServerBuilder, Arc<dyn Store>)> {
    let database = &settings.service.database;
    let store = store::connect(database.url(), &database.store_options())
        .await
        .with_context(|| format!("database {}", mask_password(database.url())))?;
    let max = settings.server.max_message_bytes;
    let orders = OrderServiceServer::new(Orders::new(
        store.clone(),
        server.stopping(),
        server.health(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max)
    .accept_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Zstd)
    .send_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Zstd);
    let ping = store.clone();
    let server = server
        .mount(orders, crate::pb::FILE_DESCRIPTOR_SET)?
        .readiness(Arc::new(move || {
            let store = ping.clone();
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        }))
        .collector(Box::new(store::StoreMetrics::new(store.clone())));
    Ok((server, store))
}

impl Application {
    /// Prepares everything that can fail (certificates, keys, database,
    /// migrations, the access the proto declares, the ports) before
    /// anything is served. An access policy nobody decided is a
    /// `PolicyError` (exit 78: `grpc_platform::server::exit_code`).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_telemetry(settings, CallTelemetry::default()).await
    }

    /// As [`build`](Self::build), with what the process's telemetry asks of
    /// each call (`grpc_platform::telemetry::TelemetryGuard::calls`).
    pub async fn build_with_telemetry(
        settings: Settings,
        telemetry: CallTelemetry,
    ) -> anyhow::Result<Self> {
        let server = ServerBuilder::new(settings.platform.clone(), SERVICE_NAME)
            .await?
            .telemetry(telemetry);
        let (server, store) = mount(&settings, server).await?;
        let server = server.bind().await?;
        Ok(Self { server, store })
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The bound admin address (health and `/metrics`, plaintext).
    pub fn admin_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn health(&self) -> HealthState {
        self.server.health()
    }

    /// The TLS configuration in service (`None` for plaintext): its
    /// `expiry_unix()` is `orders_tls_cert_expiry_timestamp_seconds`.
    pub fn tls_state(&self) -> Option<Arc<tls::CertState>> {
        self.server.tls_state()
    }

    /// Serves until `shutdown` resolves; then turns health NOT_SERVING (all
    /// names but `liveness`), keeps serving for `shutdown.drain_secs` so load
    /// balancers move away, ends open streams with UNAVAILABLE (clients
    /// resume elsewhere), finishes in-flight calls and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.server.run_until_stopped(shutdown).await
    }
}
