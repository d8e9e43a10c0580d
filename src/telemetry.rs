//! Logging: human-readable in development, one JSON object per line in
//! production (`telemetry.log_format`), filtered by `telemetry.log_level`
//! (an `EnvFilter` directive; `RUST_LOG` overrides it).

use crate::config::{LogFormat, TelemetrySettings};
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

use crate::middleware::metrics::GrpcMetrics;
use crate::store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// Every metric the service exports on `admin.addr/metrics`.
pub struct Metrics {
    registry: Registry,
    pub grpc: GrpcMetrics,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    tls_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::register(&mut registry);
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let pool_max = Gauge::default();
        let tls_expiry = Gauge::default();
        registry.register(
            "orders_db_pool_connections",
            "Database connections by state (idle, in_use)",
            pool_connections.clone(),
        );
        registry.register(
            "orders_db_pool_max_connections",
            "Largest size of the database connection pool",
            pool_max.clone(),
        );
        registry.register(
            "orders_tls_cert_expiry_timestamp_seconds",
            "When the serving TLS certificate expires (Unix seconds); 0 without TLS",
            tls_expiry.clone(),
        );
        Self {
            registry,
            grpc,
            pool_connections,
            pool_max,
            tls_expiry,
        }
    }

    pub fn set_tls_expiry(&self, unix_seconds: i64) {
        self.tls_expiry.set(unix_seconds);
    }

    /// The Prometheus/OpenMetrics text, with gauges read now.
    pub fn render(&self, store: &dyn Store) -> String {
        let pool = store.pool_stats();
        self.pool_max.set(i64::from(pool.max));
        self.pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(pool.idle));
        self.pool_connections
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(i64::from(pool.in_use));
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        text
    }
}
