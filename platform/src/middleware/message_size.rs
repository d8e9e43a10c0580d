//! A message over `server.max_message_bytes` is RESOURCE_EXHAUSTED, as the
//! contract (and gRPC's own implementations) say. Tonic's decoder enforces the
//! limit but answers OUT_OF_RANGE; this layer rewrites exactly that answer
//! (recognised by tonic's message), leaving every other OUT_OF_RANGE alone.
//!
//! The rewritten status carries `ErrorInfo` reason `MESSAGE_TOO_LARGE` with
//! the limit in its metadata (`max_message_bytes`, read from tonic's
//! message), and no `RetryInfo`: the same message is refused again however
//! long the client waits, and clients that retry on RESOURCE_EXHAUSTED only
//! when told when to (`RetryInfo`) must not retry this one.
//!
//! Inside the other layers, so metrics and logs see the corrected code.

use super::rescue::service_of;
use futures::future::{FutureExt, Join, Map, Ready, join, ready};
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

/// The start of tonic's message for an over-limit request message.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";
/// What precedes the limit in that message.
const TONIC_LIMIT: &str = "the limit is: ";

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

/// The limit named in tonic's message ("…, the limit is: 65536 bytes").
fn limit_in(message: &str) -> Option<&str> {
    let (_, rest) = message.rsplit_once(TONIC_LIMIT)?;
    let digits = rest.split(' ').next()?;
    digits.parse::<u64>().is_ok().then_some(digits)
}

fn rewrite<E>(
    (result, service): (Result<http::Response<tonic::body::Body>, E>, Arc<str>),
) -> Result<http::Response<tonic::body::Body>, E> {
    let mut response = result?;
    let headers = response.headers_mut();
    if super::grpc_status(headers) != Some(Code::OutOfRange) {
        return Ok(response);
    }
    let Some(status) = Status::from_header_map(headers) else {
        return Ok(response);
    };
    if status.message().starts_with(TONIC_TOO_LARGE) {
        let metadata: HashMap<String, String> = limit_in(status.message())
            .map(|limit| ("max_message_bytes".to_owned(), limit.to_owned()))
            .into_iter()
            .collect();
        let exhausted = Status::with_error_details(
            Code::ResourceExhausted,
            status.message(),
            ErrorDetails::with_error_info("MESSAGE_TOO_LARGE", &*service, metadata),
        );
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        let _ = exhausted.add_header(headers);
    }
    Ok(response)
}

type Rewrite<R, E> = fn((Result<R, E>, Arc<str>)) -> Result<R, E>;

impl<S, B> Service<http::Request<B>> for MessageSize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Named, not boxed: one allocation fewer per call. The service called
    // (a reference count) rides along for the ErrorInfo's domain.
    type Future = Map<Join<S::Future, Ready<Arc<str>>>, Rewrite<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = service_of(&request);
        join(self.inner.call(request), ready(service)).map(rewrite as Rewrite<_, _>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn through_the_layer(status: Status) -> Status {
        let handler = tower::service_fn(move |_: http::Request<()>| {
            let status = status.clone();
            async move { Ok::<_, std::convert::Infallible>(status.into_http()) }
        });
        let request = http::Request::builder()
            .uri("/things.v1.ThingService/GetThing")
            .body(())
            .unwrap();
        let response = MessageSizeLayer
            .layer(handler)
            .oneshot(request)
            .await
            .unwrap();
        Status::from_header_map(response.headers()).unwrap()
    }

    #[tokio::test]
    async fn an_over_limit_message_is_resource_exhausted_with_the_limit_and_no_retry() {
        let message = format!("{TONIC_TOO_LARGE}: found 70000 bytes, {TONIC_LIMIT}65536 bytes");
        let status = through_the_layer(Status::out_of_range(message.clone())).await;
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), message);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
        assert_eq!(info.domain, "things.v1.ThingService");
        assert_eq!(info.metadata["max_message_bytes"], "65536");
        assert!(details.retry_info().is_none());
    }

    #[tokio::test]
    async fn other_out_of_range_answers_are_left_alone() {
        let status = through_the_layer(Status::out_of_range("after_version is ahead")).await;
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "after_version is ahead");
    }
}
