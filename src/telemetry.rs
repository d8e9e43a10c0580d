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
