//! The one place an error becomes what the client gets: a gRPC status with
//! a `google.rpc.Status` (details) in `grpc-status-details-bin`.
//!
//! # The rescue table
//!
//! No layer below answers a call itself: each fails it with its own typed
//! error (`Err(BoxError)`), which this layer, as linkerd2-proxy's rescue
//! does, looks up in a table of the errors it knows (`answer`). It looks
//! at the error and down its chain of `source()`s: tonic hands a response
//! body's error on inside a `Status` whose source it is, and a layer may
//! wrap another's error.
//!
//! | error (who fails with it) | code | `ErrorInfo.reason` | also |
//! |---|---|---|---|
//! | tower's `Overloaded` ([`super::concurrency`]) | RESOURCE_EXHAUSTED | `SERVER_OVERLOADED` | `RetryInfo` |
//! | [`DeadlineExceeded`] ([`super::deadline`]): the client's deadline | DEADLINE_EXCEEDED | `DEADLINE_EXCEEDED` | |
//! | the same: the server's cap or default on a unary call | DEADLINE_EXCEEDED | `SERVER_TIME_LIMIT` | the limit in the metadata |
//! | the same: the server's cap on a stream | UNAVAILABLE | `STREAM_TIME_LIMIT` | the limit in the metadata, `RetryInfo` |
//! | [`AuthError`] (`crate::auth`) | UNAUTHENTICATED, PERMISSION_DENIED | the error's reason | `required_scope` |
//! | [`MessageTooLarge`] ([`super::message_size`], [`super::request_body`]) | RESOURCE_EXHAUSTED | `MESSAGE_TOO_LARGE` | the limit that applied as `max_message_bytes`, no `RetryInfo` |
//! | [`MetadataTooLarge`] ([`super::message_size`]) | RESOURCE_EXHAUSTED | `METADATA_TOO_LARGE` | `max_header_list_bytes`, no `RetryInfo` |
//! | [`ReadTimeout`] ([`super::request_body`]) | DEADLINE_EXCEEDED | `REQUEST_READ_TIMEOUT` | `request_read_timeout_ms`, no `RetryInfo` |
//! | [`MemoryBusy`] ([`super::request_body`]) | RESOURCE_EXHAUSTED | `REQUEST_MEMORY_BUSY` | `max_request_memory_bytes`, `RetryInfo` |
//! | [`QuotaExceeded`] ([`super::caller_quota`]) | RESOURCE_EXHAUSTED | `CALLER_QUOTA_EXCEEDED` | `max_calls_per_caller`, `QuotaFailure` naming the caller, `RetryInfo` |
//! | [`RateExceeded`] ([`super::caller_quota`]) | RESOURCE_EXHAUSTED | `CALLER_RATE_EXCEEDED` | `max_call_rate_per_caller`, `call_burst_per_caller`, `QuotaFailure` naming the caller, `RetryInfo`: the wait until the caller's next call is within its rate |
//! | [`ConnectionQuotaExceeded`] ([`super::caller_quota`]) | RESOURCE_EXHAUSTED | `CONNECTION_QUOTA_EXCEEDED` | `max_anonymous_calls_per_connection`, `QuotaFailure` with subject `connection`, `RetryInfo` |
//! | [`Panicked`] ([`super::panic_guard`]) | INTERNAL, opaque | `INTERNAL` | the cause goes to the log |
//! | a `tonic::Status` | its own | completed as below | |
//! | anything else (tonic's UNKNOWN wrapping of it too) | INTERNAL, opaque | `INTERNAL` | logged as unexpected |
//!
//! The message is the error's own (its `Display`), except where the table
//! says opaque and for load shedding. The `ErrorInfo.domain` is the service
//! called ([`error_domain`]), and every answer carries a
//! `google.rpc.RequestInfo` with the call's request id (also in the
//! `x-request-id` metadata), so a support request quoting the error names
//! the call's log lines. An error the call's response body fails with (a
//! stream past its deadline; hyper would answer it with a stream reset, a
//! bare INTERNAL at the client) ends the body with the table's status as
//! trailers instead.
//!
//! # The safety net
//!
//! An answer that is not an error may still carry an error status: the
//! handlers attach their details where they make the error (`ErrorInfo`
//! with a reason, and `ResourceInfo`, `PreconditionFailure`… where one
//! fits). What nobody here builds gets none: tonic's own answers
//! (UNIMPLEMENTED for an unknown method, INTERNAL for an undecodable
//! message, UNIMPLEMENTED for an unsupported compression, a response over
//! the size limit), a status some future handler returns bare. For those
//! this layer adds a Status with the same code and message and an
//! `ErrorInfo` whose reason is the code's name, and to every one a
//! `RequestInfo`. It looks at a trailers-only response's headers, and at the
//! trailers that end any other response.
//!
//! Cost on OK responses: two reference counts taken and dropped, a header
//! lookup, and the body wrapper that looks at the trailers (one small box,
//! which `tonic::body::Body` needs for any wrapper). The table is read and
//! the details are built and encoded only on the error path.
//!
//! Directly inside [`super::observe`]: the request id and the method are
//! known (its [`CallContext`] and [`RpcMethod`]), and every layer below is
//! covered, while the access log and metrics see the final code, as the
//! client does. Hand-written: no crate completes gRPC error details.

use super::caller_quota::{ConnectionQuotaExceeded, QuotaExceeded, RateExceeded};
use super::concurrency::SHED_RETRY_DELAY;
use super::deadline::{DeadlineExceeded, SetBy};
use super::message_size::{MessageTooLarge, MetadataTooLarge};
use super::panic_guard::Panicked;
use super::request_body::{MemoryBusy, ReadTimeout};
use super::{CallContext, RpcKind, RpcMethod, grpc_status};
use crate::auth::AuthError;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use futures::future::{FutureExt, Join, Map, Ready, join, ready};
use http::HeaderValue;
use http_body::{Body, Frame};
use prost::Message;
use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::load_shed::error::Overloaded;
use tower::{Layer, Service};

pub(crate) use tower::BoxError;

const DETAILS: &str = "grpc-status-details-bin";

/// The message of the errors whose cause stays in the log.
const OPAQUE: &str = "internal error";

/// Binary metadata is base64 without padding on the way out (as gRPC
/// implementations send it), with or without padding on the way in.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest service name taken from a path as an `ErrorInfo.domain`.
const MAX_DOMAIN_BYTES: usize = 128;

/// The `ErrorInfo.domain` of an error answering a call to `service`: the
/// service's gRPC name (`things.v1.ThingService`), so no layer names a
/// service of its own. A path that names no well-formed service (dotted
/// identifiers, at most 128 bytes: the path is the client's) gets
/// `fallback` instead, so nothing unbounded is echoed back.
pub(crate) fn error_domain<'a>(service: &'a str, fallback: &'a str) -> &'a str {
    let well_formed = !service.is_empty()
        && service.len() <= MAX_DOMAIN_BYTES
        && service.split('.').all(|part| {
            part.bytes().next().is_some_and(|b| !b.is_ascii_digit())
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if well_formed { service } else { fallback }
}

/// The `ErrorInfo.reason` given to an error that came without details: the
/// code's name.
pub(crate) fn reason_of(code: Code) -> &'static str {
    crate::codes::code_name(code)
}

/// The first error of type `E` in `error`'s chain: `error` itself, then its
/// `source()`, and so on.
pub(crate) fn cause_ref<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

#[derive(Clone)]
pub(crate) struct RescueLayer {
    fallback: &'static str,
}

impl RescueLayer {
    /// `fallback`: the domain of errors answering a path that names no
    /// well-formed service (see [`error_domain`]); the server's main
    /// service's name (`NamedService::NAME`).
    pub(crate) fn new(fallback: &'static str) -> Self {
        Self { fallback }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            fallback: self.fallback,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    fallback: &'static str,
}

/// What an error of the call needs: its method and request id. Reference
/// counts only; nothing is allocated for a call that ends OK.
pub(crate) struct Call {
    method: RpcMethod,
    context: Option<Arc<CallContext>>,
    fallback: &'static str,
}

impl Call {
    /// The call `request` makes; `fallback` as for [`RescueLayer::new`].
    pub(crate) fn of<B>(request: &http::Request<B>, fallback: &'static str) -> Self {
        Call {
            // Without observe above (a layer's unit tests), parsed from the
            // path.
            method: match request.extensions().get::<RpcMethod>() {
                Some(method) => method.clone(),
                None => RpcMethod::from_path(request.uri().path()),
            },
            context: request.extensions().get::<Arc<CallContext>>().cloned(),
            fallback,
        }
    }

    fn domain(&self) -> &str {
        error_domain(&self.method.service, self.fallback)
    }

    fn request_id(&self) -> Option<&str> {
        self.context.as_deref().map(|c| c.request_id.as_str())
    }
}

type Finish<R, E> = fn((Result<R, E>, Call)) -> Result<R, E>;

/// The inner call's future, then [`finish`]: named (not boxed), so the layer
/// allocates no future per call. Joining with a ready future is how the
/// call's state rides along without a hand-written pinned future.
pub(crate) type RescueFuture<F, R, E> = Map<Join<F, Ready<Call>>, Finish<R, E>>;

/// Every call's error is answered; an error of `poll_ready` (a service that
/// can take no call at all, which none below is) is passed on, for it is
/// no call's.
impl<S, B> Service<http::Request<B>> for Rescue<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RescueFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = Call::of(&request, self.fallback);
        join(self.inner.call(request), ready(call)).map(finish as Finish<_, _>)
    }
}

fn finish<E: Into<BoxError>>(
    (result, call): (Result<http::Response<tonic::body::Body>, E>, Call),
) -> Result<http::Response<tonic::body::Body>, E> {
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            let error: BoxError = error.into();
            return Ok(respond(&*error, &call));
        }
    };
    match grpc_status(response.headers()) {
        // Trailers-only: the status is in the headers, the body is empty.
        Some(Code::Ok) => Ok(response),
        Some(code) => {
            complete(response.headers_mut(), code, &call);
            Ok(response)
        }
        None => Ok(response.map(|inner| {
            tonic::body::Body::new(RescueBody {
                inner,
                call: Some(call),
            })
        })),
    }
}

/// What the table answers an error with.
enum Answer {
    /// A status made here, its details complete.
    Made(Status),
    /// A status an inner service failed with: sent as it is, its details
    /// completed as a response's are.
    Passed(Status),
}

/// The rescue table (see the module documentation): the status a call
/// that failed with `error` is answered with.
fn answer(error: &(dyn Error + 'static), call: &Call) -> Answer {
    let domain = call.domain();
    let info = |reason: &str, metadata: HashMap<String, String>| {
        ErrorDetails::with_error_info(reason, domain, metadata)
    };
    let (code, message, mut details): (Code, Cow<'_, str>, ErrorDetails) =
        if cause_ref::<Overloaded>(error).is_some() {
            // The same call may well succeed a little later.
            let mut details = info("SERVER_OVERLOADED", HashMap::new());
            details.set_retry_info(Some(SHED_RETRY_DELAY));
            (
                Code::ResourceExhausted,
                "server overloaded; retry with backoff".into(),
                details,
            )
        } else if let Some(expired) = cause_ref::<DeadlineExceeded>(error) {
            deadline_exceeded(expired, domain)
        } else if let Some(refused) = cause_ref::<AuthError>(error) {
            (
                refused.code(),
                refused.to_string().into(),
                refused.details(domain),
            )
        } else if let Some(too_large) = cause_ref::<MessageTooLarge>(error) {
            // No RetryInfo: the same message is refused again however long
            // the client waits.
            let limit = too_large
                .limit()
                .map(|limit| ("max_message_bytes".to_owned(), limit.to_string()));
            (
                Code::ResourceExhausted,
                too_large.to_string().into(),
                info("MESSAGE_TOO_LARGE", limit.into_iter().collect()),
            )
        } else if let Some(exceeded) = cause_ref::<QuotaExceeded>(error) {
            // The caller's own calls end and free its quota: it may retry
            // soon, as for load shedding.
            let limit = (
                "max_calls_per_caller".to_owned(),
                exceeded.limit().to_string(),
            );
            let mut details = info("CALLER_QUOTA_EXCEEDED", [limit].into_iter().collect());
            details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                format!("caller:{}", exceeded.subject()),
                exceeded.to_string(),
            )]);
            details.set_retry_info(Some(SHED_RETRY_DELAY));
            (
                Code::ResourceExhausted,
                exceeded.to_string().into(),
                details,
            )
        } else if let Some(exceeded) = cause_ref::<RateExceeded>(error) {
            // The caller may call again once its rate allows: the wait
            // governor computed for its next call.
            let metadata = [
                (
                    "max_call_rate_per_caller".to_owned(),
                    exceeded.per_second().to_string(),
                ),
                (
                    "call_burst_per_caller".to_owned(),
                    exceeded.burst().to_string(),
                ),
            ];
            let mut details = info("CALLER_RATE_EXCEEDED", metadata.into_iter().collect());
            details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                format!("caller:{}", exceeded.subject()),
                exceeded.to_string(),
            )]);
            details.set_retry_info(Some(exceeded.wait()));
            (
                Code::ResourceExhausted,
                exceeded.to_string().into(),
                details,
            )
        } else if let Some(exceeded) = cause_ref::<ConnectionQuotaExceeded>(error) {
            // The connection's other calls end and free its quota, as a
            // caller's do.
            let limit = (
                "max_anonymous_calls_per_connection".to_owned(),
                exceeded.limit().to_string(),
            );
            let mut details = info("CONNECTION_QUOTA_EXCEEDED", [limit].into_iter().collect());
            details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                "connection",
                exceeded.to_string(),
            )]);
            details.set_retry_info(Some(SHED_RETRY_DELAY));
            (
                Code::ResourceExhausted,
                exceeded.to_string().into(),
                details,
            )
        } else if let Some(too_large) = cause_ref::<MetadataTooLarge>(error) {
            // No RetryInfo: the same metadata is refused again.
            let limit = (
                "max_header_list_bytes".to_owned(),
                too_large.limit().to_string(),
            );
            (
                Code::ResourceExhausted,
                too_large.to_string().into(),
                info("METADATA_TOO_LARGE", [limit].into_iter().collect()),
            )
        } else if let Some(late) = cause_ref::<ReadTimeout>(error) {
            // The client sent too slowly; no RetryInfo: the same client on
            // the same link would be as slow again.
            let timeout = (
                "request_read_timeout_ms".to_owned(),
                late.timeout().as_millis().to_string(),
            );
            (
                Code::DeadlineExceeded,
                late.to_string().into(),
                info("REQUEST_READ_TIMEOUT", [timeout].into_iter().collect()),
            )
        } else if let Some(busy) = cause_ref::<MemoryBusy>(error) {
            // Other calls' messages finish arriving and give the budget
            // back: the same call may well succeed a little later.
            let budget = (
                "max_request_memory_bytes".to_owned(),
                busy.budget().to_string(),
            );
            let mut details = info("REQUEST_MEMORY_BUSY", [budget].into_iter().collect());
            details.set_retry_info(Some(SHED_RETRY_DELAY));
            (Code::ResourceExhausted, busy.to_string().into(), details)
        } else if let Some(panicked) = cause_ref::<Panicked>(error) {
            tracing::error!(
                method = format_args!("/{}/{}", call.method.service, call.method.name),
                cause = panicked.cause(),
                "handler panicked"
            );
            (
                Code::Internal,
                OPAQUE.into(),
                info("INTERNAL", HashMap::new()),
            )
        } else if let Some(status) = cause_ref::<Status>(error).filter(|s| !wraps_unknown(s)) {
            return Answer::Passed(status.clone());
        } else {
            tracing::warn!(
                method = format_args!("/{}/{}", call.method.service, call.method.name),
                error = %error,
                "unexpected error"
            );
            (
                Code::Internal,
                OPAQUE.into(),
                info("INTERNAL", HashMap::new()),
            )
        };
    if let Some(id) = call.request_id() {
        details.set_request_info(id, "");
    }
    Answer::Made(Status::with_error_details(code, message, details))
}

/// Whether `status` is tonic's wrapping of an error it does not know (as it
/// hands on a response body's error): UNKNOWN, the error's own text as the
/// message, the error as its source. The table answers the error inside
/// instead, so an unexpected error is opaque however it arrives.
fn wraps_unknown(status: &Status) -> bool {
    status.code() == Code::Unknown && status.source().is_some()
}

/// The table's rows for [`DeadlineExceeded`]: whose limit ended the call
/// decides the code (`super::deadline` says why).
fn deadline_exceeded(
    expired: &DeadlineExceeded,
    domain: &str,
) -> (Code, Cow<'static, str>, ErrorDetails) {
    let info = |reason: &str, limit: Option<(&str, Duration)>| {
        let metadata: HashMap<String, String> = limit
            .map(|(key, limit)| (key.to_owned(), limit.as_millis().to_string()))
            .into_iter()
            .collect();
        ErrorDetails::with_error_info(reason, domain, metadata)
    };
    let message = expired.to_string().into();
    match expired.set_by {
        SetBy::Client => (
            Code::DeadlineExceeded,
            message,
            info("DEADLINE_EXCEEDED", None),
        ),
        SetBy::ServerCap(max) if expired.kind != RpcKind::Unary => {
            let mut details = info("STREAM_TIME_LIMIT", Some(("max_timeout_ms", max)));
            // A new stream may start at once.
            details.set_retry_info(Some(Duration::ZERO));
            (Code::Unavailable, message, details)
        }
        SetBy::ServerCap(max) => (
            Code::DeadlineExceeded,
            message,
            info("SERVER_TIME_LIMIT", Some(("max_timeout_ms", max))),
        ),
        SetBy::ServerDefault(default) => (
            Code::DeadlineExceeded,
            message,
            info("SERVER_TIME_LIMIT", Some(("default_timeout_ms", default))),
        ),
    }
}

/// The trailers-only response answering `call`, which failed with `error`.
pub(crate) fn respond(
    error: &(dyn Error + 'static),
    call: &Call,
) -> http::Response<tonic::body::Body> {
    match answer(error, call) {
        Answer::Made(status) => status.into_http(),
        Answer::Passed(status) => {
            let code = status.code();
            let mut response = status.into_http();
            complete(response.headers_mut(), code, call);
            response
        }
    }
}

/// The trailers ending the response of `call`, whose body failed with
/// `error`.
fn trailers(error: &(dyn Error + 'static), call: &Call) -> http::HeaderMap {
    let (status, passed) = match answer(error, call) {
        Answer::Made(status) => (status, false),
        Answer::Passed(status) => (status, true),
    };
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // The message cannot be a header value: keep the code.
        trailers.clear();
        let _ = Status::new(status.code(), "").add_header(&mut trailers);
    }
    if passed {
        complete(&mut trailers, status.code(), call);
    }
    trailers
}

/// A response body whose non-OK trailers get completed, and whose error
/// becomes trailers.
struct RescueBody {
    inner: tonic::body::Body,
    /// `None` once the body has ended with trailers made here.
    call: Option<Call>,
}

impl Body for RescueBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let Some(call) = &this.call else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut()
                    && let Some(code) = grpc_status(trailers)
                    && code != Code::Ok
                {
                    complete(trailers, code, call);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => {
                // Answered as trailers: the client gets this status (and
                // its details) instead of a reset stream.
                let trailers = trailers(&status, call);
                this.call = None;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.call.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Makes sure the error status in `headers` carries details with an
/// `ErrorInfo` and a `RequestInfo`, adding what is missing.
fn complete(headers: &mut http::HeaderMap, code: Code, call: &Call) {
    if code == Code::Ok {
        return;
    }
    let Some(value) = headers.get(DETAILS) else {
        // No details at all: a Status with the same code and message (gRPC
        // clients check that they agree) and the details this layer knows.
        let message = Status::from_header_map(headers)
            .map(|s| s.message().to_owned())
            .unwrap_or_default();
        tracing::debug!(code = ?code, "error without details: adding ErrorInfo");
        let status = Status::with_error_details(code, message, missing(code, call, true, true));
        insert(headers, status.details());
        return;
    };
    // Details that are not a readable Status are not ours to repair.
    let Ok(bytes) = BASE64.decode(value.as_bytes()) else {
        return;
    };
    let Ok(mut status) = tonic_types::Status::decode(bytes.as_slice()) else {
        return;
    };
    let has = |name: &str| {
        status
            .details
            .iter()
            .any(|any| any.type_url.rsplit('/').next() == Some(name))
    };
    let info = !has("google.rpc.ErrorInfo");
    let request = !has("google.rpc.RequestInfo") && call.request_id().is_some();
    if !info && !request {
        return;
    }
    // The `Any`s are made by tonic-types (its own encoding of a Status with
    // just these details), then appended: the details already there, of
    // whatever type, are kept as they are.
    let extra = Status::with_error_details(Code::Ok, "", missing(code, call, info, request));
    if let Ok(extra) = tonic_types::Status::decode(extra.details()) {
        status.details.extend(extra.details);
        insert(headers, &status.encode_to_vec());
    }
}

/// The details this layer adds: an `ErrorInfo` named after the code, and
/// the call's `RequestInfo`.
fn missing(code: Code, call: &Call, info: bool, request: bool) -> ErrorDetails {
    let mut details = ErrorDetails::new();
    if info {
        details.set_error_info(reason_of(code), call.domain(), HashMap::new());
    }
    if request && let Some(id) = call.request_id() {
        details.set_request_info(id, "");
    }
    details
}

fn insert(headers: &mut http::HeaderMap, details: &[u8]) {
    // Base64 is always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&BASE64.encode(details)) {
        headers.insert(DETAILS, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::GET;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;
    use tower::ServiceExt;

    const FALLBACK: &str = "test.v1.Fallback";

    fn request(path: &str, request_id: &str) -> http::Request<()> {
        let mut request = http::Request::builder().uri(path).body(()).unwrap();
        request.extensions_mut().insert(Arc::new(CallContext {
            request_id: request_id.into(),
            ..Default::default()
        }));
        request.extensions_mut().insert(RpcMethod::from_path(path));
        request
    }

    /// Calls a service answering `response()` through the layer.
    async fn rescued(
        path: &str,
        response: impl Fn() -> http::Response<tonic::body::Body> + Clone + Send + 'static,
    ) -> http::Response<tonic::body::Body> {
        let inner = tower::service_fn(move |_: http::Request<()>| {
            let response = response.clone();
            async move { Ok::<_, Infallible>(response()) }
        });
        RescueLayer::new(FALLBACK)
            .layer(inner)
            .oneshot(request(path, "req-1"))
            .await
            .unwrap()
    }

    /// A streaming response: one data frame, then `end` (trailers or an error).
    fn streamed(
        end: Result<Frame<Bytes>, Status>,
    ) -> impl Fn() -> http::Response<tonic::body::Body> + Clone + Send + 'static {
        let end = std::sync::Arc::new(std::sync::Mutex::new(Some(end)));
        move || {
            let end = end.lock().unwrap().take().expect("called once");
            let frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))), end];
            http::Response::new(tonic::body::Body::new(StreamBody::new(
                futures::stream::iter(frames),
            )))
        }
    }

    /// Every frame of a body, data frames dropped; the trailers, if any.
    async fn trailers(response: http::Response<tonic::body::Body>) -> Option<http::HeaderMap> {
        let mut body = response.into_body();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            if let Ok(t) = frame.expect("no body error gets through").into_trailers() {
                trailers = Some(t);
            }
        }
        trailers
    }

    fn status(headers: &http::HeaderMap) -> Status {
        Status::from_header_map(headers).expect("a status")
    }

    #[tokio::test]
    async fn a_trailers_only_error_without_details_gets_error_info_and_request_info() {
        let response = rescued("/things.v1.ThingService/Nope", || {
            Status::unimplemented("").into_http()
        })
        .await;
        let status = status(response.headers());
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "UNIMPLEMENTED");
        assert_eq!(info.domain, "things.v1.ThingService");
        assert_eq!(details.request_info().unwrap().request_id, "req-1");
        // The Status inside agrees with grpc-status and grpc-message, as
        // clients check.
        let inner = tonic_types::Status::decode(status.details()).unwrap();
        assert_eq!(inner.code, Code::Unimplemented as i32);
        assert_eq!(inner.message, "");
    }

    #[tokio::test]
    async fn details_already_there_are_kept_and_given_the_request_id() {
        let response = rescued("/things.v1.ThingService/GetThing", || {
            let mut details = ErrorDetails::with_error_info("ORDER_NOT_FOUND", "x", HashMap::new());
            details.set_resource_info("thing", "t-1", "", "not visible");
            Status::with_error_details(Code::NotFound, "thing not found", details).into_http()
        })
        .await;
        let status = status(response.headers());
        assert_eq!(status.message(), "thing not found");
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "ORDER_NOT_FOUND");
        assert_eq!(details.resource_info().unwrap().resource_name, "t-1");
        assert_eq!(details.request_info().unwrap().request_id, "req-1");
        assert_eq!(status.get_error_details_vec().len(), 3, "nothing doubled");
    }

    #[tokio::test]
    async fn complete_details_are_left_byte_for_byte() {
        let original = {
            let mut details = ErrorDetails::with_error_info("R", "d", HashMap::new());
            details.set_request_info("someone-else", "");
            Status::with_error_details(Code::Aborted, "m", details)
        };
        let sent = original.details().to_vec();
        let response = rescued(crate::testing::REMOVE, move || {
            Status::with_details(Code::Aborted, "m", sent.clone().into()).into_http()
        })
        .await;
        assert_eq!(status(response.headers()).details(), original.details());
    }

    #[tokio::test]
    async fn error_trailers_of_a_stream_are_completed() {
        let mut trailers = http::HeaderMap::new();
        Status::internal("boom").add_header(&mut trailers).unwrap();
        let response = rescued(
            "/things.v1.ThingService/WatchThing",
            streamed(Ok(Frame::trailers(trailers))),
        )
        .await;
        let status = status(&trailers_of(response).await);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "boom");
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "INTERNAL");
        assert_eq!(details.request_info().unwrap().request_id, "req-1");
    }

    async fn trailers_of(response: http::Response<tonic::body::Body>) -> http::HeaderMap {
        trailers(response)
            .await
            .expect("the body ends with trailers")
    }

    #[tokio::test]
    async fn a_body_that_fails_ends_with_its_status_as_trailers() {
        let response = rescued(
            "/things.v1.ThingService/WatchThing",
            streamed(Err(Status::unavailable("gone"))),
        )
        .await;
        let status = status(&trailers_of(response).await);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "gone");
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "UNAVAILABLE"
        );
    }

    #[tokio::test]
    async fn ok_responses_pass_untouched() {
        let mut ok = http::HeaderMap::new();
        Status::ok("").add_header(&mut ok).unwrap();
        let response = rescued(
            "/things.v1.ThingService/WatchThing",
            streamed(Ok(Frame::trailers(ok.clone()))),
        )
        .await;
        assert_eq!(trailers_of(response).await, ok);
        let response = rescued("/things.v1.ThingService/GetThing", || {
            Status::ok("").into_http()
        })
        .await;
        assert!(response.headers().get(DETAILS).is_none());
    }

    #[test]
    fn the_domain_is_the_called_service_unless_the_path_names_none() {
        for service in ["things.v1.ThingService", "grpc.health.v1.Health", "a_b.C9"] {
            assert_eq!(error_domain(service, FALLBACK), service);
        }
        let long = "a.".repeat(100) + "B";
        for junk in ["", "a..b", "1a.B", "a b", "a/b", "é.b", long.as_str()] {
            assert_eq!(error_domain(junk, FALLBACK), FALLBACK, "{junk:?}");
        }
    }

    #[tokio::test]
    async fn an_unknown_path_gets_the_fallback_domain() {
        let response = rescued(&format!("/{}/x", "x".repeat(4096)), || {
            Status::unimplemented("").into_http()
        })
        .await;
        let status = status(response.headers());
        assert_eq!(
            status.get_error_details().error_info().unwrap().domain,
            FALLBACK
        );
    }

    // --- The table: each error a layer fails with, as the client gets it.

    /// What a row of the table must answer.
    struct Row {
        code: Code,
        message: &'static str,
        reason: &'static str,
        metadata: &'static [(&'static str, &'static str)],
        retry: Option<Duration>,
    }

    /// The answer of the layer, over a mock inner service (tower-test),
    /// to a call to `path` that fails with `error`.
    async fn answered(path: &str, error: BoxError) -> http::Response<tonic::body::Body> {
        let (mut svc, mut handle) = tower_test::mock::spawn_layer::<
            http::Request<()>,
            http::Response<tonic::body::Body>,
            _,
        >(RescueLayer::new(FALLBACK));
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request(path, "req-1"));
        let Poll::Ready(Some((_, reply))) = handle.poll_request() else {
            panic!("the call reaches the inner service");
        };
        reply.send_error(error);
        response.await.expect("every error is answered")
    }

    fn check(what: &str, status: &Status, row: &Row) {
        assert_eq!(status.code(), row.code, "{what}");
        assert_eq!(status.message(), row.message, "{what}");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, row.reason, "{what}");
        assert_eq!(info.domain, "things.v1.ThingService", "{what}");
        let metadata: HashMap<String, String> = row
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(info.metadata, metadata, "{what}");
        assert_eq!(
            details.retry_info().map(|r| r.retry_delay),
            row.retry.map(Some),
            "{what}"
        );
        assert_eq!(
            details.request_info().map(|r| r.request_id.as_str()),
            Some("req-1"),
            "{what}"
        );
        // The Status inside agrees with grpc-status and grpc-message, as
        // clients check.
        let inner = tonic_types::Status::decode(status.details()).unwrap();
        assert_eq!(inner.code, row.code as i32, "{what}");
        assert_eq!(inner.message, row.message, "{what}");
    }

    /// Every error the layers fail with, and what the client must get.
    fn table() -> Vec<(&'static str, BoxError, Row)> {
        let minute = Duration::from_secs(60);
        let expired = |set_by, kind| -> BoxError { Box::new(DeadlineExceeded { set_by, kind }) };
        let too_large = "Error, decoded message length too large: found 70000 bytes, \
                         the limit is: 65536 bytes";
        vec![
            (
                "shed",
                Box::new(Overloaded::new()),
                Row {
                    code: Code::ResourceExhausted,
                    message: "server overloaded; retry with backoff",
                    reason: "SERVER_OVERLOADED",
                    metadata: &[],
                    retry: Some(SHED_RETRY_DELAY),
                },
            ),
            (
                "the client's deadline",
                expired(SetBy::Client, RpcKind::Unary),
                Row {
                    code: Code::DeadlineExceeded,
                    message: "deadline exceeded",
                    reason: "DEADLINE_EXCEEDED",
                    metadata: &[],
                    retry: None,
                },
            ),
            (
                "the server's cap on a stream",
                expired(SetBy::ServerCap(minute), RpcKind::ServerStream),
                Row {
                    code: Code::Unavailable,
                    message: "the server ends streams after server.max_timeout_ms = 60000 ms; \
                              open a new stream to continue",
                    reason: "STREAM_TIME_LIMIT",
                    metadata: &[("max_timeout_ms", "60000")],
                    retry: Some(Duration::ZERO),
                },
            ),
            (
                "the server's cap on a unary call",
                expired(SetBy::ServerCap(minute), RpcKind::Unary),
                Row {
                    code: Code::DeadlineExceeded,
                    message: "the server ends calls after server.max_timeout_ms = 60000 ms",
                    reason: "SERVER_TIME_LIMIT",
                    metadata: &[("max_timeout_ms", "60000")],
                    retry: None,
                },
            ),
            (
                "the server's default",
                expired(
                    SetBy::ServerDefault(Duration::from_secs(10)),
                    RpcKind::Unary,
                ),
                Row {
                    code: Code::DeadlineExceeded,
                    message: "the call sent no deadline and ran past the server's default, \
                              server.default_timeout_ms = 10000 ms",
                    reason: "SERVER_TIME_LIMIT",
                    metadata: &[("default_timeout_ms", "10000")],
                    retry: None,
                },
            ),
            (
                "no token",
                Box::new(AuthError::MissingToken),
                Row {
                    code: Code::Unauthenticated,
                    message: "missing bearer token",
                    reason: "MISSING_TOKEN",
                    metadata: &[],
                    retry: None,
                },
            ),
            (
                "an expired token",
                Box::new(AuthError::Expired),
                Row {
                    code: Code::Unauthenticated,
                    message: "token expired",
                    reason: "TOKEN_EXPIRED",
                    metadata: &[],
                    retry: None,
                },
            ),
            (
                "a missing scope",
                Box::new(AuthError::MissingScope("things:read".into())),
                Row {
                    code: Code::PermissionDenied,
                    message: "token lacks scope things:read",
                    reason: "MISSING_SCOPE",
                    metadata: &[("required_scope", "things:read")],
                    retry: None,
                },
            ),
            (
                "a message too large",
                Box::new(MessageTooLarge::from_tonic(too_large).unwrap()),
                Row {
                    code: Code::ResourceExhausted,
                    message: "Error, decoded message length too large: found 70000 bytes, \
                              the limit is: 65536 bytes",
                    reason: "MESSAGE_TOO_LARGE",
                    metadata: &[("max_message_bytes", "65536")],
                    retry: None,
                },
            ),
            (
                "a caller at its quota of calls in flight",
                Box::new(QuotaExceeded::for_test("alice", 5)),
                Row {
                    code: Code::ResourceExhausted,
                    message: "too many calls in flight for this caller: its quota is 5",
                    reason: "CALLER_QUOTA_EXCEEDED",
                    metadata: &[("max_calls_per_caller", "5")],
                    retry: Some(SHED_RETRY_DELAY),
                },
            ),
            (
                "a caller past its rate",
                Box::new(RateExceeded::for_test(
                    "alice",
                    10,
                    20,
                    Duration::from_millis(250),
                )),
                Row {
                    code: Code::ResourceExhausted,
                    message: "too many calls from this caller: its rate is 10 calls a second, \
                              with bursts of 20",
                    reason: "CALLER_RATE_EXCEEDED",
                    metadata: &[
                        ("max_call_rate_per_caller", "10"),
                        ("call_burst_per_caller", "20"),
                    ],
                    retry: Some(Duration::from_millis(250)),
                },
            ),
            (
                "a connection at its quota of calls without a token",
                Box::new(ConnectionQuotaExceeded::for_test(32)),
                Row {
                    code: Code::ResourceExhausted,
                    message: "too many calls without a token in flight on this connection: \
                              its quota is 32",
                    reason: "CONNECTION_QUOTA_EXCEEDED",
                    metadata: &[("max_anonymous_calls_per_connection", "32")],
                    retry: Some(SHED_RETRY_DELAY),
                },
            ),
            (
                "a panic",
                Box::new(Panicked::new("handler bug")),
                Row {
                    code: Code::Internal,
                    message: "internal error",
                    reason: "INTERNAL",
                    metadata: &[],
                    retry: None,
                },
            ),
            (
                "an error nobody expected",
                Box::new(std::io::Error::other("disk on fire")),
                Row {
                    code: Code::Internal,
                    message: "internal error",
                    reason: "INTERNAL",
                    metadata: &[],
                    retry: None,
                },
            ),
            (
                "a bare status",
                Box::new(Status::unavailable("gone")),
                Row {
                    code: Code::Unavailable,
                    message: "gone",
                    reason: "UNAVAILABLE",
                    metadata: &[],
                    retry: None,
                },
            ),
        ]
    }

    #[tokio::test]
    async fn each_error_a_layer_fails_with_is_answered_from_the_table() {
        for (what, error, row) in table() {
            let response = answered(GET, error).await;
            let status = status(response.headers());
            check(what, &status, &row);
        }
    }

    #[tokio::test]
    async fn a_response_body_that_fails_with_a_layers_error_ends_with_its_answer_as_trailers() {
        // Load shedding fails a call, never a body; and tonic would make a
        // status of its own of a body's `Overloaded`, with no source.
        for (what, error, row) in table().into_iter().filter(|(what, ..)| *what != "shed") {
            // As tonic hands a body's error on: inside a Status whose
            // source it is (a bare Status stays itself).
            let status = Status::from_error(error);
            let response =
                rescued("/things.v1.ThingService/WatchThing", streamed(Err(status))).await;
            let trailers = trailers_of(response).await;
            check(what, &self::status(&trailers), &row);
        }
    }

    #[tokio::test]
    async fn an_error_is_found_down_its_chain_of_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("while checking the call")]
        struct Wrapped(#[source] AuthError);
        let response = answered(GET, Box::new(Wrapped(AuthError::BadSignature))).await;
        let status = status(response.headers());
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "token signature invalid");
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "BAD_SIGNATURE"
        );
    }

    #[tokio::test]
    async fn an_error_for_a_path_naming_no_service_gets_the_fallback_domain() {
        let response = answered("/a..b/x", Box::new(Overloaded::new())).await;
        let status = status(response.headers());
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_error_details().error_info().unwrap().domain,
            FALLBACK
        );
    }
}
