//! `Application`: binds first (so callers learn the real port, even for port
//! 0), serves later, and stops when the shutdown future it is given resolves.

use crate::config::{Environment, Settings};
use crate::pb::order_service_server::OrderServiceServer;
use crate::service::Orders;
use crate::store::{self, Store};
use anyhow::Context;
use grpc_platform::auth::{AuthLayer, Verifier};
use grpc_platform::health::HealthState;
use grpc_platform::methods::PolicyError;
use grpc_platform::middleware::{
    MethodTable, concurrency::ConcurrencyLimitLayer, deadline::DeadlineLayer,
    message_size::MessageSizeLayer, observe::ObserveLayer, panic_guard::PanicGuardLayer,
    rescue::RescueLayer,
};
use grpc_platform::telemetry::Metrics;
use grpc_platform::{admin, dev, serve, tls};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tower::ServiceBuilder;
/// The service's short name: the prefix of its own metrics, the name of its
/// traces, the name on its development certificates.
pub const SERVICE_NAME: &str = "orders";

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
    tls: Option<Arc<tls::CertState>>,
    methods: Arc<MethodTable>,
}

/// Every method the server serves, with its streaming kind and its access
/// as the protos declare them: the orders service (each method must declare
/// its access, or this fails naming the method), and the platform's health
/// and reflection, which need no token.
pub fn method_table() -> Result<MethodTable, PolicyError> {
    let mut methods = MethodTable::new();
    methods.mount(
        <OrderServiceServer<Orders> as NamedService>::NAME,
        crate::pb::FILE_DESCRIPTOR_SET,
    )?;
    methods.mount_public(
        <tonic_health::pb::health_server::HealthServer<()> as NamedService>::NAME,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    )?;
    methods.mount_public(
        <tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    )?;
    methods.mount_public(
        <tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    )?;
    Ok(methods)
}

impl Application {
    /// Prepares everything that can fail (certificates, keys, database,
    /// migrations, the port) before anything is served.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // First, as it fails on what the code declares, not on the machine:
        // a method whose access nobody decided never serves. The error is a
        // `PolicyError`, which the binary reports with exit 78.
        let methods = Arc::new(method_table()?);
        if settings.dev.generate_certs && settings.environment != Environment::Production {
            let certs = dev::DevCerts::new(&settings.dev.certs_dir, SERVICE_NAME);
            if !certs.complete() {
                certs.generate()?;
                tracing::info!(dir = %certs.dir.display(), "generated development certificates and signing key");
            }
        }
        // auth: keys loaded (a JWKS URL fetched) before anything
        // binds, then re-read every auth.jwks_refresh_secs by a task that ends
        // when the last handle of the verifier goes, i.e. with the Application.
        let verifier = settings.verifier().await.context("auth")?;
        verifier.spawn_refresh();
        let tls = if settings.tls.enabled {
            let cert = settings
                .tls
                .cert
                .as_deref()
                .context("tls.cert is required")?;
            let key = settings.tls.key.as_deref().context("tls.key is required")?;
            // TLS: reloadable certificate, key and client CA.
            let files = tls::TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: settings.tls.client_ca.clone(),
            };
            Some(tls::CertState::load(files).context("tls")?)
        } else {
            None
        };
        let store = store::connect(settings.database_url(), &settings.database.store_options())
            .await
            .with_context(|| {
                format!(
                    "database {}",
                    crate::config::mask_password(settings.database_url())
                )
            })?;
        let mut metrics = Metrics::new(SERVICE_NAME);
        metrics.register_collector(Box::new(store::StoreMetrics::new(store.clone())));
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
            health: HealthState::new(methods.services()),
            metrics: Arc::new(metrics),
            store,
            verifier,
            tls,
            methods,
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

    /// The TLS configuration in service (`None` for plaintext): its
    /// `expiry_unix()` is `orders_tls_cert_expiry_timestamp_seconds`.
    pub fn tls_state(&self) -> Option<Arc<tls::CertState>> {
        self.tls.clone()
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
        let store = self.store.clone();
        let _readiness_checks = health.watch_readiness(
            Arc::new(move || {
                let store = store.clone();
                Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
            }),
            Duration::from_millis(s.admin.check_interval_ms),
            Duration::from_millis(s.admin.check_timeout_ms),
        );
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(admin::serve(
            self.admin_listener,
            health.clone(),
            self.metrics.clone(),
            self.tls.clone(),
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
        // The order of the stack is explained in `grpc_platform::middleware`.
        let stack = ServiceBuilder::new()
            // Request id, span, metrics and access log.
            .layer(ObserveLayer::new(
                self.metrics.grpc.clone(),
                self.methods.clone(),
            ))
            // Every error leaves with a google.rpc.Status: details added
            // where the layers below, the handlers or tonic gave none.
            .layer(RescueLayer::new(
                <OrderServiceServer<Orders> as tonic::server::NamedService>::NAME,
            ))
            // The client certificate's subject (mTLS), for handlers; outside
            // auth so refused calls carry it too.
            .layer(tls::ClientIdentityLayer)
            .layer(ConcurrencyLimitLayer::new(
                s.server.concurrency_limit,
                self.methods.fallback_domain(),
            ))
            .layer(DeadlineLayer::new(
                Duration::from_millis(s.server.default_timeout_ms),
                Duration::from_millis(s.server.max_timeout_ms),
            ))
            // Auth: an unauthenticated call costs a header parse, never a
            // handler or a database query.
            .layer(AuthLayer::new(self.verifier.clone(), self.methods.clone()))
            .layer(MessageSizeLayer)
            .layer(PanicGuardLayer);
        let routes = tonic::service::Routes::new(self.health.service()).add_service(orders);
        let routes = match (reflection_v1, reflection_v1alpha) {
            (Some(v1), Some(v1alpha)) => routes.add_service(v1).add_service(v1alpha),
            _ => routes,
        };
        let service = stack.service(routes.prepare());
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(s.server.max_concurrent_streams)
            .keep_alive_interval((!keepalive.is_zero()).then_some(keepalive))
            .keep_alive_timeout(Duration::from_secs(20))
            // Abuse limits: header block size and HTTP/2 reset floods.
            .max_header_list_size(s.server.max_header_list_bytes)
            .max_pending_accept_reset_streams(Some(s.server.http2_max_pending_accept_reset_streams))
            .max_local_error_reset_streams(Some(s.server.http2_max_local_error_reset_streams));
        let age = (s.server.max_connection_age_secs > 0).then(|| serve::ConnectionAge {
            max: Duration::from_secs(s.server.max_connection_age_secs),
            grace: Duration::from_secs(s.server.max_connection_age_grace_secs),
        });

        let drain = Duration::from_secs(s.shutdown.drain_secs);
        let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!(drain_secs = drain.as_secs(), "shutting down: draining");
            health.drain();
            tokio::time::sleep(drain).await;
            // Open streams (orders and health watches) end with UNAVAILABLE,
            // so their clients go elsewhere and nothing holds the shutdown up.
            health.stop();
            let _ = stopping_tx.send(true);
            let _ = drained_tx.send(());
            tracing::info!("drained: finishing in-flight calls");
        };

        tracing::info!(addr = %self.addr, tls = self.tls.is_some(), "serving orders.v1.OrderService");
        // Certificate reloading runs while we serve: the sender is
        // dropped when this function returns (or its future is dropped),
        // which stops the task.
        let (_reload_guard, reload_stop) = tokio::sync::oneshot::channel::<()>();
        if let Some(state) = &self.tls {
            let every = Duration::from_secs(s.tls.reload_secs.max(1));
            tokio::spawn(state.clone().watch(every, async move {
                let _ = reload_stop.await;
            }));
        }
        let limits = tls::ConnLimits {
            handshake_timeout: Duration::from_secs(s.server.handshake_timeout_secs),
            idle_timeout: (s.server.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(s.server.idle_timeout_secs)),
        };
        let serve = async move {
            match self.tls {
                Some(state) => {
                    let incoming = tls::incoming(self.listener, state, limits);
                    serve::serve(incoming, service, http2, age, signal).await
                }
                None => {
                    let incoming = tls::plaintext_incoming(self.listener);
                    serve::serve(incoming, service, http2, age, signal).await
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
            () = serve => {}
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

/// Reflection over our protos, health, `google.rpc` (so tools such as
/// grpcurl can decode the error details we send), and both versions of
/// reflection itself: each version lists every service the port serves,
/// the other version included (each builder adds only its own).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}
