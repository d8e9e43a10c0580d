//! `grpc.health.v1.Health` for probes (README "Ports and probes").
//!
//! Names: `liveness` is SERVING while the process can serve at all;
//! `readiness`, `` (the empty name) and the name of every service the
//! application mounted are SERVING only while the service's readiness check
//! (for a database-backed service, a ping of the database) passes and the
//! server is not draining. `Watch` streams every change, until the server stops (after
//! draining): then open watches end with UNAVAILABLE, so a client-side
//! health check (gRFC A17, as the SDK does) notices at once and graceful
//! shutdown is not held up by streams that would never end by themselves.
//!
//! Hand-written over tonic-health's generated trait rather than its
//! `HealthReporter`, because that one answers `Watch` for an unknown name with
//! NOT_FOUND, where the health-checking spec wants a SERVICE_UNKNOWN message
//! on a stream that stays open; and because readiness here is derived from two
//! facts (the readiness check, draining) that must change together.

use futures::future::BoxFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tokio_util::task::AbortOnDropHandle;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

pub const LIVENESS: &str = "liveness";
/// The names that follow readiness whatever is mounted; each mounted
/// service's name follows it too.
pub const READINESS: [&str; 2] = ["", "readiness"];

/// The server's health, shared by the probes on both ports.
#[derive(Clone)]
pub struct HealthState {
    inner: Arc<Inner>,
}

struct Inner {
    /// [`READINESS`] and the mounted services' names (added as they are
    /// mounted, before the server serves).
    readiness_names: std::sync::RwLock<Vec<String>>,
    liveness: watch::Sender<ServingStatus>,
    readiness: watch::Sender<ServingStatus>,
    dependencies_ok: AtomicBool,
    draining: AtomicBool,
    /// True once the server has drained and stops serving.
    stopped: watch::Sender<bool>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthState {
    /// Live and ready (a server is built only once its dependencies
    /// answered), for the names in [`READINESS`]; each service mounted adds
    /// its own ([`add_service`](Self::add_service)).
    pub fn new() -> Self {
        let readiness_names = READINESS.into_iter().map(str::to_owned).collect();
        Self {
            inner: Arc::new(Inner {
                readiness_names: std::sync::RwLock::new(readiness_names),
                liveness: watch::Sender::new(ServingStatus::Serving),
                readiness: watch::Sender::new(ServingStatus::Serving),
                dependencies_ok: AtomicBool::new(true),
                draining: AtomicBool::new(false),
                stopped: watch::Sender::new(false),
            }),
        }
    }

    /// `service` (a full gRPC name) follows readiness from now on.
    pub fn add_service(&self, service: &str) {
        let mut names = self
            .inner
            .readiness_names
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !names.iter().any(|n| n == service) {
            names.push(service.to_owned());
        }
    }

    fn update(&self) {
        let ready = self.inner.dependencies_ok.load(Ordering::SeqCst)
            && !self.inner.draining.load(Ordering::SeqCst);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.inner.readiness.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    pub fn set_dependencies_ok(&self, ok: bool) {
        if self.inner.dependencies_ok.swap(ok, Ordering::SeqCst) != ok {
            if ok {
                tracing::info!("the readiness check passes again: ready");
            } else {
                tracing::warn!("the readiness check fails: not ready");
            }
        }
        self.update();
    }

    /// Whether the last readiness check passed. Handlers fail fast with
    /// UNAVAILABLE while it did not, instead of each waiting for a
    /// connection that will not come; the periodic check keeps probing and
    /// lets calls through again as soon as it passes.
    pub fn dependencies_ok(&self) -> bool {
        self.inner.dependencies_ok.load(Ordering::SeqCst)
    }

    /// Lame duck: not ready from now on, whatever the check says.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.update();
    }

    /// The server is stopping (drained): open `Watch` streams end with
    /// UNAVAILABLE, and new ones end at once.
    pub fn stop(&self) {
        self.drain();
        self.inner.stopped.send_replace(true);
    }

    /// Resolves once [`stop`](Self::stop) was called.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopped = self.inner.stopped.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    fn sender(&self, name: &str) -> Option<&watch::Sender<ServingStatus>> {
        if name == LIVENESS {
            Some(&self.inner.liveness)
        } else if self
            .inner
            .readiness_names
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .any(|n| n == name)
        {
            Some(&self.inner.readiness)
        } else {
            None
        }
    }

    /// The status of a name (`None` for an unknown name).
    pub fn status(&self, name: &str) -> Option<ServingStatus> {
        self.sender(name).map(|s| *s.borrow())
    }

    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService {
            state: self.clone(),
        })
    }

    /// Runs the service's readiness check every `interval` (each bounded
    /// by `timeout`) until the returned handle is dropped.
    pub fn watch_readiness(
        &self,
        check: ReadinessCheck,
        interval: Duration,
        timeout: Duration,
    ) -> AbortOnDropHandle<()> {
        let state = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let ok = matches!(tokio::time::timeout(timeout, check()).await, Ok(Ok(())));
                state.set_dependencies_ok(ok);
            }
        }))
    }
}

/// What the service needs to serve (for a database-backed one, a ping of the
/// database): `Ok` while it answers. The server runs it periodically;
/// readiness follows it.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub struct HealthService {
    state: HealthState,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match self.state.status(&request.get_ref().service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found("unknown service name")),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses: WatchStream = match self.state.sender(&request.get_ref().service) {
            Some(sender) => Box::pin(
                tokio_stream::wrappers::WatchStream::new(sender.subscribe())
                    .map(|s| Ok(response(s))),
            ),
            None => Box::pin(
                tokio_stream::once(Ok(response(ServingStatus::ServiceUnknown)))
                    .chain(tokio_stream::pending()),
            ),
        };
        let stream = futures::StreamExt::take_until(statuses, self.state.stopped()).chain(
            tokio_stream::once(Err(Status::unavailable("server shutting down"))),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
