//! Deadlines: every call gets one, and a call past it is stopped, not just
//! answered. `grpc-timeout` is honoured, capped at `server.max_timeout_ms`;
//! unary calls that send none get `server.default_timeout_ms`. When the
//! deadline passes, the handler's future is dropped (so its database work
//! stops) and the call fails; a streaming response's body fails, and the
//! rescue layer ends it with trailers. A call whose change has passed its commit point is the
//! exception: the change stands, so the call finishes and answers as the
//! change it made (`super::commit`), never DEADLINE_EXCEEDED for a change
//! that was made. Handlers read the time left from the [`Deadline`] request
//! extension.
//!
//! The call fails with [`DeadlineExceeded`], which says whose limit ended it
//! ([`SetBy`]); the rescue layer (`super::rescue`) answers it:
//! - the client's own deadline: DEADLINE_EXCEEDED, `ErrorInfo` reason
//!   `DEADLINE_EXCEEDED`;
//! - the server's cap on a streaming call: UNAVAILABLE with a message naming
//!   `server.max_timeout_ms`, reason `STREAM_TIME_LIMIT` (the limit in its
//!   metadata) and `RetryInfo`. The client's deadline has not passed, so
//!   DEADLINE_EXCEEDED would be wrong; UNAVAILABLE is what clients (and the
//!   SDK) resume a stream on, and a client stream ended this way had its
//!   handler dropped before it committed anything;
//! - the server's cap or default on a unary call: DEADLINE_EXCEEDED with a
//!   message naming the setting, reason `SERVER_TIME_LIMIT` (the limit in
//!   its metadata).
//!
//! Outside auth, so authentication counts against the budget; inside load
//! shedding, so a shed call never starts a timer.
//!
//! A `grpc-timeout` that does not parse is ignored, as tonic's own server
//! does: the call is treated as one that sent none, so it is no error.
//!
//! Tonic's own `grpc-timeout` handling sits outside every user layer and
//! answers CANCELLED; this layer ends a call slightly before the client's
//! deadline (see `margin`) so the caller gets the server's definite
//! DEADLINE_EXCEEDED, with its details, rather than raising its own.

use super::commit::Standing;
use super::rescue::BoxError;
use super::{CallContext, RpcKind, RpcMethod};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, TryFutureExt};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// When the call must be done by.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // ASCII only, so splitting off the last byte splits off the last character.
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How much earlier than the client's own deadline the server gives up, so
/// that its answer arrives first: a twentieth of the timeout for short ones,
/// else a hundredth plus [`TRANSIT`]. The hundredth covers the rounding of
/// `grpc-timeout`: grpc-core clients (Python, C++, Ruby, PHP, C#) send it
/// rounded *up* to three significant digits (a 1 s deadline arrives as
/// "1010m" once a millisecond has passed), so their deadline passes up to a
/// hundredth before the one the header announces.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(timeout / 100 + TRANSIT)
}

/// What the answer's way back (and the request's way in) may take on top.
const TRANSIT: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct DeadlineLayer {
    default: Duration,
    max: Duration,
}

impl DeadlineLayer {
    pub fn new(default: Duration, max: Duration) -> Self {
        Self { default, max }
    }

    /// The budget of a call: the client's (capped) or, for unary calls, the
    /// default; and whose limit it is.
    fn budget(&self, client: Option<Duration>, kind: RpcKind) -> Option<(Duration, SetBy)> {
        match client {
            Some(t) if t <= self.max => Some((t - margin(t), SetBy::Client)),
            Some(_) => Some((self.max, SetBy::ServerCap(self.max))),
            None if kind == RpcKind::Unary => {
                Some((self.default, SetBy::ServerDefault(self.default)))
            }
            None => None,
        }
    }
}

/// Whose limit a call's deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetBy {
    /// The client's `grpc-timeout`.
    Client,
    /// `server.max_timeout_ms`, below the client's `grpc-timeout`.
    ServerCap(Duration),
    /// `server.default_timeout_ms`: a unary call that sent no deadline.
    ServerDefault(Duration),
}

/// The error a call fails with when its deadline passes: whose limit it
/// was, and how the call streams (the server's cap ends a stream
/// differently from a unary call). Its message is the one the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineExceeded {
    pub set_by: SetBy,
    pub kind: RpcKind,
}

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.set_by {
            SetBy::Client => f.write_str("deadline exceeded"),
            SetBy::ServerCap(max) if self.kind != RpcKind::Unary => write!(
                f,
                "the server ends streams after server.max_timeout_ms = {} ms; \
                 open a new stream to continue",
                max.as_millis()
            ),
            SetBy::ServerCap(max) => write!(
                f,
                "the server ends calls after server.max_timeout_ms = {} ms",
                max.as_millis()
            ),
            SetBy::ServerDefault(default) => write!(
                f,
                "the call sent no deadline and ran past the server's default, \
                 server.default_timeout_ms = {} ms",
                default.as_millis()
            ),
        }
    }
}

impl std::error::Error for DeadlineExceeded {}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let kind = request
            .extensions()
            .get::<RpcMethod>()
            .map(|m| m.kind)
            .unwrap_or_else(|| RpcMethod::from_path(request.uri().path()).kind);
        let client = request
            .headers()
            .get(&super::names::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let Some((budget, set_by)) = self.layer.budget(client, kind) else {
            return self.inner.call(request).err_into().boxed();
        };
        let deadline = Instant::now() + budget;
        request.extensions_mut().insert(Deadline(deadline));
        let expired = DeadlineExceeded { set_by, kind };
        let call = request.extensions().get::<Arc<CallContext>>().cloned();
        let future = self.inner.call(request);
        async move {
            let mut future = std::pin::pin!(future);
            match tokio::time::timeout_at(deadline, future.as_mut()).await {
                Ok(Ok(response)) if kind == RpcKind::Unary => Ok(response),
                Ok(Ok(response)) => Ok(response.map(|body| {
                    tonic::body::Body::new(DeadlineBody {
                        inner: Some(body),
                        sleep: Box::pin(tokio::time::sleep_until(deadline)),
                        expired,
                    })
                })),
                Ok(Err(e)) => Err(e.into()),
                // A change past its commit point stands: the call finishes
                // and answers as the change it made, not DEADLINE_EXCEEDED
                // for a change that was made (`super::commit`).
                Err(_)
                    if call
                        .as_ref()
                        .is_some_and(|call| call.commit.abandon() != Standing::Nothing) =>
                {
                    future.await.map_err(Into::into)
                }
                // The handler future is dropped here: its work stops, and
                // nothing it had not committed will be.
                Err(_) => Err(expired.into()),
            }
        }
        .boxed()
    }
}

/// A streaming response that fails with [`DeadlineExceeded`] when time is
/// up (the rescue layer ends it with that status as trailers).
struct DeadlineBody {
    inner: Option<tonic::body::Body>,
    sleep: Pin<Box<Sleep>>,
    expired: DeadlineExceeded,
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if frame.is_none() {
                self.inner = None;
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            // Dropping the stream's body stops the task that feeds it.
            self.inner = None;
            return Poll::Ready(Some(Err(self.expired.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::rescue;
    use tonic::{Code, Status};
    use tonic_types::StatusExt;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
        assert_eq!(
            parse_grpc_timeout("1é"),
            None,
            "a multi-byte unit is no unit"
        );
    }

    #[test]
    fn budgets_cap_the_client_and_default_only_unary_calls() {
        let layer = DeadlineLayer::new(Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(
            layer.budget(None, RpcKind::Unary),
            Some((
                Duration::from_secs(10),
                SetBy::ServerDefault(Duration::from_secs(10))
            ))
        );
        assert_eq!(layer.budget(None, RpcKind::ServerStream), None);
        assert_eq!(
            layer.budget(Some(Duration::from_secs(600)), RpcKind::ServerStream),
            Some((
                Duration::from_secs(60),
                SetBy::ServerCap(Duration::from_secs(60))
            ))
        );
        let (b, set_by) = layer
            .budget(Some(Duration::from_secs(1)), RpcKind::Unary)
            .unwrap();
        assert_eq!(b, Duration::from_millis(970));
        assert_eq!(set_by, SetBy::Client);
        assert_eq!(
            layer
                .budget(Some(Duration::from_secs(60)), RpcKind::Unary)
                .unwrap()
                .1,
            SetBy::Client,
            "a client deadline at the cap is the client's"
        );
    }

    #[test]
    fn the_margin_covers_grpc_cores_rounding_and_spares_short_deadlines() {
        // grpc-core rounds a deadline of 1 s to 10 s up to 10 ms, of 10 s to
        // 100 s up to 100 ms, and so on: under a hundredth.
        for (deadline, rounded_up) in [
            (Duration::from_millis(1_000), Duration::from_millis(1_010)),
            (Duration::from_millis(9_991), Duration::from_millis(10_000)),
            (Duration::from_millis(10_001), Duration::from_millis(10_100)),
            (Duration::from_millis(59_901), Duration::from_millis(60_000)),
        ] {
            let budget = rounded_up - margin(rounded_up);
            assert!(
                deadline - budget >= TRANSIT,
                "{rounded_up:?} for {deadline:?}: the server answers {:?} before",
                deadline - budget
            );
        }
        assert_eq!(margin(Duration::from_millis(100)), Duration::from_millis(5));
        assert_eq!(
            margin(Duration::from_millis(10)),
            Duration::from_micros(500)
        );
    }

    // --- Which status ends a call, on tokio's paused clock: time advances
    // only when every task waits, straight to the next timer.

    const WATCH: &str = "/things.v1.ThingService/WatchThing";
    const UPDATE: &str = "/things.v1.ThingService/PutThings";
    const GET: &str = "/things.v1.ThingService/GetThing";

    fn layer() -> DeadlineLayer {
        DeadlineLayer::new(Duration::from_secs(10), Duration::from_secs(60))
    }

    /// A call to `path` as the observe layer hands it on: with its method,
    /// streaming kind included, from the test server's method table.
    fn request(path: &str, timeout: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(t) = timeout {
            builder = builder.header("grpc-timeout", t);
        }
        let mut request = builder.body(()).unwrap();
        request
            .extensions_mut()
            .insert(RpcMethod::resolve(crate::testing::table(), path));
        request
    }

    type Handler = tower::util::BoxService<
        http::Request<()>,
        http::Response<tonic::body::Body>,
        std::convert::Infallible,
    >;

    /// A handler that never answers (a unary call stuck, or a client stream
    /// that never half-closes).
    fn stuck() -> Handler {
        Handler::new(tower::service_fn(|_: http::Request<()>| {
            std::future::pending::<Result<_, std::convert::Infallible>>()
        }))
    }

    /// A handler whose response stream starts at once and never ends.
    fn endless() -> Handler {
        Handler::new(tower::service_fn(|_: http::Request<()>| async {
            let frames = futures::stream::pending::<Result<Frame<Bytes>, Status>>();
            Ok(http::Response::new(tonic::body::Body::new(
                http_body_util::StreamBody::new(frames),
            )))
        }))
    }

    /// How a call ends: the [`DeadlineExceeded`] it fails with (the call
    /// itself, or its response body), the status the rescue layer answers
    /// that with, and how long after the call it came.
    async fn ends_with(
        service: Handler,
        request: http::Request<()>,
    ) -> (DeadlineExceeded, Status, Duration) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let path = request.uri().path().to_owned();
        let start = Instant::now();
        let answered = |error: &(dyn std::error::Error + 'static)| {
            let expired = *rescue::cause_ref::<DeadlineExceeded>(error)
                .unwrap_or_else(|| panic!("not a DeadlineExceeded: {error}"));
            (
                expired,
                crate::testing::rescued(error, &path),
                start.elapsed(),
            )
        };
        let response = match layer().layer(service).oneshot(request).await {
            Ok(response) => response,
            Err(error) => return answered(&*error),
        };
        assert!(
            Status::from_header_map(response.headers()).is_none(),
            "the stream started"
        );
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                // tonic's body hands the error on inside a Status.
                Err(status) => return answered(&status),
                Ok(frame) => assert!(frame.is_data(), "the stream ended: {frame:?}"),
            }
        }
        panic!("the stream ended without an error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_commit_point_at_the_deadline_answers_as_its_change() {
        use tower::ServiceExt;
        let call = Arc::new(CallContext::default());
        let committing = call.clone();
        // A handler whose store took its write just before the deadline and
        // takes a while to answer.
        let handler = Handler::new(tower::service_fn(move |_: http::Request<()>| {
            let call = committing.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1900)).await;
                assert!(call.commit.begin());
                tokio::time::sleep(Duration::from_millis(500)).await;
                call.commit.settle(true);
                Ok(Status::ok("committed").into_http())
            }
        }));
        let mut req = request(GET, Some("2S"));
        req.extensions_mut().insert(call.clone());
        let response = layer().layer(handler).oneshot(req).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::Ok, "{status:?}");

        // Before its commit point, the same handler is cut off and abandoned:
        // a store would no longer write for it.
        let call = Arc::new(CallContext::default());
        let mut req = request(GET, Some("2S"));
        req.extensions_mut().insert(call.clone());
        let error = layer().layer(stuck()).oneshot(req).await.unwrap_err();
        assert_eq!(
            error.downcast_ref::<DeadlineExceeded>(),
            Some(&DeadlineExceeded {
                set_by: SetBy::Client,
                kind: RpcKind::Unary
            })
        );
        assert!(!call.commit.begin());
    }

    fn reason(status: &Status) -> String {
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.domain, "things.v1.ThingService");
        info.reason.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_deadline_on_a_unary_call_is_deadline_exceeded() {
        let (expired, status, after) = ends_with(stuck(), request(GET, Some("2S"))).await;
        assert_eq!(expired.set_by, SetBy::Client);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(status.message(), "deadline exceeded");
        assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
        assert!(
            after < Duration::from_secs(2),
            "before the client's own: {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_deadline_on_a_stream_is_deadline_exceeded() {
        let (expired, status, after) = ends_with(endless(), request(WATCH, Some("2S"))).await;
        assert_eq!(
            expired,
            DeadlineExceeded {
                set_by: SetBy::Client,
                kind: RpcKind::ServerStream
            }
        );
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
        assert!(status.get_error_details().retry_info().is_none());
        assert!(after < Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_cap_ends_a_stream_with_unavailable_and_retry_info() {
        let (expired, status, after) = ends_with(endless(), request(WATCH, Some("5M"))).await;
        assert_eq!(expired.set_by, SetBy::ServerCap(Duration::from_secs(60)));
        assert_eq!(after, Duration::from_secs(60));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .contains("server.max_timeout_ms = 60000 ms"),
            "{}",
            status.message()
        );
        assert_eq!(reason(&status), "STREAM_TIME_LIMIT");
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().unwrap().metadata["max_timeout_ms"],
            "60000"
        );
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::ZERO)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_cap_ends_a_client_stream_before_its_answer_the_same_way() {
        // A client stream: the handler is still reading when the cap passes; it is
        // dropped, so nothing is committed.
        let (expired, status, after) = ends_with(stuck(), request(UPDATE, Some("5M"))).await;
        assert_eq!(
            expired,
            DeadlineExceeded {
                set_by: SetBy::ServerCap(Duration::from_secs(60)),
                kind: RpcKind::ClientStream
            }
        );
        assert_eq!(after, Duration::from_secs(60));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason(&status), "STREAM_TIME_LIMIT");
        assert!(status.get_error_details().retry_info().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_cap_on_a_unary_call_is_deadline_exceeded_naming_the_limit() {
        let (expired, status, after) = ends_with(stuck(), request(GET, Some("5M"))).await;
        assert_eq!(
            expired,
            DeadlineExceeded {
                set_by: SetBy::ServerCap(Duration::from_secs(60)),
                kind: RpcKind::Unary
            }
        );
        assert_eq!(after, Duration::from_secs(60));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status
                .message()
                .contains("server.max_timeout_ms = 60000 ms")
        );
        assert_eq!(reason(&status), "SERVER_TIME_LIMIT");
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().unwrap().metadata["max_timeout_ms"],
            "60000"
        );
        assert!(details.retry_info().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_servers_default_on_a_unary_call_without_deadline_names_it() {
        let (expired, status, after) = ends_with(stuck(), request(GET, None)).await;
        assert_eq!(
            expired.set_by,
            SetBy::ServerDefault(Duration::from_secs(10))
        );
        assert_eq!(after, Duration::from_secs(10));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status
                .message()
                .contains("server.default_timeout_ms = 10000 ms")
        );
        assert_eq!(reason(&status), "SERVER_TIME_LIMIT");
        assert_eq!(
            status.get_error_details().error_info().unwrap().metadata["default_timeout_ms"],
            "10000"
        );
    }

    // --- The layer over a mock handler (tower-test).

    type Request = http::Request<()>;
    type Response = http::Response<tonic::body::Body>;

    #[tokio::test(start_paused = true)]
    async fn a_call_answered_in_time_passes_untouched_and_its_handler_knows_the_deadline() {
        let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request, Response, _>(layer());
        assert!(svc.poll_ready().is_ready());
        let start = Instant::now();
        let response = svc.call(request(GET, Some("2S")));
        let (inner, reply) = handle.next_request().await.expect("the call gets through");
        let deadline = inner.extensions().get::<Deadline>().expect("a Deadline");
        // The client's two seconds, less the margin that lets the answer
        // arrive before the client gives up.
        assert_eq!(
            deadline.0 - start,
            Duration::from_secs(2) - margin(Duration::from_secs(2))
        );
        reply.send_response(Status::ok("").into_http());
        let response = response.await.expect("answered");
        assert_eq!(
            Status::from_header_map(response.headers()).map(|s| s.code()),
            Some(Code::Ok)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_a_deadline_gets_none_and_an_inner_error_passes_as_it_is() {
        let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request, Response, _>(layer());
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request(WATCH, None));
        let (inner, reply) = handle.next_request().await.expect("the call gets through");
        assert!(inner.extensions().get::<Deadline>().is_none());
        reply.send_error(tower::load_shed::error::Overloaded::new());
        let error = response.await.unwrap_err();
        assert!(error.is::<tower::load_shed::error::Overloaded>(), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_that_never_answers_is_dropped_at_the_default() {
        let (mut svc, mut handle) = tower_test::mock::spawn_layer::<Request, Response, _>(layer());
        assert!(svc.poll_ready().is_ready());
        let start = Instant::now();
        let response = svc.call(request(GET, None));
        let (_, reply) = handle.next_request().await.expect("the call gets through");
        let error = response.await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(
            error.downcast_ref::<DeadlineExceeded>(),
            Some(&DeadlineExceeded {
                set_by: SetBy::ServerDefault(Duration::from_secs(10)),
                kind: RpcKind::Unary
            })
        );
        // Too late: nobody waits for the answer any more.
        reply.send_response(Status::ok("").into_http());
    }
}
