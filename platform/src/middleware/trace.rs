//! One span per call, following OpenTelemetry's RPC conventions
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), named
//! `package.Service/Method`. A W3C `traceparent` in the metadata makes the
//! span a child of the caller's, so the call joins the caller's trace. The
//! span lasts until the response's trailers (the end of a stream), and its
//! status code is read from them.
//!
//! Made by [`super::observe`] just after the request id (the span carries
//! it), and every poll of the layers inside and the handler runs inside it,
//! so every log line of the call does.

use super::RpcMethod;
use crate::telemetry::CallTelemetry;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Records the final status on the span, then lets it end.
pub(super) struct SpanEnd(tracing::Span);

impl SpanEnd {
    pub(super) fn finish(self, code: Code) {
        self.0.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            self.0.record("otel.status_code", "ERROR");
        }
    }
}

/// The call's spans: the log span, which carries only the request id into
/// log lines, and the trace span, its child, with the OpenTelemetry
/// attributes, which exists only while an exporter wants it (see
/// `telemetry::init`; names and target are matched there: RPC_LOG_SPAN,
/// RPC_TRACE_SPAN). A `traceparent` in the request makes the trace span a
/// child of the caller's.
pub(super) fn spans(
    request: &http::Request<tonic::body::Body>,
    method: &RpcMethod,
    request_id: &str,
    telemetry: &CallTelemetry,
) -> (tracing::Span, tracing::Span, SpanEnd) {
    // `request_id` is a `&str`, so it is recorded as a string, which the
    // log copies as it is, rather than formatted (`%`) into its escaper.
    let log_span = if telemetry.log_spans {
        tracing::info_span!("rpc", request_id)
    } else {
        // The JSON log format reads the request id from the call's scope
        // (`super::call_scope`) instead.
        tracing::Span::none()
    };
    if !telemetry.trace_spans {
        return (
            log_span,
            tracing::Span::none(),
            SpanEnd(tracing::Span::none()),
        );
    }
    let span = tracing::info_span!(
        parent: &log_span,
        "grpc",
        otel.name = %format_args!("{}/{}", method.service, method.name),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %method.service,
        rpc.method = %method.name,
        rpc.grpc.status_code = tracing::field::Empty,
        request_id,
    );
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
    }
    let end = SpanEnd(span.clone());
    (log_span, span, end)
}

/// The trace id of `span`, when OpenTelemetry is recording it.
pub(crate) fn trace_id_of(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
