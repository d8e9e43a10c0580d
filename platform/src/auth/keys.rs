//! Token-verification keys and where they come from.
//!
//! A [`KeySet`] is the keys in force at one moment; [`Sources`] re-reads the
//! configured [`KeySource`]s and builds a new set when what they hold has
//! changed, keeping each source's last good keys when a read fails.

use super::AuthError;
use super::fetch::JwksUrl;
use super::key_error::KeyError;
use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where verification keys come from (`auth.public_keys`, `auth.jwks_file`,
/// `auth.jwks_url`, `auth.hs256_secret`).
#[derive(Clone)]
pub enum KeySource {
    /// A PEM public key (EC, RSA or Ed25519); its `kid` is the file stem.
    PemFile(PathBuf),
    /// A JSON Web Key Set; each key's `kid` is its own.
    JwksFile(PathBuf),
    /// A JSON Web Key Set served over HTTPS.
    JwksUrl(JwksUrl),
    /// A shared HS256 secret (development only).
    Hs256Secret(Vec<u8>),
}

// By hand, not derived: the derived `Debug` would print the HS256 secret.
impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::PemFile(p) => f.debug_tuple("PemFile").field(p).finish(),
            KeySource::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
            KeySource::JwksUrl(u) => f.debug_tuple("JwksUrl").field(&u.display()).finish(),
            KeySource::Hs256Secret(_) => f.write_str("Hs256Secret([redacted])"),
        }
    }
}

impl KeySource {
    /// Whether reading the source again may give other keys.
    fn changes(&self) -> bool {
        !matches!(self, KeySource::Hs256Secret(_))
    }

    /// The source's current bytes (blocking file reads for the synchronous
    /// [`KeySet::load`]).
    fn read_blocking(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            KeySource::PemFile(path) | KeySource::JwksFile(path) => read(path),
            KeySource::Hs256Secret(secret) => Ok(secret.clone()),
            KeySource::JwksUrl(url) => Err(KeyError::Fetch {
                url: url.display(),
                reason: "a JWKS URL is read asynchronously (Verifier::from_sources)".into(),
            }),
        }
    }

    async fn read(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            KeySource::PemFile(path) | KeySource::JwksFile(path) => tokio::fs::read(path)
                .await
                .map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                }),
            KeySource::JwksUrl(url) => url.fetch().await,
            KeySource::Hs256Secret(secret) => Ok(secret.clone()),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<Vec<Key>, KeyError> {
        match self {
            KeySource::PemFile(path) => Ok(vec![pem_key(path, bytes)?]),
            KeySource::JwksFile(path) => jwks_keys(&path.display().to_string(), bytes),
            KeySource::JwksUrl(url) => jwks_keys(&url.display(), bytes),
            KeySource::Hs256Secret(secret) => Ok(vec![Key {
                kid: None,
                key: DecodingKey::from_secret(secret),
            }]),
        }
    }
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys in force at one moment.
pub struct KeySet {
    keys: Vec<Key>,
    /// Set when the set is installed in a verifier; cached verdicts made
    /// with another generation are not used.
    pub(super) generation: u64,
}

impl KeySet {
    /// Reads every source once (files only: a JWKS URL needs
    /// [`super::Verifier::from_sources`]).
    pub fn load(sources: &[KeySource]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for source in sources {
            keys.extend(source.parse(&source.read_blocking()?)?);
        }
        Self::new(keys)
    }

    fn new(keys: Vec<Key>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self {
            keys,
            generation: 0,
        })
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

/// One source and the keys it last gave.
struct SourceState {
    source: KeySource,
    /// SHA-256 of the bytes the keys were parsed from, and the keys.
    last_good: Option<([u8; 32], Vec<Key>)>,
}

/// The configured sources with their last good keys, for refreshing.
pub(super) struct Sources {
    states: Vec<SourceState>,
    /// SHA-256 over every source's digest: the identity of the set in force.
    fingerprint: Option<[u8; 32]>,
}

impl Sources {
    pub(super) fn new(sources: Vec<KeySource>) -> Self {
        Self {
            states: sources
                .into_iter()
                .map(|source| SourceState {
                    source,
                    last_good: None,
                })
                .collect(),
            fingerprint: None,
        }
    }

    /// Whether any source can give other keys when read again.
    pub(super) fn refreshable(&self) -> bool {
        self.states.iter().any(|s| s.source.changes())
    }

    /// Reads every source again. A source that cannot be read or parsed keeps
    /// its last good keys (with a warning); on the first load, that is an
    /// error. Returns a new set only when some source's content changed.
    pub(super) async fn reload(&mut self) -> Result<Option<KeySet>, KeyError> {
        let first = self.fingerprint.is_none();
        for state in &mut self.states {
            if state.last_good.is_some() && !state.source.changes() {
                continue;
            }
            let loaded = match state.source.read().await {
                Ok(bytes) => {
                    let digest: [u8; 32] = Sha256::digest(&bytes).into();
                    if matches!(&state.last_good, Some((d, _)) if *d == digest) {
                        continue;
                    }
                    state.source.parse(&bytes).map(|keys| (digest, keys))
                }
                Err(e) => Err(e),
            };
            match loaded {
                Ok(good) => state.last_good = Some(good),
                Err(e) if first => return Err(e),
                Err(e) => tracing::warn!(
                    error = %e,
                    "verification keys not refreshed from this source; the last good ones stay in force"
                ),
            }
        }
        let mut hasher = Sha256::new();
        let mut keys = Vec::new();
        for state in &self.states {
            if let Some((digest, good)) = &state.last_good {
                hasher.update(digest);
                keys.extend(good.iter().cloned());
            }
        }
        let fingerprint: [u8; 32] = hasher.finalize().into();
        if self.fingerprint == Some(fingerprint) {
            return Ok(None);
        }
        let set = KeySet::new(keys)?;
        self.fingerprint = Some(fingerprint);
        Ok(Some(set))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_key(path: &Path, pem: &[u8]) -> Result<Key, KeyError> {
    let key = DecodingKey::from_ec_pem(pem)
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .or_else(|_| DecodingKey::from_rsa_pem(pem))
        .map_err(|_| KeyError::Pem {
            path: path.to_owned(),
        })?;
    let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    Ok(Key { kid, key })
}

/// The signing keys of a JWKS document. An invalid document is refused
/// whole; inside a valid one, encryption keys (`"use": "enc"`) are skipped,
/// and so, with a warning, are keys of a type or curve we cannot use (an
/// identity provider may publish them beside its signing keys: refusing
/// the whole set would block every rotation).
fn jwks_keys(origin: &str, bytes: &[u8]) -> Result<Vec<Key>, KeyError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let bad = |reason: String| KeyError::Jwks {
        path: origin.to_owned(),
        reason,
    };
    let document: Document = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for (i, value) in document.keys.into_iter().enumerate() {
        if value.get("use").and_then(|u| u.as_str()) == Some("enc") {
            continue;
        }
        let usable = serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                Ok(Key {
                    kid: jwk.common.key_id,
                    key,
                })
            });
        match usable {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::warn!(jwks = origin, index = i, %reason, "JWKS key skipped"),
        }
    }
    Ok(keys)
}
