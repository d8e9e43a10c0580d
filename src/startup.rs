//! `Application`: binds first (so callers learn the real port, even for port
//! 0), serves later, and stops when the shutdown future it is given resolves.

use crate::auth::{AuthLayer, Verifier};
use crate::config::{Environment, Settings};
use crate::health::HealthState;
use crate::middleware::{
    access_log::AccessLogLayer, concurrency::ConcurrencyLimitLayer, deadline::DeadlineLayer,
    message_size::MessageSizeLayer, metrics::MetricsLayer, panic_guard::PanicGuardLayer,
    request_id::RequestIdLayer, trace::TraceLayer,
};
use crate::pb::order_service_server::OrderServiceServer;
use crate::service::Orders;
use crate::store::{self, Store};
use crate::telemetry::Metrics;
use crate::{admin, dev, tls};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tower::ServiceBuilder;
/// How long a connection past its maximum age may finish its calls.
pub const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// The maximum connection age, plus up to 10% at random per process, so the
/// connections of replicas started together do not all recycle at once.
fn jittered(age: Duration) -> Duration {
    use rand::Rng;
    age + age.mul_f64(rand::rng().random_range(0.0..0.1))
}

/// How long in-flight calls may take to finish once draining is over.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct Application {
    settings: Settings,
    listener: TcpListener,
    addr: SocketAddr,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    health: HealthState,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    verifier: Verifier,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Application {
    /// Prepares everything that can fail (certificates, keys, database,
    /// migrations, the port) before anything is served.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.dev.generate_certs && settings.environment != Environment::Production {
            let certs = dev::DevCerts::new(&settings.dev.certs_dir);
            if !certs.complete() {
                certs.generate()?;
                tracing::info!(dir = %certs.dir.display(), "generated development certificates and signing key");
            }
        }
        let verifier = settings.verifier().context("auth")?;
        let tls = if settings.tls.enabled {
            let cert = settings
                .tls
                .cert
                .as_deref()
                .context("tls.cert is required")?;
            let key = settings.tls.key.as_deref().context("tls.key is required")?;
            let config =
                tls::server_config(cert, key, settings.tls.client_ca.as_deref()).context("tls")?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        } else {
            None
        };
        let store = store::connect(settings.database_url(), settings.database.max_connections)
            .await
            .with_context(|| {
                format!(
                    "database {}",
                    crate::config::mask_password(settings.database_url())
                )
            })?;
        let listener = TcpListener::bind(settings.server_addr())
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.addr))?;
        let addr = listener.local_addr()?;
        let admin_listener = TcpListener::bind(settings.admin_addr())
            .await
            .with_context(|| format!("cannot listen on {} (admin.addr)", settings.admin.addr))?;
        let admin_addr = admin_listener.local_addr()?;
        Ok(Self {
            settings,
            listener,
            addr,
            admin_listener,
            admin_addr,
            health: HealthState::new(),
            metrics: Arc::new(Metrics::new()),
            store,
            verifier,
            tls,
        })
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound admin address (health and `/metrics`, plaintext).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn health(&self) -> HealthState {
        self.health.clone()
    }

    /// Serves until `shutdown` resolves; then turns health NOT_SERVING (all
    /// names but `liveness`), keeps serving for `shutdown.drain_secs` so load
    /// balancers move away, ends open streams with UNAVAILABLE (clients
    /// resume elsewhere), finishes in-flight calls and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let s = &self.settings;
        let health = self.health.clone();
        let _database_checks = health.watch_database(
            self.store.clone(),
            Duration::from_millis(s.admin.check_interval_ms),
            Duration::from_millis(s.admin.check_timeout_ms),
        );
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(admin::serve(
            self.admin_listener,
            health.clone(),
            self.metrics.clone(),
            self.store.clone(),
            async {
                let _ = admin_stopped.await;
            },
        ));
        tracing::info!(addr = %self.admin_addr, "serving health and /metrics (admin)");

        let (stopping_tx, stopping) = watch::channel(false);
        let max = s.server.max_message_bytes;
        let orders =
            OrderServiceServer::new(Orders::new(self.store.clone(), stopping, health.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd);

        let (reflection_v1, reflection_v1alpha) = if s.server.reflection {
            // grpcurl 1.8 and many older tools speak only v1alpha.
            (
                Some(reflection().build_v1()?),
                Some(reflection().build_v1alpha()?),
            )
        } else {
            (None, None)
        };

        let keepalive = Duration::from_secs(s.server.keepalive_interval_secs);
        // The order of the stack is explained in `crate::middleware`.
        let stack = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(TraceLayer)
            .layer(MetricsLayer::new(self.metrics.grpc.clone()))
            .layer(AccessLogLayer)
            .layer(ConcurrencyLimitLayer::new(s.server.concurrency_limit))
            .layer(DeadlineLayer::new(
                Duration::from_millis(s.server.default_timeout_ms),
                Duration::from_millis(s.server.max_timeout_ms),
            ))
            // Auth: an unauthenticated call costs a header parse, never a
            // handler or a database query.
            .layer(AuthLayer::new(self.verifier.clone()))
            .layer(MessageSizeLayer)
            .layer(PanicGuardLayer);
        let mut server = Server::builder()
            .max_concurrent_streams(s.server.max_concurrent_streams)
            .http2_keepalive_interval((!keepalive.is_zero()).then_some(keepalive))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_connection_age(jittered(Duration::from_secs(
                s.server.max_connection_age_secs,
            )))
            .max_connection_age_grace(CONNECTION_AGE_GRACE)
            .tcp_nodelay(true)
            .layer(stack);
        let router = server
            .add_service(self.health.service())
            .add_service(orders)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha);

        let drain = Duration::from_secs(s.shutdown.drain_secs);
        let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!(drain_secs = drain.as_secs(), "shutting down: draining");
            health.drain();
            tokio::time::sleep(drain).await;
            let _ = stopping_tx.send(true);
            let _ = drained_tx.send(());
            tracing::info!("drained: finishing in-flight calls");
        };

        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "serving orders.v1.OrderService");
        let serve = async move {
            match self.tls {
                Some(acceptor) => {
                    router
                        .serve_with_incoming_shutdown(
                            tls::incoming(self.listener, acceptor),
                            signal,
                        )
                        .await
                }
                None => {
                    router
                        .serve_with_incoming_shutdown(
                            tls::plaintext_incoming(self.listener),
                            signal,
                        )
                        .await
                }
            }
        };
        // Graceful shutdown waits for every connection to close; a client that
        // never answers GOAWAY must not keep the process alive for ever.
        let grace_expired = async {
            if drained.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = serve => served?,
            _ = grace_expired => tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "in-flight calls did not finish in time; closing their connections"
            ),
        }
        let _ = admin_stop.send(());
        // Health watches on the admin port never end by themselves.
        if tokio::time::timeout(Duration::from_secs(1), admin)
            .await
            .is_err()
        {
            tracing::debug!("admin port closed with health watches open");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reflection over our protos, health, and `google.rpc` (so tools such as
/// grpcurl can decode the error details we send).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
