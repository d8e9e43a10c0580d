//! Why a key source could not be read: shared by the key sets (files,
//! JWKS documents) and the JWKS fetcher, so neither depends on the other
//! for it (the key sets use the fetcher; the fetcher uses only this).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM public key of type EC, RSA or Ed25519")]
    Pem { path: PathBuf },
    #[error("{path}: invalid JWKS: {reason}")]
    Jwks { path: String, reason: String },
    #[error("cannot fetch the JWKS at {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("auth.jwks_ca {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("no verification keys configured")]
    Empty,
}
