//! One span per call, following OpenTelemetry's RPC conventions
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), named
//! `package.Service/Method`. A W3C `traceparent` in the metadata makes the
//! span a child of the caller's, so the call joins the caller's trace. The
//! span lasts until the response's trailers (the end of a stream), and its
//! status code is read from them.
//!
//! Just inside request ids (the span carries the id) and outside everything
//! else, so every log line of the call happens inside it.

use super::{CallContext, Observer, RpcMethod};
use futures::future::BoxFuture;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
}

/// Records the final status on the span, then lets it end.
struct SpanEnd(tracing::Span);

impl Observer for SpanEnd {
    fn finished(self: Box<Self>, code: Code) {
        self.0.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            self.0.record("otel.status_code", "ERROR");
        }
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for Trace<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = request
            .extensions()
            .get::<RpcMethod>()
            .cloned()
            .unwrap_or_else(|| RpcMethod::from_path(request.uri().path()));
        let request_id = request
            .extensions()
            .get::<Arc<CallContext>>()
            .map(|c| c.request_id.clone())
            .unwrap_or_default();
        // Two spans (see `telemetry::init`): the log span carries only the
        // request id into log lines; the trace span, its child, carries the
        // OpenTelemetry attributes and exists only while an exporter wants it.
        // (Names and target are matched in `telemetry`: RPC_LOG_SPAN, RPC_TRACE_SPAN.)
        let log_span = tracing::info_span!("rpc", request_id = %request_id);
        let span = tracing::info_span!(
            parent: &log_span,
            "grpc",
            otel.name = %format_args!("{}/{}", method.service, method.method),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %method.service,
            rpc.method = %method.method,
            rpc.grpc.status_code = tracing::field::Empty,
            request_id = %request_id,
        );
        let parent = TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
        let end = Box::new(SpanEnd(span.clone()));
        // Every poll of the call (the inner layers and the handler) runs inside the span.
        Box::pin(
            super::call_observed(&mut self.inner, request, end)
                .instrument(span)
                .instrument(log_span),
        )
    }
}

/// The trace id of the current span, when OpenTelemetry is recording.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
