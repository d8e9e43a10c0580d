//! The `admin` section: the plaintext port for probes and metrics, and how
//! often readiness runs the service's check.

use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, serde_as};
use std::net::SocketAddr;
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    pub addr: SocketAddr,
    /// How often readiness runs the service's check (`check_interval_ms`).
    #[serde(rename = "check_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub check_interval: Duration,
    /// How long one check may take before it counts as failed
    /// (`check_timeout_ms`).
    #[serde(rename = "check_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub check_timeout: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            check_interval: Duration::from_millis(500),
            check_timeout: Duration::from_millis(500),
        }
    }
}

impl AdminSettings {
    /// Adds this section's problems, each naming its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.check_interval.is_zero() {
            problems.push("admin.check_interval_ms: must be more than 0".into());
        }
        if self.check_timeout.is_zero() {
            problems.push("admin.check_timeout_ms: must be more than 0".into());
        }
    }
}
