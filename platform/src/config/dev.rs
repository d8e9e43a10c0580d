//! The `dev` section: development certificates and tokens, refused in
//! production.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Development conveniences (refused in production).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevSettings {
    /// Where `dev-certs` writes, and `dev-token` reads, the development CA,
    /// server certificate and token-signing key.
    pub certs_dir: PathBuf,
    /// Create `certs_dir` on start when it is missing.
    pub generate_certs: bool,
    pub token_issuer: String,
    pub token_audience: String,
}

impl Default for DevSettings {
    fn default() -> Self {
        Self {
            certs_dir: PathBuf::from("certs/dev"),
            generate_certs: false,
            // The service's configuration files name its own.
            token_issuer: "dev".into(),
            token_audience: "dev".into(),
        }
    }
}

impl DevSettings {
    /// Adds this section's problems, each naming its key.
    pub fn validate(&self, production: bool, problems: &mut Vec<String>) {
        if production && self.generate_certs {
            problems.push("dev.generate_certs: refused in production".into());
        }
    }
}
