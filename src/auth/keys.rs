//! Token-verification keys and where they come from.

use super::AuthError;
use jsonwebtoken::{Algorithm, DecodingKey, jwk::JwkSet};
use std::path::{Path, PathBuf};

/// Where verification keys come from (`auth.public_keys`, `auth.jwks_file`,
/// `auth.hs256_secret`).
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A PEM public key (EC, RSA or Ed25519); its `kid` is the file stem.
    PemFile(PathBuf),
    /// A JSON Web Key Set; each key's `kid` is its own.
    JwksFile(PathBuf),
    /// A shared HS256 secret (development only).
    Hs256Secret(Vec<u8>),
}

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
    Jwks { path: PathBuf, reason: String },
    #[error("no verification keys configured")]
    Empty,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys in force at one moment.
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn load(sources: &[KeySource]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for source in sources {
            match source {
                KeySource::PemFile(path) => keys.push(pem_key(path)?),
                KeySource::JwksFile(path) => keys.extend(jwks_keys(path)?),
                KeySource::Hs256Secret(secret) => keys.push(Key {
                    kid: None,
                    key: DecodingKey::from_secret(secret),
                }),
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// The keys that may have signed a token with this `kid` and `alg`: the
    /// key named by `kid`, or (no `kid`) every key of the algorithm's family.
    /// A key of another family never qualifies: that is algorithm confusion.
    pub(super) fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<&DecodingKey>, AuthError> {
        let fits = |k: &&Key| k.key.family().algorithms().contains(&alg);
        let found: Vec<&DecodingKey> = match kid {
            Some(kid) => {
                let named: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return Err(AuthError::UnknownKey);
                }
                let fitting: Vec<&DecodingKey> =
                    named.into_iter().filter(fits).map(|k| &k.key).collect();
                if fitting.is_empty() {
                    return Err(AuthError::AlgorithmNotAllowed);
                }
                fitting
            }
            None => self.keys.iter().filter(fits).map(|k| &k.key).collect(),
        };
        if found.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        Ok(found)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_key(path: &Path) -> Result<Key, KeyError> {
    let pem = read(path)?;
    let key = DecodingKey::from_ec_pem(&pem)
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .or_else(|_| DecodingKey::from_rsa_pem(&pem))
        .map_err(|_| KeyError::Pem {
            path: path.to_owned(),
        })?;
    let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    Ok(Key { kid, key })
}

fn jwks_keys(path: &Path) -> Result<Vec<Key>, KeyError> {
    let bad = |reason: String| KeyError::Jwks {
        path: path.to_owned(),
        reason,
    };
    let set: JwkSet = serde_json::from_slice(&read(path)?).map_err(|e| bad(e.to_string()))?;
    set.keys
        .iter()
        .map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
            Ok(Key {
                kid: jwk.common.key_id.clone(),
                key,
            })
        })
        .collect()
}
