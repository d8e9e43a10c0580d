//! Logs, traces and metrics.
//!
//! - Logs: human-readable in development, one JSON object per line in
//!   production (`telemetry.log_format`), filtered by `telemetry.log_level`
//!   (an `EnvFilter` directive; `RUST_LOG` overrides it).
//! - Traces: the spans of `middleware::trace`, exported over OTLP/gRPC when
//!   `telemetry.otlp_endpoint` is set.
//! - Metrics: [`Metrics`], rendered on the admin port.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The `telemetry` section of the configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    pub otlp_endpoint: Option<String>,
}

impl TelemetrySettings {
    /// Adds this section's problems, each naming its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            problems.push(format!(
                "telemetry.log_level: {:?} is not a log filter",
                self.log_level
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(format!(
                "telemetry.otlp_endpoint: {endpoint:?} is not an http:// or https:// URL"
            ));
        }
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            otlp_endpoint: None,
        }
    }
}

/// Keeps trace export running; [`TelemetryGuard::shutdown`] flushes it.
#[derive(Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    /// Flushes the log lines still queued for stdout when dropped.
    logs: Option<crate::log_writer::LogGuard>,
    calls: CallTelemetry,
}

impl TelemetryGuard {
    /// What the installed telemetry asks of each call: give it to the
    /// server (`ServerBuilder::telemetry`).
    pub fn calls(&self) -> CallTelemetry {
        self.calls.clone()
    }

    /// Sends the spans still buffered (bounded by the exporter's timeout),
    /// then writes out the queued log lines.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
        drop(self.logs);
    }
}

/// The name of the span that carries a call's OpenTelemetry attributes
/// (`middleware::trace`); only the trace exporter sees it.
pub(crate) const RPC_TRACE_SPAN: &str = "grpc";
/// The name of the span that carries a call's `request_id` into its log
/// lines; only the log writer sees it.
pub(crate) const RPC_LOG_SPAN: &str = "rpc";
/// Where both are made.
const RPC_SPAN_TARGET: &str = "grpc_platform::middleware::trace";

/// What the process's telemetry asks of each call, handed to the layers
/// that make a call's spans and its access-log line (no process globals:
/// two servers in one process, or tests with subscribers of their own, each
/// get what they were built with).
///
/// - `trace_spans`: whether a call's trace span may be wanted: only when
///   [`init`] installed an exporter. Without one, the per-layer filters
///   would keep the span from every layer, but tracing would still build,
///   clone and close it in the registry for each call, so it is not made at
///   all.
/// - `log_spans`: whether a call's log span (the one carrying its request
///   id into log lines) is made. Not when [`init`] installed the JSON
///   format: that reads the request id from the call's scope
///   (`middleware::call_scope`), far cheaper.
/// - `access_log`: where access lines go directly when the logs are
///   [`init`]'s JSON lines (`log_json::AccessLine`); otherwise each is an
///   ordinary `tracing` event.
#[derive(Clone)]
pub struct CallTelemetry {
    pub(crate) trace_spans: bool,
    pub(crate) log_spans: bool,
    pub(crate) access_log: Option<crate::log_writer::LogWriter>,
}

/// For a subscriber installed by someone else (a test, an embedding
/// program): every span is made and the access log is a `tracing` event,
/// so whatever that subscriber wants, it gets.
impl Default for CallTelemetry {
    fn default() -> Self {
        Self {
            trace_spans: true,
            log_spans: true,
            access_log: None,
        }
    }
}

fn is_call_span(meta: &tracing::Metadata<'_>, name: &str) -> bool {
    meta.is_span() && meta.name() == name && meta.target() == RPC_SPAN_TARGET
}

/// The log filter: `RUST_LOG` when set and valid, else `telemetry.log_level`.
///
/// rustls warns about every ClientHello with an odd server name (an IP
/// address, as Node's gRPC client sends when dialled by address), before
/// any authentication: anyone could fill the logs with them. Unless the
/// filter names rustls itself, its handshake-message module logs errors
/// only.
fn log_filter(rust_log: Option<&str>, log_level: &str) -> EnvFilter {
    let spec = rust_log
        .filter(|spec| EnvFilter::try_new(spec).is_ok())
        .unwrap_or(log_level);
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if spec.contains("rustls") {
        return filter;
    }
    filter.add_directive(
        "rustls::msgs::handshake=error"
            .parse()
            .expect("a valid directive"),
    )
}

/// Installs the global subscriber. Call inside the Tokio runtime (the OTLP
/// exporter's channel lives there). A second call (tests) installs nothing.
/// `service_name` names the process in exported traces (`service.name`).
pub fn init(
    settings: &TelemetrySettings,
    service_name: &'static str,
) -> anyhow::Result<TelemetryGuard> {
    let filter = log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        &settings.log_level,
    );
    // Lossless and batched: see `crate::log_writer`.
    let (stdout, logs_guard) = crate::log_writer::start(std::io::stdout())?;
    let direct_access = stdout.clone();
    // Each layer sees only the call span meant for it: the logs do not
    // format the OpenTelemetry attributes into every line's span context (and
    // again when the status is recorded); and with no exporter configured,
    // nobody wants the trace span, so tracing skips it.
    let logs = match settings.log_format {
        LogFormat::Json => fmt::layer()
            .fmt_fields(crate::log_json::JsonFields)
            .event_format(crate::log_json::JsonEvents)
            .with_writer(stdout)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(stdout).boxed(),
    }
    .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
        !is_call_span(meta, RPC_TRACE_SPAN)
    }));
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(endpoint, service_name)?),
        None => None,
    };
    // Filtered even when absent: an absent (`None`) layer reports interest
    // in everything, so without the filter the registry would make every
    // call's trace span (eight fields, one formatted) for nobody. With the
    // filter saying no when there is no exporter, the span is never made.
    let exporting = provider.is_some();
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)))
        .with_filter(tracing_subscriber::filter::filter_fn(move |meta| {
            exporting && !is_call_span(meta, RPC_LOG_SPAN)
        }));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    let json = settings.log_format == LogFormat::Json;
    let calls = if installed {
        CallTelemetry {
            trace_spans: exporting,
            log_spans: !json,
            access_log: json.then_some(direct_access),
        }
    } else {
        CallTelemetry::default()
    };
    Ok(TelemetryGuard {
        provider: provider.filter(|_| installed),
        logs: installed.then_some(logs_guard),
        calls,
    })
}

fn tracer_provider(
    endpoint: &str,
    service_name: &'static str,
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            handle: tokio::runtime::Handle::current(),
        })
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build(),
        )
        .build())
}

/// Runs each export as a task on the server's Tokio runtime. The SDK's batch
/// processor exports from a plain OS thread, where tonic's HTTP/2 client has
/// no reactor and panics ("there is no reactor running"); awaiting a
/// `JoinHandle` works from any thread.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    handle: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.handle.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.shutdown_with_timeout(timeout),
            None => Ok(()),
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

use crate::middleware::metrics::GrpcMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric the server exports on `admin.addr/metrics`: the gRPC
/// server metrics (go-grpc-prometheus names), the serving certificate's
/// expiry, and whatever the service registers with
/// [`register_collector`](Self::register_collector), read at each scrape.
pub struct Metrics {
    registry: Registry,
    pub grpc: GrpcMetrics,
    tls_expiry: Gauge,
}

impl Metrics {
    /// `prefix` starts the names of the platform's metrics that are not
    /// gRPC's own (`{prefix}_tls_cert_expiry_timestamp_seconds`): the
    /// service's name, as its dashboards and alerts know it.
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::register(&mut registry);
        let tls_expiry = Gauge::default();
        registry.register(
            format!("{prefix}_tls_cert_expiry_timestamp_seconds"),
            "When the serving TLS certificate expires (Unix seconds); 0 without TLS",
            tls_expiry.clone(),
        );
        Self {
            registry,
            grpc,
            tls_expiry,
        }
    }

    /// Adds the service's own metrics, encoded at each scrape from what
    /// the collector reads then (a pool's gauges, a store's counters).
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    pub fn set_tls_expiry(&self, unix_seconds: i64) {
        self.tls_expiry.set(unix_seconds);
    }

    /// The Prometheus/OpenMetrics text, collectors read now.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        text
    }
}

#[cfg(test)]
mod filter_tests {
    use super::log_filter;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing_subscriber::layer::SubscriberExt;

    /// How many of a rustls handshake warning and an ordinary warning pass
    /// `filter`.
    fn passed(filter: tracing_subscriber::EnvFilter) -> usize {
        struct Count(Arc<AtomicUsize>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
            fn on_event(
                &self,
                _: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(Count(count.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension");
            tracing::warn!(target: "grpc_platform::serve", "something else");
        });
        count.load(Ordering::SeqCst)
    }

    #[test]
    fn a_clients_odd_server_name_is_not_a_warning_unless_rustls_is_asked_for() {
        assert_eq!(passed(log_filter(None, "info")), 1);
        assert_eq!(passed(log_filter(Some("warn"), "info")), 1);
        assert_eq!(passed(log_filter(Some("warn,rustls=warn"), "info")), 2);
        assert_eq!(passed(log_filter(None, "info,rustls=debug")), 2);
    }
}
