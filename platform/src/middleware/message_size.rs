//! Request metadata over `server.max_header_list_bytes` is
//! RESOURCE_EXHAUSTED ([`MetadataTooLarge`]), a gRPC answer that says what
//! happened: HTTP/2 itself would answer it with HTTP 431, which gRPC maps to
//! no code (clients report UNKNOWN). HTTP/2 still refuses, with 431, a
//! header block over four times the limit ([`HTTP2_HEADER_LIST_FACTOR`]),
//! so what one stream can make the server hold stays bounded. A bearer
//! token too large is the auth layer's UNAUTHENTICATED, above this layer.
//!
//! A message over `server.max_message_bytes` is RESOURCE_EXHAUSTED, as gRPC's
//! own implementations answer it. Tonic's decoder enforces the limit but
//! answers OUT_OF_RANGE; this layer turns exactly that answer
//! (recognised by tonic's message) into a [`MessageTooLarge`] error, leaving
//! every other OUT_OF_RANGE alone.
//!
//! The rescue layer (`super::rescue`) answers it RESOURCE_EXHAUSTED with
//! tonic's message and `ErrorInfo` reason `MESSAGE_TOO_LARGE`, the limit in
//! its metadata (`max_message_bytes`, read from tonic's message), and no
//! `RetryInfo`: the same message is refused again however long the client
//! waits, and clients that retry on RESOURCE_EXHAUSTED only when told when to
//! (`RetryInfo`) must not retry this one.
//!
//! It also wraps every request body in a [`LimitedBody`]: each method's
//! own limit on its request messages (before they are decoded or
//! decompressed), the server's budget for messages in transit and the read
//! timeout; see [`super::request_body`]. A call whose body is refused before
//! its response starts is answered with the refusal's typed error.
//!
//! Inside the other layers, so metrics and logs see the corrected code.
//! Cost per call: a pass over the request's headers, the body wrapper (one
//! small allocation), and one header lookup in the response.

use super::RpcMethod;
use super::request_body::{BodyLimits, Encoding, LimitedBody, Refusal};
use super::rescue::BoxError;
use futures::future::{Either, Ready, ready};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::Service;

/// The start of tonic's message for an over-limit request message.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";
/// The start of tonic's message for a compressed request message that
/// decompresses past the limit, which follows it.
const TONIC_DECOMPRESSED: &str = "Error decompressing: size limit, of ";
/// What precedes the limit in the first message.
const TONIC_LIMIT: &str = "the limit is: ";

/// A request message over the limit. Its message is tonic's, which names the
/// size found and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct MessageTooLarge {
    message: String,
    limit: Option<u64>,
}

impl MessageTooLarge {
    /// A request message whose length prefix announces `len` bytes, over
    /// its method's `limit`.
    pub(crate) fn announced(len: u32, limit: u32) -> Self {
        MessageTooLarge {
            message: format!(
                "request message of {len} bytes is over the method's limit of {limit} bytes"
            ),
            limit: Some(u64::from(limit)),
        }
    }

    /// A compressed request message that decompresses past its method's
    /// `limit` (or asks for a decoding window beyond what the limit needs).
    pub(crate) fn decompressed(limit: u32) -> Self {
        MessageTooLarge {
            message: format!(
                "compressed request message decompresses to more than the method's limit of {limit} bytes"
            ),
            limit: Some(u64::from(limit)),
        }
    }

    /// The error tonic's `message` reports, if it reports an over-limit
    /// request message.
    pub(crate) fn from_tonic(message: &str) -> Option<Self> {
        if message.starts_with(TONIC_TOO_LARGE) {
            return Some(MessageTooLarge {
                limit: limit_in(message),
                message: message.to_owned(),
            });
        }
        // Tonic's decompression past its own limit, for a service whose
        // limit is below the method's.
        let rest = message.strip_prefix(TONIC_DECOMPRESSED)?;
        Some(MessageTooLarge {
            limit: rest.split(' ').next().and_then(|n| n.parse().ok()),
            message: message.to_owned(),
        })
    }

    /// The limit, as tonic's message names it.
    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }
}

/// HTTP/2 refuses a header block over this many times
/// `server.max_header_list_bytes` itself; up to there, this layer answers.
pub(crate) const HTTP2_HEADER_LIST_FACTOR: u32 = 4;

/// Request metadata over the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request metadata of {size} bytes is over the limit of {limit} bytes")]
pub(crate) struct MetadataTooLarge {
    size: usize,
    limit: usize,
}

impl MetadataTooLarge {
    /// The limit (`server.max_header_list_bytes`).
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// The size of a header list as HTTP/2 counts it (RFC 9113 §6.5.2: each
/// field's name and value, plus 32).
fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

#[derive(Clone)]
pub(crate) struct MessageSize<S> {
    inner: S,
    max_metadata: usize,
    bodies: Arc<BodyLimits>,
}

impl<S> MessageSize<S> {
    /// `max_metadata` is `server.max_header_list_bytes`; `bodies` the
    /// limits of request bodies.
    pub(crate) fn new(inner: S, max_metadata: usize, bodies: Arc<BodyLimits>) -> Self {
        Self {
            inner,
            max_metadata,
            bodies,
        }
    }
}

/// The limit named in tonic's message ("…, the limit is: 65536 bytes").
fn limit_in(message: &str) -> Option<u64> {
    let (_, rest) = message.rsplit_once(TONIC_LIMIT)?;
    rest.split(' ').next()?.parse().ok()
}

fn check<E: Into<BoxError>>(
    result: Result<http::Response<tonic::body::Body>, E>,
) -> Result<http::Response<tonic::body::Body>, BoxError> {
    let response = result.map_err(Into::into)?;
    if !matches!(
        super::grpc_status(response.headers()),
        Some(Code::OutOfRange | Code::ResourceExhausted)
    ) {
        return Ok(response);
    }
    match Status::from_header_map(response.headers())
        .and_then(|status| MessageTooLarge::from_tonic(status.message()))
    {
        Some(too_large) => Err(too_large.into()),
        None => Ok(response),
    }
}

pin_project_lite::pin_project! {
    /// The handler's answer, unless the request body was refused before
    /// it: then the refusal.
    pub(crate) struct Checked<F> {
        #[pin]
        inner: F,
        refused: Arc<OnceLock<Refusal>>,
    }
}

impl<F, E> Future for Checked<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(refusal) = this.refused.get() {
            return Poll::Ready(Err(refusal.clone().into_error()));
        }
        Poll::Ready(check(result))
    }
}

impl<S, B> Service<http::Request<B>> for MessageSize<S>
where
    S: Service<http::Request<LimitedBody<B>>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    // Named, not boxed: no allocation per call.
    type Future = Either<Ready<Result<S::Response, BoxError>>, Checked<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let size = header_list_size(request.headers());
        if size > self.max_metadata {
            let too_large = MetadataTooLarge {
                size,
                limit: self.max_metadata,
            };
            return Either::Left(ready(Err(too_large.into())));
        }
        let (limit, kind) = match request.extensions().get::<RpcMethod>() {
            Some(method) => (
                method
                    .max_request_bytes
                    .unwrap_or(self.bodies.default_max_request_bytes),
                method.kind,
            ),
            None => (self.bodies.default_max_request_bytes, super::RpcKind::Unary),
        };
        let encoding = Encoding::of(request.headers());
        let refused = Arc::new(OnceLock::new());
        let bodies = self.bodies.clone();
        let request = request
            .map(|body| LimitedBody::new(body, bodies, limit, kind, encoding, refused.clone()));
        Either::Right(Checked {
            inner: self.inner.call(request),
            refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Duration;
    use tonic_types::StatusExt;
    use tower::layer::layer_fn;
    use tower_test::mock;

    /// What the handler (the mock) receives: the body, limited.
    type Request = http::Request<LimitedBody<()>>;
    type Response = http::Response<tonic::body::Body>;

    fn layer<S>(inner: S) -> MessageSize<S> {
        let bodies = BodyLimits::new(64 * 1024, std::time::Duration::from_secs(10), 1 << 26);
        MessageSize::new(inner, LIMIT, Arc::new(bodies))
    }

    const PATH: &str = "/things.v1.ThingService/GetThing";
    const LIMIT: usize = 16 * 1024;

    /// The layer's result when the handler answers `status`.
    async fn through_the_layer(status: Status) -> Result<Response, BoxError> {
        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(layer_fn(layer));
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(http::Request::builder().uri(PATH).body(()).unwrap());
        let Poll::Ready(Some((_, reply))) = handle.poll_request() else {
            panic!("the call reaches the handler");
        };
        reply.send_response(status.into_http());
        response.await
    }

    #[tokio::test]
    async fn an_over_limit_message_is_resource_exhausted_with_the_limit_and_no_retry() {
        let message = format!("{TONIC_TOO_LARGE}: found 70000 bytes, {TONIC_LIMIT}65536 bytes");
        let error = through_the_layer(Status::out_of_range(message.clone()))
            .await
            .unwrap_err();
        let too_large = error.downcast_ref::<MessageTooLarge>().expect("typed");
        assert_eq!(too_large.limit(), Some(65536));
        assert_eq!(too_large.to_string(), message);

        // What the client gets.
        let status = crate::testing::rescued(&*error, PATH);
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
        let response = through_the_layer(Status::out_of_range("after_version is ahead"))
            .await
            .expect("not an error");
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "after_version is ahead");
    }

    #[tokio::test]
    async fn ok_answers_and_inner_errors_pass_as_they_are() {
        let response = through_the_layer(Status::ok("")).await.expect("OK");
        assert_eq!(
            super::super::grpc_status(response.headers()),
            Some(Code::Ok)
        );

        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(layer_fn(layer));
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(http::Request::builder().uri(PATH).body(()).unwrap());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(Status::unavailable("gone"));
        let error = response.await.unwrap_err();
        assert_eq!(error.downcast_ref::<Status>().unwrap().message(), "gone");
    }

    #[tokio::test]
    async fn metadata_over_the_limit_is_resource_exhausted_before_the_handler() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(layer_fn(layer));
        assert!(svc.poll_ready().is_ready());
        let padded = http::Request::builder()
            .uri(PATH)
            .header("x-padding", "a".repeat(LIMIT))
            .body(())
            .unwrap();
        let error = svc.call(padded).await.unwrap_err();
        let too_large = error.downcast_ref::<MetadataTooLarge>().expect("typed");
        assert_eq!(too_large.limit(), LIMIT);
        assert!(
            matches!(handle.poll_request(), Poll::Pending),
            "the handler never saw it"
        );

        let status = crate::testing::rescued(&*error, PATH);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("over the limit of 16384 bytes"),
            "{status:?}"
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "METADATA_TOO_LARGE");
        assert_eq!(info.metadata["max_header_list_bytes"], "16384");
        assert!(details.retry_info().is_none());

        // Just under the limit passes.
        assert!(svc.poll_ready().is_ready());
        let fits = http::Request::builder()
            .uri(PATH)
            .header("x-padding", "a".repeat(LIMIT - 32 - "x-padding".len()))
            .body(())
            .unwrap();
        let response = svc.call(fits);
        let (_, reply) = handle.next_request().await.expect("reaches the handler");
        reply.send_response(Status::ok("").into_http());
        assert!(response.await.is_ok());
    }

    /// The handler reads the body, as tonic does before a unary handler
    /// runs, and answers with what reading it gave.
    async fn read_by_the_handler(
        body: tonic::body::Body,
        bodies: Arc<BodyLimits>,
    ) -> Result<Response, BoxError> {
        use http_body_util::BodyExt;
        type Limited = http::Request<LimitedBody<tonic::body::Body>>;
        let (mut svc, mut handle) =
            mock::spawn_layer::<Limited, Response, _>(layer_fn(move |inner| {
                MessageSize::new(inner, LIMIT, bodies.clone())
            }));
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(http::Request::builder().uri(PATH).body(body).unwrap());
        let (request, reply) = handle.next_request().await.expect("reaches the handler");
        match request.into_body().collect().await {
            Ok(_) => reply.send_response(Status::ok("").into_http()),
            Err(status) => reply.send_response(status.into_http()),
        }
        response.await
    }

    #[tokio::test]
    async fn a_body_refused_before_the_answer_is_answered_with_its_typed_error() {
        let bodies = || Arc::new(BodyLimits::new(1024, Duration::from_secs(10), 1 << 26));
        let mut framed = vec![0u8];
        framed.extend_from_slice(&2048u32.to_be_bytes());
        framed.extend(std::iter::repeat_n(1u8, 2048));
        let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(framed)));
        let error = read_by_the_handler(body, bodies()).await.unwrap_err();
        let too_large = error.downcast_ref::<MessageTooLarge>().expect("typed");
        assert_eq!(too_large.limit(), Some(1024));
        let status = crate::testing::rescued(&*error, PATH);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "MESSAGE_TOO_LARGE");
        assert_eq!(
            details.error_info().unwrap().metadata["max_message_bytes"],
            "1024"
        );

        // A body within the limit reaches the handler whole.
        let mut framed = vec![0u8];
        framed.extend_from_slice(&10u32.to_be_bytes());
        framed.extend(std::iter::repeat_n(1u8, 10));
        let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(framed)));
        let response = read_by_the_handler(body, bodies()).await.expect("answered");
        assert_eq!(
            super::super::grpc_status(response.headers()),
            Some(Code::Ok)
        );
    }

    #[test]
    fn read_timeouts_and_a_spent_budget_are_answered_as_the_rescue_table_says() {
        use super::super::request_body::{MemoryBusy, ReadTimeout};
        let late = ReadTimeout::for_tests(Duration::from_millis(2500));
        let status = crate::testing::rescued(&late, PATH);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "REQUEST_READ_TIMEOUT");
        assert_eq!(info.metadata["request_read_timeout_ms"], "2500");
        assert!(details.retry_info().is_none());

        let busy = MemoryBusy::for_tests(1 << 20);
        let status = crate::testing::rescued(&busy, PATH);
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "REQUEST_MEMORY_BUSY");
        assert_eq!(info.metadata["max_request_memory_bytes"], "1048576");
        assert!(details.retry_info().is_some());
    }

    #[tokio::test]
    async fn tonics_own_decompression_limit_is_message_too_large_too() {
        let message =
            format!("{TONIC_DECOMPRESSED}4096 bytes, exceeded while decompressing message");
        let error = through_the_layer(Status::resource_exhausted(message.clone()))
            .await
            .unwrap_err();
        let too_large = error.downcast_ref::<MessageTooLarge>().expect("typed");
        assert_eq!(too_large.limit(), Some(4096));
        // Other RESOURCE_EXHAUSTED answers are the handler's own.
        let response = through_the_layer(Status::resource_exhausted("PER_STREAM_LIMIT"))
            .await
            .expect("not an error");
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.message(), "PER_STREAM_LIMIT");
    }

    #[test]
    fn the_limit_is_read_from_tonics_message() {
        assert_eq!(
            limit_in(
                "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes"
            ),
            Some(4)
        );
        assert_eq!(limit_in("Error, decoded message length too large"), None);
    }
}
