//! The tower stack every call passes through, one layer per concern.
//!
//! Order, outermost first (each file says why it sits where it does):
//!
//! Above it all, `crate::web::ByProtocol` sends a gRPC call straight in
//! and any other request through the browser layers first (CORS, Connect,
//! gRPC-Web), which turn it into the gRPC call it means; both paths then
//! take the same stack.
//!
//! 0. `grpc_only`: what is not a gRPC request (not `POST`, or not an
//!    `application/grpc` content type) is answered HTTP 405 or 415 and goes
//!    no further.
//! 1. `observe`: names the call (`request_id`) before anything can log
//!    about it, opens its span (`trace`, joining the caller's trace) so
//!    every log line below happens inside it, and sees every outcome,
//!    including refusals by the layers below, with the status read from the
//!    trailers, for the `metrics` and the `access_log`.
//! 2. `rescue`: the one place errors become answers. No layer below
//!    answers a call it refuses: each fails it with its own typed error
//!    (`Err(BoxError)`, named below), which rescue looks up in its table
//!    and answers with a `google.rpc.Status` (details). It also completes
//!    the details of error statuses the handlers or tonic answered with.
//! 3. `concurrency`: sheds load before any work is done (a slot of the
//!    server's concurrency limit, or none, never a wait; health and
//!    reflection go around it): tower's `Overloaded`.
//! 4. [`deadline`]: the budget covers authentication and the handler:
//!    [`deadline::DeadlineExceeded`], from the call or from its stream.
//! 5. `auth` (in `crate::auth`): only authenticated calls reach handlers:
//!    `crate::auth::AuthError`.
//! 6. `caller_quota`: each subject's calls in flight, out of the server's,
//!    and its rate; calls without a subject, in flight per connection:
//!    `caller_quota::QuotaExceeded`, `caller_quota::RateExceeded`,
//!    `caller_quota::ConnectionQuotaExceeded`.
//! 7. `message_size`: metadata over the limit is
//!    `message_size::MetadataTooLarge`; tonic's answer to an over-limit request message
//!    becomes `message_size::MessageTooLarge`. It holds each request body to
//!    its method's limit, the server's budget for messages in transit and
//!    the read timeout (`request_body`): `MessageTooLarge`,
//!    `request_body::MemoryBusy`, `request_body::ReadTimeout`.
//! 8. `panic_guard`: closest to the handlers: a panic becomes
//!    `panic_guard::Panicked`, answered INTERNAL.
//!
//! The client certificate's subject (mutual TLS) is no layer: the
//! connection loop reads it once per connection and puts it in every
//! request's extensions (`crate::tls::identity`).
//!
//! Shared here: the method table (unary or streaming, for labels and
//! deadlines), the per-call [`CallContext`], and [`ObservedBody`], which
//! counts gRPC messages and reports the final `grpc-status` of a response.

pub(crate) mod access_log;
pub(crate) mod call_scope;
pub(crate) mod caller_quota;
pub mod commit;
pub(crate) mod concurrency;
pub mod deadline;
pub(crate) mod grpc_only;
pub(crate) mod message_size;
pub(crate) mod metrics;
pub(crate) mod observe;
pub(crate) mod panic_guard;
pub(crate) mod request_body;
pub(crate) mod request_id;
pub(crate) mod rescue;
pub(crate) mod trace;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;

pub use crate::methods::{Method, MethodTable, RpcKind};

/// The method a call is for, as the [`MethodTable`] knows it: put in the
/// request's extensions by `observe` (the outermost layer), read by the
/// layers below. Cheap to clone (one reference count).
#[derive(Debug, Clone)]
pub struct RpcMethod(pub Arc<Method>);

impl std::ops::Deref for RpcMethod {
    type Target = Method;

    fn deref(&self) -> &Method {
        &self.0
    }
}

impl RpcMethod {
    /// The method at `path` in `table` (a path nobody serves resolves to a
    /// unary method that needs a token).
    pub fn resolve(table: &MethodTable, path: &str) -> Self {
        RpcMethod(table.resolve(path))
    }

    /// A layer used without `observe` above it (its unit tests) knows no
    /// table: every path is then an unknown, unary method that needs a token.
    pub fn from_path(path: &str) -> Self {
        RpcMethod(Arc::new(Method::unknown(path)))
    }
}

/// What the layers learn about a call, shared through request extensions:
/// the request id (set by the outermost layer), the authenticated subject
/// (set by auth, read by the access log, which sits outside auth) and the
/// call's commit point (passed by its handler, read by the observe layer
/// when the client goes away).
#[derive(Debug, Default)]
pub struct CallContext {
    pub request_id: String,
    pub subject: OnceLock<String>,
    pub commit: commit::CommitPoint,
    /// The call's place in its caller's quota, or in its connection's for
    /// a call without a subject (`caller_quota`), given back when the last
    /// holder of this context lets go: the end of the call.
    pub(crate) quota: OnceLock<caller_quota::Slot>,
}

pub use crate::codes::go_name as code_name;

/// The header names the layers look up on every call, made once: a lookup
/// by `&str` parses and checks the name every time.
pub(crate) mod names {
    use http::HeaderName;

    pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub(crate) static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
    pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static(super::request_id::HEADER);
}

/// `grpc-status` from a header map (trailers, or the headers of a
/// trailers-only response).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(&names::GRPC_STATUS)?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Counts length-prefixed gRPC messages in a byte stream (a message may span
/// data frames, and a frame may hold several messages). Hand-written: it is
/// the 5-byte framing of the gRPC spec, which no crate exposes on its own.
#[derive(Debug, Default)]
pub struct MessageCounter {
    /// Bytes of the current message's body still to skip.
    remaining: u64,
    /// Prefix bytes of the next message seen so far (flag + 4-byte length).
    prefix: [u8; 5],
    prefix_len: usize,
    pub messages: u64,
}

impl MessageCounter {
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.messages;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len() as u64) as usize;
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                self.messages += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                self.prefix_len = 0;
            }
        }
        self.messages - before
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub code: Code,
    pub started: Instant,
}

/// Callbacks of an [`ObservedBody`].
pub trait Observer: Send + 'static {
    /// Some gRPC messages went out.
    fn messages_sent(&mut self, _count: u64) {}
    /// The response ended with `code`, which the client was sent.
    fn finished(self: Box<Self>, code: Code);
    /// The client went away (it cancelled, or its connection closed) before
    /// the response ended.
    fn client_gone(self: Box<Self>) {
        self.finished(Code::Cancelled);
    }
}

/// A response body that reports messages sent and the final status. The
/// status of a streaming call is only known from its trailers; a body dropped
/// before its end means the client cancelled.
pub struct ObservedBody {
    inner: tonic::body::Body,
    counter: MessageCounter,
    observer: Option<Box<dyn Observer>>,
}

impl ObservedBody {
    /// Wraps `response`'s body; a trailers-only response (status in the
    /// headers) is reported at once.
    pub fn wrap(
        response: http::Response<tonic::body::Body>,
        observer: Box<dyn Observer>,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = grpc_status(response.headers()) {
            observer.finished(code);
            return response;
        }
        if response.body().is_end_stream() {
            // No trailers will follow: not a valid gRPC response.
            observer.finished(Code::Unknown);
            return response;
        }
        response.map(|inner| {
            tonic::body::Body::new(ObservedBody {
                inner,
                counter: MessageCounter::default(),
                observer: Some(observer),
            })
        })
    }

    fn finish(&mut self, code: Code) {
        if let Some(observer) = self.observer.take() {
            observer.finished(code);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.counter.feed(data.chunk());
                    if n > 0
                        && let Some(o) = this.observer.as_mut()
                    {
                        o.messages_sent(n);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.finish(status.code()),
            // Ended without trailers: not a valid gRPC response.
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Dropped before the end: the client cancelled or the connection died.
        if let Some(observer) = self.observer.take() {
            observer.client_gone();
        }
    }
}

/// Reports a call whose response future was dropped before it produced a
/// response (client cancel during a unary handler).
pub struct FinishOnDrop(pub Option<Box<dyn Observer>>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(observer) = self.0.take() {
            observer.client_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn counts_messages_across_and_within_chunks() {
        let mut bytes = frame(3);
        bytes.extend(frame(0));
        bytes.extend(frame(10));
        let mut c = MessageCounter::default();
        assert_eq!(c.feed(&bytes), 3);
        let mut c = MessageCounter::default();
        let total: u64 = bytes.chunks(2).map(|chunk| c.feed(chunk)).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn served_methods_are_classified_from_their_descriptors() {
        use crate::testing::{GET, PUT, SYNC, WATCH, table};
        let kind = |path: &str| RpcMethod::resolve(table(), path).kind;
        assert_eq!(kind(GET), RpcKind::Unary);
        assert_eq!(kind(PUT), RpcKind::ClientStream);
        assert_eq!(kind(WATCH), RpcKind::ServerStream);
        assert_eq!(kind(SYNC), RpcKind::BidiStream);
        assert_eq!(kind("/grpc.health.v1.Health/Watch"), RpcKind::ServerStream);
        assert_eq!(
            kind("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            RpcKind::BidiStream
        );
        let m = RpcMethod::resolve(table(), "/grpc.health.v1.Health/Check");
        assert_eq!(
            (&*m.service, &*m.name, m.kind, m.platform),
            ("grpc.health.v1.Health", "Check", RpcKind::Unary, true)
        );
        assert!(!RpcMethod::resolve(table(), GET).platform);
    }
}
