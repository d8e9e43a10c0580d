//! The `tls` section: the server's certificate and key, the client CA of
//! mutual TLS, and how often the files are checked for a rotation.

use serde::{Deserialize, Serialize};
use serde_with::{DurationSeconds, serde_as};
use std::path::PathBuf;
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub enabled: bool,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// How often the files are re-read for a rotation (`reload_secs`).
    #[serde(rename = "reload_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            cert: None,
            key: None,
            client_ca: None,
            reload_interval: Duration::from_secs(30),
        }
    }
}

impl TlsSettings {
    /// Adds this section's problems, each naming its key. `production`:
    /// plaintext is refused. `generated`: the development certificates are
    /// made at start-up, so files that do not exist yet are fine.
    pub fn validate(&self, production: bool, generated: bool, problems: &mut Vec<String>) {
        if !self.enabled {
            if production {
                problems.push("tls.enabled: plaintext is refused in production".into());
            }
            return;
        }
        if self.reload_interval.is_zero() {
            problems.push("tls.reload_secs: must be more than 0".into());
        }
        for (key, path) in [("tls.cert", &self.cert), ("tls.key", &self.key)] {
            match path {
                None => problems.push(format!("{key}: required when tls.enabled = true")),
                Some(p) if !p.is_file() && !generated => {
                    problems.push(format!("{key}: cannot read {}", p.display()))
                }
                _ => {}
            }
        }
        if let Some(ca) = &self.client_ca
            && !ca.is_file()
        {
            problems.push(format!("tls.client_ca: cannot read {}", ca.display()));
        }
    }
}
