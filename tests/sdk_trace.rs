//! The SDK sends the current span's context as W3C `traceparent`, and the
//! server continues that trace: the access-log event of the call carries the
//! caller's trace id. Its own test binary, because it installs a subscriber.

mod common;

use common::*;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Keeps the `trace_id` of every access-log event.
#[derive(Clone, Default)]
struct AccessTraceIds(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessTraceIds {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "access" {
            return;
        }
        struct TraceId(Option<String>);
        impl Visit for TraceId {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "trace_id" {
                    self.0 = Some(value.to_owned());
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "trace_id" {
                    self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
                }
            }
        }
        let mut visitor = TraceId(None);
        event.record(&mut visitor);
        self.0.lock().unwrap().push(visitor.0.unwrap_or_default());
    }
}

#[tokio::test]
async fn the_callers_span_context_reaches_the_server_as_traceparent() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let ids = AccessTraceIds::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(ids.clone());
    // The test's runtime is single-threaded: client and server both run here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(Backend::sqlite()).await;
    let alice = server.alice().await;
    let span = tracing::info_span!("checkout");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    {
        use tracing::Instrument;
        alice
            .get_order("missing")
            .instrument(span)
            .await
            .unwrap_err();
    }
    server.stop().await;
    let seen = ids.0.lock().unwrap().clone();
    assert!(
        seen.contains(&trace_id),
        "the server logged the caller's trace {trace_id}: {seen:?}"
    );
}
