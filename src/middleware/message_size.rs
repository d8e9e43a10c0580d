//! A message over `server.max_message_bytes` is RESOURCE_EXHAUSTED, as the
//! contract (and gRPC's own implementations) say. Tonic's decoder enforces the
//! limit but answers OUT_OF_RANGE; this layer rewrites exactly that answer
//! (recognised by tonic's message), leaving every other OUT_OF_RANGE alone.
//!
//! Inside the other layers, so metrics and logs see the corrected code.

use futures::future::{MapOk, TryFutureExt};
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The start of tonic's message for an over-limit request message.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

#[derive(Clone, Default)]
pub struct MessageSizeLayer;

impl<S> Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MessageSize { inner }
    }
}

#[derive(Clone)]
pub struct MessageSize<S> {
    inner: S,
}

fn rewrite(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    if super::grpc_status(headers) != Some(Code::OutOfRange) {
        return response;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    if status.message().starts_with(TONIC_TOO_LARGE) {
        let exhausted = Status::resource_exhausted(status.message().to_owned());
        headers.remove("grpc-message");
        let _ = exhausted.add_header(headers);
    }
    response
}

impl<S, B> Service<http::Request<B>> for MessageSize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Named, not boxed: one allocation fewer per call.
    type Future = MapOk<S::Future, fn(S::Response) -> S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.inner.call(request).map_ok(rewrite as fn(_) -> _)
    }
}
