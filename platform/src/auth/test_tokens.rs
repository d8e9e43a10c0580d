//! Real keys and tokens for the verifier's unit tests: a P-256 key made for
//! the test, verifiers holding its public half (read from a PEM file, as a
//! deployment reads it), and tokens signed with its private half whatever
//! their header and claims say, so a test reaches the check it is about.

use super::cache::TokenCache;
use super::{AuthError, KeySet, KeySource, TokenRules, TokenTypes, Verifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

pub(super) const ISSUER: &str = "checks-test";
pub(super) const AUDIENCE: &str = "things";
/// The PEM file's stem, which is the key's `kid`.
pub(super) const KID: &str = "checks-key";

pub(super) struct Signer {
    signing: EncodingKey,
    keys: Vec<KeySource>,
    // The public key's file; kept until the test ends.
    _dir: tempfile::TempDir,
}

impl Signer {
    pub(super) fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join(format!("{KID}.pem"));
        std::fs::write(&public, key.public_key_pem()).unwrap();
        Self {
            signing: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            keys: vec![KeySource::PemFile(public)],
            _dir: dir,
        }
    }

    /// The rules a deployment gets from the `auth` section's defaults, for
    /// the test's issuer, audience and ES256, with no leeway.
    pub(super) fn rules() -> TokenRules {
        TokenRules {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec![Algorithm::ES256],
            leeway_secs: 0,
            token_types: TokenTypes::default(),
            max_lifetime_secs: Some(86_400),
        }
    }

    /// A verifier of the test key under `rules`, with a cache of verified
    /// tokens, as the server runs it.
    pub(super) fn cached_verifier(&self, rules: TokenRules) -> Verifier {
        let keys = KeySet::load(&self.keys).unwrap();
        Verifier::with_parts(rules, keys, Some(TokenCache::new(64)), None)
    }

    /// `{"alg": "ES256", "kid": KID}` with `typ`, when given.
    pub(super) fn header(typ: Option<&str>) -> Value {
        let mut header = json!({"alg": "ES256", "kid": KID});
        if let Some(typ) = typ {
            header["typ"] = typ.into();
        }
        header
    }

    /// Claims every rule accepts: issued now, valid for ten minutes.
    pub(super) fn claims() -> Value {
        let now = super::unix_now();
        json!({
            "sub": "alice", "scope": "things:read", "iss": ISSUER, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 600,
        })
    }

    /// `header.claims.signature`, ES256-signed with the test key.
    pub(super) fn sign(&self, header: &Value, claims: &Value) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let message = format!("{}.{}", b64(header), b64(claims));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.signing, Algorithm::ES256)
                .unwrap();
        format!("{message}.{signature}")
    }

    /// A token every rule accepts, with `typ: JWT` as most issuers send it.
    pub(super) fn token(&self) -> String {
        self.sign(&Self::header(Some("JWT")), &Self::claims())
    }
}

/// Verifies `token`, expecting a refusal; checks the status it becomes on
/// the wire (UNAUTHENTICATED, the refusal's `ErrorInfo.reason`, nothing of
/// the token in the message) and returns the refusal.
pub(super) fn refused(verifier: &Verifier, token: &str) -> AuthError {
    let error = verifier.verify(token).expect_err("the token is refused");
    let status = crate::testing::rescued(&error, crate::testing::GET);
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{error}");
    assert_eq!(status.message(), error.to_string());
    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("ErrorInfo");
    assert_eq!(info.reason, error.reason());
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!status.message().contains(part), "the token is not echoed");
    }
    error
}
