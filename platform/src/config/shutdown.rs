//! The `shutdown` section: how long the server stays a lame duck.

use serde::{Deserialize, Serialize};
use serde_with::{DurationSeconds, serde_as};
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Lame-duck time: health says NOT_SERVING but calls are still served
    /// (`drain_secs`).
    #[serde(rename = "drain_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub drain: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(5),
        }
    }
}
