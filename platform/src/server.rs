//! The server a service is mounted on: the whole stack, assembled in one
//! place, knowing the service only by what it is given.
//!
//! ```text
//! ServerBuilder::new(settings, name)  development certificates, keys (a JWKS URL fetched), TLS
//!   .mount(service, descriptors)      the service by value; its methods, kinds and access from its descriptors
//!   .readiness(check)                 what readiness follows (a database ping, say)
//!   .collector(metrics)               the service's own metrics on /metrics
//!   .bind()                           both ports bound (port 0 works): a `Server`
//! Server::run_until_stopped(signal)   serves; on the signal: drain, end streams, finish calls
//! ```
//!
//! What holds:
//! - Every call to every mounted service is authenticated and authorized as
//!   its method declares in the proto, except gRPC health and reflection and
//!   methods declared public; a mounted method that declares nothing stops
//!   the start ([`PolicyError`], exit 78), so nothing undecided is served.
//! - The health names that follow readiness are `""`, `readiness` and the
//!   name of every service mounted.
//! - Everything that can fail on the machine (keys, certificates, ports)
//!   fails before anything is served.

use crate::auth::{AuthLayer, Verifier};
use crate::config::{Environment, PlatformSettings};
use crate::health::{HealthState, ReadinessCheck};
use crate::methods::{MethodTable, PolicyError};
use crate::middleware::{
    caller_quota::{CallerQuotaLayer, Limits},
    concurrency::ConcurrencyLimitLayer,
    deadline::DeadlineLayer,
    grpc_only::GrpcOnlyLayer,
    message_size::{HTTP2_HEADER_LIST_FACTOR, MessageSize},
    observe::ObserveLayer,
    panic_guard::PanicGuardLayer,
    request_body::BodyLimits,
    rescue::RescueLayer,
};
use crate::telemetry::{CallTelemetry, Metrics};
use crate::{admin, dev, serve, tls};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::collector::Collector;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tower::ServiceBuilder;
use tower::layer::layer_fn;

/// How long in-flight calls may take to finish once draining is over.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The exit code for an error that stopped a start: 78 (`EX_CONFIG`) for
/// a bad configuration or an access policy nobody decided, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let config = error
        .chain()
        .any(|cause| cause.is::<PolicyError>() || cause.is::<crate::config::ConfigError>());
    if config {
        crate::config::EXIT_CONFIG as u8
    } else {
        1
    }
}

/// The platform's own services (gRPC health, and reflection when
/// `reflection`), public, in a method table ready for the service's.
pub fn platform_methods(reflection: bool) -> MethodTable {
    let mut methods = MethodTable::new();
    let mut public = |name: &str, descriptors: &[u8]| {
        methods
            .mount_public(name, descriptors)
            .expect("the platform's own descriptors are valid");
    };
    public(
        <tonic_health::pb::health_server::HealthServer<()> as NamedService>::NAME,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    );
    if reflection {
        public(
            <tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        );
        public(
            <tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        );
    }
    methods
}

/// A server being put together; see the module documentation.
pub struct ServerBuilder {
    settings: PlatformSettings,
    methods: MethodTable,
    routes: Option<Routes>,
    /// The mounted services' descriptor sets, served by reflection.
    descriptors: Vec<Vec<u8>>,
    /// The `ErrorInfo.domain` of errors for paths naming no well-formed
    /// service: the first service mounted.
    fallback_domain: Option<&'static str>,
    health: HealthState,
    stopping: (watch::Sender<bool>, watch::Receiver<bool>),
    readiness: Option<ReadinessCheck>,
    metrics: Metrics,
    verifier: Verifier,
    tls: Option<Arc<tls::CertState>>,
    telemetry: CallTelemetry,
}

impl ServerBuilder {
    /// Prepares what fails on the machine before anything binds:
    /// development certificates (outside production, when asked), the
    /// token verifier with its keys loaded (a JWKS URL fetched) and kept
    /// fresh, and the TLS certificate. `name` is the service's short name:
    /// the prefix of the platform's metrics, the name of its traces' and of
    /// its development certificates.
    pub async fn new(settings: PlatformSettings, name: &'static str) -> anyhow::Result<Self> {
        if settings.dev.generate_certs && settings.environment != Environment::Production {
            let certs = dev::DevCerts::new(&settings.dev.certs_dir, name);
            if !certs.complete() {
                certs.generate()?;
                tracing::info!(dir = %certs.dir.display(), "generated development certificates and signing key");
            }
        }
        // Re-read every auth.jwks_refresh_secs by a task that ends when the
        // last handle of the verifier goes, i.e. with the server.
        let verifier = settings.verifier().await.context("auth")?;
        verifier.spawn_refresh();
        let tls = if settings.tls.enabled {
            let cert = settings
                .tls
                .cert
                .as_deref()
                .context("tls.cert is required")?;
            let key = settings.tls.key.as_deref().context("tls.key is required")?;
            // Reloadable certificate, key and client CA.
            let files = tls::TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: settings.tls.client_ca.clone(),
            };
            Some(tls::CertState::load(files).context("tls")?)
        } else {
            None
        };
        let health = HealthState::new();
        Ok(Self {
            methods: platform_methods(settings.server.reflection),
            routes: None,
            descriptors: Vec::new(),
            fallback_domain: None,
            stopping: watch::channel(false),
            readiness: None,
            metrics: Metrics::new(name),
            verifier,
            tls,
            health,
            settings,
            telemetry: CallTelemetry::default(),
        })
    }

    /// The server's health, for handlers that fail fast while the
    /// readiness check fails.
    pub fn health(&self) -> HealthState {
        self.health.clone()
    }

    /// Turns `true` when the server has drained and stops: open streams
    /// should end then (with UNAVAILABLE), so clients resume elsewhere and
    /// nothing holds the shutdown up.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.1.clone()
    }

    /// Mounts `service`, whose methods the encoded file descriptor set
    /// `descriptors` describes (imports included, as prost-build writes
    /// it). Every method must declare its access in the proto.
    pub fn mount<S>(mut self, service: S, descriptors: &[u8]) -> Result<Self, PolicyError>
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.methods.mount(S::NAME, descriptors)?;
        let ceiling = self.settings.server.max_message_bytes;
        for method in self.methods.methods().filter(|m| &*m.service == S::NAME) {
            if let Some(limit) = method.max_request_bytes
                && limit as usize > ceiling
            {
                return Err(PolicyError::Invalid {
                    path: format!("/{}/{}", method.service, method.name),
                    reason: format!(
                        "declares max_request_bytes {limit}, over server.max_message_bytes ({ceiling})"
                    ),
                });
            }
        }
        self.health.add_service(S::NAME);
        self.descriptors.push(descriptors.to_vec());
        self.fallback_domain.get_or_insert(S::NAME);
        self.routes = Some(match self.routes.take() {
            Some(routes) => routes.add_service(service),
            None => Routes::new(service),
        });
        Ok(self)
    }

    /// Readiness (and the handlers' fast failure) follows `check`, run every
    /// `admin.check_interval_ms`, each run bounded by `admin.check_timeout_ms`.
    pub fn readiness(mut self, check: ReadinessCheck) -> Self {
        self.readiness = Some(check);
        self
    }

    /// What the process's telemetry asks of each call
    /// (`TelemetryGuard::calls`); without it every span is made and the
    /// access log is a `tracing` event, as a subscriber installed by
    /// someone else may want.
    pub fn telemetry(mut self, calls: CallTelemetry) -> Self {
        self.telemetry = calls;
        self
    }

    /// Adds the service's own metrics to `/metrics`, read at each scrape.
    pub fn collector(mut self, collector: Box<dyn Collector>) -> Self {
        self.metrics.register_collector(collector);
        self
    }

    /// Binds both ports.
    pub async fn bind(self) -> anyhow::Result<Server> {
        let s = &self.settings;
        let server_addr: SocketAddr = s.server_addr();
        let listener = TcpListener::bind(server_addr)
            .await
            .with_context(|| format!("cannot listen on {} (server.addr)", s.server.addr))?;
        let addr = listener.local_addr()?;
        let admin_listener = TcpListener::bind(s.admin_addr())
            .await
            .with_context(|| format!("cannot listen on {} (admin.addr)", s.admin.addr))?;
        let admin_addr = admin_listener.local_addr()?;
        Ok(Server {
            builder: self,
            listener,
            addr,
            admin_listener,
            admin_addr,
        })
    }
}

/// A server with both ports bound, ready to serve.
pub struct Server {
    builder: ServerBuilder,
    listener: TcpListener,
    addr: SocketAddr,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
}

impl Server {
    /// The bound gRPC address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound admin address (health and `/metrics`, plaintext).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn health(&self) -> HealthState {
        self.builder.health.clone()
    }

    /// The method table the server enforces.
    pub fn methods(&self) -> &MethodTable {
        &self.builder.methods
    }

    /// The TLS configuration in service (`None` for plaintext): its
    /// `expiry_unix()` is the `{name}_tls_cert_expiry_timestamp_seconds`
    /// metric.
    pub fn tls_state(&self) -> Option<Arc<tls::CertState>> {
        self.builder.tls.clone()
    }

    /// Serves until `shutdown` resolves; then turns health NOT_SERVING (all
    /// names but `liveness`), keeps serving for `shutdown.drain_secs` so load
    /// balancers move away, ends open streams with UNAVAILABLE (clients
    /// resume elsewhere), finishes in-flight calls and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Server {
            builder,
            listener,
            addr,
            admin_listener,
            admin_addr,
        } = self;
        let ServerBuilder {
            settings: s,
            methods,
            routes,
            descriptors,
            fallback_domain,
            health,
            stopping: (stopping_tx, _),
            readiness,
            metrics,
            verifier,
            tls,
            telemetry,
            ..
        } = builder;
        let routes = routes.context("no service is mounted")?;
        let fallback_domain = fallback_domain.unwrap_or("grpc_platform.v1");
        let methods = Arc::new(methods);
        let metrics = Arc::new(metrics);

        // Without a check of the service's, readiness follows draining only.
        let _readiness_checks = readiness.map(|check| {
            health.watch_readiness(check, s.admin.check_interval, s.admin.check_timeout)
        });
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(admin::serve(
            admin_listener,
            health.clone(),
            metrics.clone(),
            tls.clone(),
            async {
                let _ = admin_stopped.await;
            },
        ));
        tracing::info!(addr = %admin_addr, "serving health and /metrics (admin)");

        let routes = routes.add_service(health.service());
        let routes = if s.server.reflection {
            // grpcurl 1.8 and many older tools speak only v1alpha.
            routes
                .add_service(reflection(&descriptors).build_v1()?)
                .add_service(reflection(&descriptors).build_v1alpha()?)
        } else {
            routes
        };

        let keepalive = s.server.keepalive_interval;
        let max_metadata = s.server.max_header_list_bytes;
        let bodies = Arc::new(BodyLimits::new(
            s.server.max_request_bytes,
            s.server.request_read_timeout,
            s.server.max_request_memory_bytes,
        ));
        // The order of the stack is explained in `crate::middleware`.
        let health_descriptors: &[u8] = tonic_health::pb::FILE_DESCRIPTOR_SET;
        let descriptor_sets: Vec<&[u8]> = descriptors
            .iter()
            .map(Vec::as_slice)
            .chain([health_descriptors])
            .collect();
        let connect_methods = Arc::new(crate::web::connect::ConnectMethods::new(
            &methods,
            &descriptor_sets,
            s.server.max_request_bytes,
        ));
        let web = s.server.web_protocols;
        let stack = ServiceBuilder::new()
            // Only gRPC goes further (HTTP 405 or 415 otherwise).
            .layer(GrpcOnlyLayer)
            // Request id, span, metrics and access log.
            .layer(ObserveLayer::new(
                metrics.grpc.clone(),
                methods.clone(),
                telemetry,
            ))
            // The one place errors become answers: each layer below fails
            // a call with its own typed error, answered here with a
            // google.rpc.Status; details added where the handlers or tonic
            // gave none.
            .layer(RescueLayer::new(fallback_domain))
            .layer(ConcurrencyLimitLayer::new(s.server.concurrency_limit))
            .layer(DeadlineLayer::new(
                s.server.default_timeout,
                s.server.max_timeout,
            ))
            // Auth: an unauthenticated call costs a header parse, never a
            // handler or a database query.
            .layer(AuthLayer::new(verifier.clone(), methods.clone()))
            // No caller takes every slot or the whole throughput: each
            // subject's calls in flight and its rate; calls without a
            // subject, in flight per connection.
            .layer(CallerQuotaLayer::new(Limits::of(&s.server)))
            .layer(layer_fn(move |inner| {
                MessageSize::new(inner, max_metadata as usize, bodies.clone())
            }))
            .layer(PanicGuardLayer);
        let grpc = stack.service(routes.prepare());
        // Browsers' protocols go through their own layers first, which end
        // in the same stack; gRPC calls go to it directly
        // (`crate::web::ByProtocol`).
        let browsers = web.then(|| {
            ServiceBuilder::new()
                // A preflight is answered here, before any token is asked
                // for; answers carry the origin's permission.
                .layer(crate::web::cors(&s.cors))
                // gRPC-Web and Connect become the gRPC calls they mean, so
                // everything below sees one protocol. (Connect first:
                // tonic-web refuses any HTTP/1.1 request that is not
                // gRPC-Web, and a Connect call has become an HTTP/2 gRPC
                // call by then.)
                .layer(crate::web::connect::ConnectLayer::new(connect_methods))
                .layer(tonic_web::GrpcWebLayer::new())
                .service(grpc.clone())
        });
        let service = crate::web::ByProtocol::new(grpc, browsers);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(s.server.max_concurrent_streams)
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(Duration::from_secs(20))
            // Abuse limits: header block size and HTTP/2 reset floods.
            // Metadata over the limit is answered with a gRPC status by the
            // message-size layer; HTTP/2 refuses (431) only far past it.
            .max_header_list_size(max_metadata.saturating_mul(HTTP2_HEADER_LIST_FACTOR))
            .max_pending_accept_reset_streams(Some(s.server.http2_max_pending_accept_reset_streams))
            .max_local_error_reset_streams(Some(s.server.http2_max_local_error_reset_streams));
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // A request's head must arrive in time, as a handshake must.
            .header_read_timeout(s.server.handshake_timeout)
            // The head is bounded as HTTP/2 bounds its header block; the
            // message-size layer answers metadata over the limit.
            .max_buf_size((max_metadata as usize * HTTP2_HEADER_LIST_FACTOR as usize).max(8192));
        let protocols = serve::Protocols {
            http2,
            http1: web.then_some(http1),
        };
        let age = s.server.max_connection_age.map(|max| serve::ConnectionAge {
            max,
            grace: s.server.max_connection_age_grace,
        });

        let drain = s.shutdown.drain;
        let (drained_tx, drained) = tokio::sync::oneshot::channel::<()>();
        let draining = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!(drain_secs = drain.as_secs(), "shutting down: draining");
            draining.drain();
            tokio::time::sleep(drain).await;
            // Open streams (the service's and health watches) end with
            // UNAVAILABLE, so their clients go elsewhere and nothing holds
            // the shutdown up.
            draining.stop();
            let _ = stopping_tx.send(true);
            let _ = drained_tx.send(());
            tracing::info!("drained: finishing in-flight calls");
        };

        let services: Vec<&str> = methods.services().collect();
        tracing::info!(%addr, tls = tls.is_some(), "serving {}", services.join(", "));
        // Certificate reloading runs while we serve: the sender is
        // dropped when this function returns (or its future is dropped),
        // which stops the task.
        let (_reload_guard, reload_stop) = tokio::sync::oneshot::channel::<()>();
        if let Some(state) = &tls {
            let every = s.tls.reload_interval.max(Duration::from_secs(1));
            tokio::spawn(state.clone().watch(every, async move {
                let _ = reload_stop.await;
            }));
        }
        let limits = tls::ConnLimits {
            handshake_timeout: s.server.handshake_timeout,
            idle_timeout: s.server.idle_timeout,
        };
        let serve = async move {
            match tls {
                Some(state) => {
                    let incoming = tls::incoming(listener, state, limits);
                    serve::serve(incoming, service, protocols.clone(), age, signal).await
                }
                None => {
                    let incoming = tls::plaintext_incoming(listener);
                    serve::serve(incoming, service, protocols.clone(), age, signal).await
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
        drop(verifier);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reflection over the mounted services' protos, health, `google.rpc` (so
/// tools such as grpcurl can decode the error details sent), and both
/// versions of reflection itself: each version lists every service the port
/// serves, the other version included (each builder adds only its own).
fn reflection(descriptors: &[Vec<u8>]) -> tonic_reflection::server::Builder<'_> {
    let mut builder = tonic_reflection::server::Builder::configure();
    for set in descriptors {
        builder = builder.register_encoded_file_descriptor_set(set);
    }
    builder
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}
