//! Authentication and authorization: bearer JWTs checked against configured
//! keys, scopes mapped to methods (CONTRACT.md section 3).
//!
//! - [`Verifier`] checks a token: signature by a key chosen by `kid` (or, for
//!   a token without `kid`, any key of the algorithm's family), an allowed
//!   algorithm that matches the key's family (so an HS256 token "signed" with
//!   an RSA public key is refused), `exp`/`nbf` with leeway, `iss`, `aud`.
//! - [`AuthLayer`] runs it for every `orders.v1.OrderService` call and puts
//!   the [`Principal`] in the request extensions; health and reflection pass
//!   untouched.

mod keys;
mod layer;

pub use keys::{KeySet, KeySource};
pub use layer::{AuthLayer, required_scope};

use crate::domain::{Caller, CustomerId};
use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `google.rpc.ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "orders.v1";

pub const SCOPE_READ: &str = "orders:read";
pub const SCOPE_WRITE: &str = "orders:write";
pub const SCOPE_ADMIN: &str = "orders:admin";

/// Largest `authorization` value accepted, so a huge header costs no parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    subject: CustomerId,
    scopes: HashSet<String>,
}

impl Principal {
    pub fn subject(&self) -> &CustomerId {
        &self.subject
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// The domain's view: staff are callers with `orders:admin`.
    pub fn caller(&self) -> Caller {
        Caller::new(self.subject.clone(), self.has_scope(SCOPE_ADMIN))
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
    #[error("token signing key unknown")]
    UnknownKey,
    #[error("token lacks scope {0}")]
    MissingScope(&'static str),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "MISSING_TOKEN",
            AuthError::Malformed => "MALFORMED_TOKEN",
            AuthError::TooLarge => "TOKEN_TOO_LARGE",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::NotYetValid => "TOKEN_NOT_YET_VALID",
            AuthError::BadSignature => "BAD_SIGNATURE",
            AuthError::WrongIssuer => "WRONG_ISSUER",
            AuthError::WrongAudience => "WRONG_AUDIENCE",
            AuthError::AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
            AuthError::UnknownKey => "UNKNOWN_KEY",
            AuthError::MissingScope(_) => "MISSING_SCOPE",
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        let (code, metadata) = match &err {
            AuthError::MissingScope(scope) => (
                Code::PermissionDenied,
                HashMap::from([("required_scope".to_string(), scope.to_string())]),
            ),
            _ => (Code::Unauthenticated, HashMap::new()),
        };
        Status::with_error_details(
            code,
            err.to_string(),
            ErrorDetails::with_error_info(err.reason(), ERROR_DOMAIN, metadata),
        )
    }
}

/// The claims this service reads; `scope` (space-separated, RFC 8693) or
/// `scp` (array, as Azure AD and Okta send it).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway_secs: u64,
}

/// Checks bearer tokens. Cheap to clone; key sets can be swapped at run time.
#[derive(Clone)]
pub struct Verifier {
    rules: Arc<TokenRules>,
    /// Swapped whole on rotation; readers never block.
    keys: Arc<ArcSwap<KeySet>>,
}

impl Verifier {
    pub fn new(rules: TokenRules, keys: KeySet) -> Self {
        Self {
            rules: Arc::new(rules),
            keys: Arc::new(ArcSwap::from_pointee(keys)),
        }
    }

    /// Replaces the keys (rotation) for every later call.
    pub fn replace_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// Reads `authorization: Bearer <token>` and verifies it.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, AuthError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::MissingToken)?;
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

    /// Verifies one token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // `alg: none` and unknown algorithms fail here: the header type has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.rules.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let keys = self.keys.load();
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
                Ok(data) => return principal(data.claims),
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

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let subject = CustomerId::new(claims.sub).ok_or(AuthError::Malformed)?;
    let mut scopes: HashSet<String> = claims
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    scopes.extend(claims.scp.unwrap_or_default());
    Ok(Principal { subject, scopes })
}

/// The caller's principal, as the auth layer left it.
pub fn principal_of<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| AuthError::MissingToken.into())
}

/// Refuses callers without `scope`.
pub fn require(principal: &Principal, scope: &'static str) -> Result<(), AuthError> {
    if principal.has_scope(scope) {
        Ok(())
    } else {
        Err(AuthError::MissingScope(scope))
    }
}
