//! Authentication and authorization: bearer JWTs checked against configured
//! keys, and the scopes each method declares in the proto (docs/reference.md
//! "Authentication and authorization").
//!
//! - [`Verifier`] checks a token: signature by a key chosen by `kid` (or, for
//!   a token without `kid`, any key of the algorithm's family), an allowed
//!   algorithm that matches the key's family (so an HS256 token "signed" with
//!   an RSA public key is refused), `exp`/`nbf` with leeway, `iss`, `aud`,
//!   that it is an access token (`token_type.rs`: the header's `typ`, no
//!   claim only ID tokens carry), and that it was not issued in the future
//!   and lives no longer than the limit (`lifetime.rs`).
//!   A token verified once is then accepted from a cache (`cache.rs`) until
//!   its `exp`.
//! - Keys come from PEM files, a JWKS file or a JWKS URL (`keys.rs`,
//!   `fetch.rs`); they are re-read every `auth.jwks_refresh_secs` and when a
//!   token names an unknown `kid` (at most once per
//!   `auth.jwks_min_refresh_secs`, one read at a time for all callers), so
//!   keys rotate without a restart. A failed read keeps the last good keys.
//! - [`AuthLayer`] runs it for every call but the public ones (health,
//!   reflection, and methods whose proto declares them public), requires the
//!   scopes the method's proto declares, and puts the [`Principal`] in the
//!   request extensions.

mod cache;
mod fetch;
mod key_error;
mod keys;
mod layer;
mod lifetime;
mod token_type;

pub use fetch::JwksUrl;
pub use key_error::KeyError;
pub use keys::{KeySet, KeySource};
pub use layer::AuthLayer;
pub use token_type::{AT_JWT, TokenTypes};

use arc_swap::ArcSwap;
use cache::TokenCache;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use keys::Sources;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::task::AbortOnDropHandle;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Largest `authorization` value accepted, so a huge header costs no parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An authenticated caller. Cheap to clone (one reference count), so a
/// cached verification hands out a principal without allocating.
#[derive(Debug, Clone)]
pub struct Principal {
    inner: Arc<PrincipalInner>,
}

#[derive(Debug)]
struct PrincipalInner {
    subject: String,
    scopes: HashSet<String>,
}

impl Principal {
    /// The token's `sub`: never empty (a token without one is refused).
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner.scopes.contains(scope)
    }

    /// A principal as a verified token would give, for the layers' tests.
    #[cfg(test)]
    pub(crate) fn for_test(subject: &str, scopes: &[&str]) -> Self {
        Principal {
            inner: Arc::new(PrincipalInner {
                subject: subject.to_owned(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }
}

/// Why a call was refused. The `reason` strings are stable (they go out in
/// `ErrorInfo.reason`); none of them carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("malformed token")]
    Malformed,
    #[error("token too large")]
    TooLarge,
    /// More than one `authorization` header: which one a proxy in front
    /// read cannot be known, so neither is trusted.
    #[error("more than one authorization header")]
    Ambiguous,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token signature invalid")]
    BadSignature,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token audience not accepted")]
    WrongAudience,
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("token type not accepted")]
    WrongTokenType,
    #[error("ID token where an access token is required")]
    IdToken,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime over the limit")]
    LifetimeTooLong,
    #[error("token signing key unknown")]
    UnknownKey,
    #[error("token lacks scope {0}")]
    MissingScope(Arc<str>),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "MISSING_TOKEN",
            AuthError::Malformed => "MALFORMED_TOKEN",
            AuthError::TooLarge => "TOKEN_TOO_LARGE",
            AuthError::Ambiguous => "AMBIGUOUS_CREDENTIALS",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::NotYetValid => "TOKEN_NOT_YET_VALID",
            AuthError::IssuedInFuture => "TOKEN_ISSUED_IN_FUTURE",
            AuthError::LifetimeTooLong => "TOKEN_LIFETIME_TOO_LONG",
            AuthError::BadSignature => "BAD_SIGNATURE",
            AuthError::WrongIssuer => "WRONG_ISSUER",
            AuthError::WrongAudience => "WRONG_AUDIENCE",
            AuthError::AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
            AuthError::WrongTokenType | AuthError::IdToken => "WRONG_TOKEN_TYPE",
            AuthError::UnknownKey => "UNKNOWN_KEY",
            AuthError::MissingScope(_) => "MISSING_SCOPE",
        }
    }

    /// UNAUTHENTICATED, or PERMISSION_DENIED for a missing scope.
    pub fn code(&self) -> Code {
        match self {
            AuthError::MissingScope(_) => Code::PermissionDenied,
            _ => Code::Unauthenticated,
        }
    }

    /// The refusal's details: an `ErrorInfo` of `domain`, the service
    /// called, naming the scope that is missing, if one is.
    pub fn details(&self, domain: &str) -> ErrorDetails {
        let metadata = match self {
            AuthError::MissingScope(scope) => {
                HashMap::from([("required_scope".to_string(), scope.to_string())])
            }
            _ => HashMap::new(),
        };
        ErrorDetails::with_error_info(self.reason(), domain, metadata)
    }

    /// The refusal as a status ([`code`](Self::code), the error's message,
    /// its [`details`](Self::details)), for a handler that refuses a call
    /// itself; the auth layer's refusals become the same status in the
    /// server's rescue layer.
    pub fn status(&self, domain: &str) -> Status {
        Status::with_error_details(self.code(), self.to_string(), self.details(domain))
    }
}

/// The claims this service reads; `scope` (space-separated, RFC 8693) or
/// `scp` (array, as Azure AD and Okta send it).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// jsonwebtoken also accepts an array holding the issuer; RFC 7519 makes
    /// `iss` one string, so anything else is refused in `principal`.
    #[serde(default)]
    iss: Option<serde_json::Value>,
    /// Required and checked by jsonwebtoken; kept to bound the cache entry.
    exp: u64,
    /// Optional; checked in `lifetime`.
    #[serde(default, deserialize_with = "lifetime::present")]
    iat: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
    #[serde(flatten)]
    id_token: token_type::IdTokenClaims,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
    /// The header `typ` values accepted (`auth.token_types`,
    /// `auth.require_at_jwt`).
    pub token_types: TokenTypes,
    /// The longest `exp - iat` accepted, or without `iat` `exp - now` (less
    /// the leeway); `None`: no limit (`auth.max_token_lifetime_secs`).
    pub max_lifetime_secs: Option<u64>,
}

/// How a verifier built from sources refreshes and caches.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// Re-read the sources this often (`auth.jwks_refresh_secs`; `None`: only
    /// on unknown `kid`s).
    pub refresh_interval: Option<Duration>,
    /// At most one unknown-`kid` refresh per this time
    /// (`auth.jwks_min_refresh_secs`).
    pub min_refresh_interval: Duration,
    /// Verified tokens kept (`auth.token_cache_size`; 0: no cache).
    pub cache_size: usize,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            refresh_interval: Some(Duration::from_secs(300)),
            min_refresh_interval: Duration::from_secs(10),
            cache_size: 10_000,
        }
    }
}

/// Checks bearer tokens. Cheap to clone; key sets can be swapped at run time.
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
}

struct Shared {
    rules: TokenRules,
    /// Swapped whole on rotation; readers never block.
    keys: ArcSwap<KeySet>,
    /// The last generation handed to a key set.
    generation: AtomicU64,
    cache: Option<TokenCache>,
    /// `None` when no source can change (fixed keys, an HS256 secret).
    refresher: Option<Refresher>,
    /// The periodic refresh; aborted when the last verifier handle goes
    /// (the task itself holds only a weak reference).
    task: std::sync::Mutex<Option<AbortOnDropHandle<()>>>,
}

struct Refresher {
    /// The async lock makes refreshes single-flight: callers that find one
    /// running wait for it, then see that it just happened.
    state: tokio::sync::Mutex<RefreshState>,
    interval: Option<Duration>,
    min_interval: Duration,
}

struct RefreshState {
    sources: Sources,
    last_attempt: Option<Instant>,
}

/// Why a refresh was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The timer, or an explicit [`Verifier::refresh`]: never rate limited.
    Scheduled,
    /// A token named a `kid` we do not know: rate limited.
    UnknownKey,
}

impl Verifier {
    /// A verifier with fixed keys (no refresh, no cache).
    pub fn new(rules: TokenRules, keys: KeySet) -> Self {
        Self::with_parts(rules, keys, None, None)
    }

    /// Reads every source (fetching a JWKS URL too) and returns a verifier
    /// that can refresh them; start the periodic refresh with
    /// [`Verifier::spawn_refresh`].
    pub async fn from_sources(
        rules: TokenRules,
        sources: Vec<KeySource>,
        options: VerifierOptions,
    ) -> Result<Self, KeyError> {
        let mut sources = Sources::new(sources);
        let keys = sources.reload().await?.ok_or(KeyError::Empty)?;
        let refresher = sources.refreshable().then(|| Refresher {
            state: tokio::sync::Mutex::new(RefreshState {
                sources,
                last_attempt: None,
            }),
            interval: options.refresh_interval.filter(|d| !d.is_zero()),
            min_interval: options.min_refresh_interval,
        });
        let cache = (options.cache_size > 0).then(|| TokenCache::new(options.cache_size));
        Ok(Self::with_parts(rules, keys, cache, refresher))
    }

    fn with_parts(
        rules: TokenRules,
        keys: KeySet,
        cache: Option<TokenCache>,
        refresher: Option<Refresher>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                rules,
                keys: ArcSwap::from_pointee(keys),
                generation: AtomicU64::new(0),
                cache,
                refresher,
                task: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Replaces the keys (rotation) for every later call; cached
    /// verifications made with the old keys are dropped.
    pub fn replace_keys(&self, keys: KeySet) {
        self.shared.install(keys);
    }

    /// The number of keys in force.
    pub fn key_count(&self) -> usize {
        self.shared.keys.load().len()
    }

    /// The number of cached verified tokens.
    pub fn cached_tokens(&self) -> usize {
        self.shared.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// Starts re-reading the sources every refresh interval, until the last
    /// handle of this verifier is dropped. Does nothing without an interval
    /// or changeable sources. Must be called inside a tokio runtime.
    pub fn spawn_refresh(&self) {
        let Some(interval) = self.shared.refresher.as_ref().and_then(|r| r.interval) else {
            return;
        };
        let weak = Arc::downgrade(&self.shared);
        let task = tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                shared.refresh(Trigger::Scheduled).await;
            }
        });
        let previous = self
            .shared
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(AbortOnDropHandle::new(task));
        drop(previous);
    }

    /// Re-reads the sources now (not rate limited).
    pub async fn refresh(&self) {
        self.shared.refresh(Trigger::Scheduled).await;
    }

    /// Whether re-reading the sources could make an unknown key known.
    pub(crate) fn refreshes(&self) -> bool {
        self.shared.refresher.is_some()
    }

    /// Re-reads the sources because a token named an unknown key, unless
    /// that was done less than `auth.jwks_min_refresh_secs` ago; waits for a
    /// refresh already under way instead of starting another.
    pub(crate) async fn refresh_for_unknown_key(&self) {
        self.shared.refresh(Trigger::UnknownKey).await;
    }

    /// Reads `authorization: Bearer <token>` and verifies it. A second
    /// `authorization` header is refused, whatever either holds.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::MissingToken)?;
        if values.next().is_some() {
            return Err(AuthError::Ambiguous);
        }
        if value.len() > MAX_TOKEN_BYTES + "Bearer ".len() {
            return Err(AuthError::TooLarge);
        }
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MissingToken);
        }
        self.verify(token.trim())
    }

    /// Verifies one token: from the cache when it was verified before with
    /// the keys in force and has not expired, else in full.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let shared = &*self.shared;
        let keys = shared.keys.load();
        let Some(cache) = &shared.cache else {
            return shared.verify_with(&keys, token).map(|(p, _)| p);
        };
        let digest = cache.digest(token);
        if let Some(principal) = cache.get(
            &digest,
            keys.generation,
            unix_now(),
            shared.rules.leeway_secs,
        ) {
            return Ok(principal);
        }
        let (principal, exp) = shared.verify_with(&keys, token)?;
        cache.insert(digest, principal.clone(), exp, keys.generation);
        Ok(principal)
    }
}

impl Shared {
    fn install(&self, mut keys: KeySet) {
        keys.generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.keys.store(Arc::new(keys));
        // Entries of older generations are never used; clearing frees them.
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    async fn refresh(&self, trigger: Trigger) {
        let Some(refresher) = &self.refresher else {
            return;
        };
        let mut state = refresher.state.lock().await;
        if trigger == Trigger::UnknownKey
            && state
                .last_attempt
                .is_some_and(|at| at.elapsed() < refresher.min_interval)
        {
            return;
        }
        state.last_attempt = Some(Instant::now());
        match state.sources.reload().await {
            Ok(Some(keys)) => {
                tracing::info!(keys = keys.len(), ?trigger, "verification keys changed");
                self.install(keys);
            }
            Ok(None) => tracing::debug!(?trigger, "verification keys unchanged"),
            Err(e) => tracing::warn!(
                error = %e,
                ?trigger,
                "verification keys not refreshed; the last good ones stay in force"
            ),
        }
    }

    /// The full check; returns the principal and the token's `exp`.
    fn verify_with(&self, keys: &KeySet, token: &str) -> Result<(Principal, u64), AuthError> {
        // `alg: none` and unknown algorithms fail here: the header type has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.rules.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        // Before the key lookup: a token of another kind costs no refresh.
        self.rules.token_types.check(header.typ.as_deref())?;
        let candidates = keys.candidates(header.kid.as_deref(), header.alg)?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.rules.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.rules.issuer]);
        validation.set_audience(&[&self.rules.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);

        let mut last = AuthError::UnknownKey;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    let exp = claims.exp;
                    lifetime::check(
                        claims.iat.as_ref(),
                        exp,
                        unix_now(),
                        self.rules.leeway_secs,
                        self.rules.max_lifetime_secs,
                    )?;
                    return principal(claims).map(|p| (p, exp));
                }
                Err(err) => {
                    last = match err.kind() {
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                        ErrorKind::InvalidAudience => AuthError::WrongAudience,
                        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        _ => AuthError::Malformed,
                    };
                    // Only a signature mismatch can be another key's token.
                    if last != AuthError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// Seconds since the epoch, as jsonwebtoken counts them for `exp`.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    // jsonwebtoken has checked the issuer, but would let in an array holding it.
    if !matches!(claims.iss, Some(serde_json::Value::String(_))) {
        return Err(AuthError::WrongIssuer);
    }
    claims.id_token.check()?;
    // An empty subject names nobody: such a token is malformed.
    if claims.sub.is_empty() {
        return Err(AuthError::Malformed);
    }
    let subject = claims.sub;
    let mut scopes: HashSet<String> = claims
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    scopes.extend(claims.scp.unwrap_or_default());
    Ok(Principal {
        inner: Arc::new(PrincipalInner { subject, scopes }),
    })
}

/// The caller's principal, as the auth layer left it; a handler of a method
/// declared public has none.
pub fn principal_of<T>(request: &tonic::Request<T>) -> Result<&Principal, AuthError> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or(AuthError::MissingToken)
}

#[cfg(test)]
mod test_tokens;

#[cfg(test)]
mod tests {
    use super::test_tokens::Signer;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// The order of P-256's group (FIPS 186-4, D.1.2.3), big-endian.
    const P256_N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    /// `a - b` for big-endian numbers with `a >= b`.
    fn minus(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(a[i]) - i16::from(b[i]) - borrow;
            borrow = i16::from(d < 0);
            out[i] = (d + 256 * borrow) as u8;
        }
        assert_eq!(borrow, 0, "a >= b");
        out
    }

    /// The `s` half of an ES256 token's signature (`r || s`, 32 bytes each).
    fn s_of(token: &str) -> [u8; 32] {
        let signature = URL_SAFE_NO_PAD
            .decode(token.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(signature.len(), 64, "ES256 signatures are r || s");
        signature[32..].try_into().unwrap()
    }

    /// Whether `s > n / 2` (`n` is odd, so that is `s > n - s`).
    fn is_high(s: &[u8; 32]) -> bool {
        *s > minus(&P256_N, s)
    }

    /// The same token with `s` replaced by `n - s`: the other signature
    /// ECDSA accepts for the same message and key.
    fn twin(token: &str) -> String {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let s = minus(&P256_N, &s_of(token));
        bytes[32..].copy_from_slice(&s);
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// ECDSA signatures are malleable: `(r, n - s)` verifies wherever
    /// `(r, s)` does. Both halves are accepted on purpose: JWS (RFC 7518
    /// §3.4) does not ask signers for a low `s`, and the signers in use,
    /// this one included, make high and low `s` alike, so refusing either
    /// half would refuse valid tokens. The twin is harmless: only a holder
    /// of a valid token can make it, it carries the same claims (same
    /// subject, scopes and `exp`), and the cache keeps it as a second entry
    /// of the same verdict.
    #[test]
    fn an_es256_signature_with_s_replaced_by_n_minus_s_verifies_as_the_same_token() {
        let signer = Signer::new();
        let tokens: Vec<String> = (0..64).map(|_| signer.token()).collect();
        let high = tokens.iter().filter(|t| is_high(&s_of(t))).count();
        assert!(
            0 < high && high < tokens.len(),
            "a standard signer makes both: {high} of {} high",
            tokens.len()
        );

        let verifier = signer.cached_verifier(Signer::rules());
        let token = &tokens[0];
        let other = twin(token);
        assert_ne!(&other, token);
        assert_ne!(is_high(&s_of(&other)), is_high(&s_of(token)));
        let first = verifier.verify(token).expect("the token verifies");
        let second = verifier.verify(&other).expect("its twin verifies too");
        assert_eq!(second.subject(), first.subject());
        assert!(second.has_scope("things:read"));
        assert_eq!(verifier.cached_tokens(), 2, "one entry per text");
        // The twin's twin is the token itself: there is no third text.
        assert_eq!(&twin(&other), token);

        // Any other change to `s` is a bad signature.
        let (message, signature) = other.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[63] ^= 1;
        let spoiled = format!("{message}.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(
            verifier.verify(&spoiled).unwrap_err().reason(),
            "BAD_SIGNATURE"
        );
    }
}
