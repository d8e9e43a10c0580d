//! Deadlines: every call gets one, and a call past it is stopped, not just
//! answered. `grpc-timeout` is honoured, capped at `server.max_timeout_ms`;
//! unary calls that send none get `server.default_timeout_ms`. When the
//! deadline passes, the handler's future is dropped (so its database work
//! stops) and the caller gets DEADLINE_EXCEEDED; a streaming response is ended
//! with DEADLINE_EXCEEDED trailers. Handlers read the time left from the
//! [`Deadline`] request extension.
//!
//! Outside auth, so authentication counts against the budget; inside load
//! shedding, so a shed call never starts a timer.
//!
//! Tonic's own `grpc-timeout` handling sits outside every user layer and
//! answers CANCELLED; this layer ends a call slightly before the client's
//! deadline so the caller gets a definite DEADLINE_EXCEEDED (a reply needs
//! time to travel anyway).

use super::{RpcKind, RpcMethod};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Status;
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

/// How much earlier than the client's own deadline the server gives up.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(Duration::from_millis(5))
}

#[derive(Clone)]
pub struct DeadlineLayer {
    default: Duration,
    max: Duration,
}

impl DeadlineLayer {
    pub fn new(default: Duration, max: Duration) -> Self {
        Self { default, max }
    }

    /// The budget of a call: the client's (capped) or, for unary calls, the default.
    fn budget(&self, client: Option<Duration>, kind: RpcKind) -> Option<Duration> {
        match client {
            Some(t) if t <= self.max => Some(t - margin(t)),
            Some(_) => Some(self.max),
            None if kind == RpcKind::Unary => Some(self.default),
            None => None,
        }
    }
}

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

fn exceeded() -> Status {
    Status::deadline_exceeded("deadline exceeded")
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let kind = request
            .extensions()
            .get::<RpcMethod>()
            .map(|m| m.kind)
            .unwrap_or_else(|| RpcMethod::from_path(request.uri().path()).kind);
        let client = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let Some(budget) = self.layer.budget(client, kind) else {
            return self.inner.call(request).boxed();
        };
        let deadline = Instant::now() + budget;
        request.extensions_mut().insert(Deadline(deadline));
        let future = self.inner.call(request);
        async move {
            match tokio::time::timeout_at(deadline, future).await {
                Ok(Ok(response)) if kind == RpcKind::Unary => Ok(response),
                Ok(Ok(response)) => Ok(response.map(|body| {
                    tonic::body::Body::new(DeadlineBody {
                        inner: Some(body),
                        sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    })
                })),
                Ok(Err(e)) => Err(e),
                // The handler future is dropped here: its work stops.
                Err(_) => Ok(exceeded().into_http()),
            }
        }
        .boxed()
    }
}

/// A streaming response that ends with DEADLINE_EXCEEDED when time is up.
struct DeadlineBody {
    inner: Option<tonic::body::Body>,
    sleep: Pin<Box<Sleep>>,
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if frame.is_none() {
                self.inner = None;
            }
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            // Dropping the stream's body stops the task that feeds it.
            self.inner = None;
            let mut trailers = http::HeaderMap::new();
            let _ = exceeded().add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
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
            Some(Duration::from_secs(10))
        );
        assert_eq!(layer.budget(None, RpcKind::ServerStream), None);
        assert_eq!(
            layer.budget(Some(Duration::from_secs(600)), RpcKind::ServerStream),
            Some(Duration::from_secs(60))
        );
        let b = layer
            .budget(Some(Duration::from_secs(1)), RpcKind::Unary)
            .unwrap();
        assert!(b < Duration::from_secs(1) && b >= Duration::from_millis(995));
    }
}
