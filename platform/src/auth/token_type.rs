//! Only access tokens get in: the header's `typ`, and the claims that only
//! an OpenID Connect ID token carries.
//!
//! An identity provider signs ID tokens (for the client that logs a user
//! in) with the same keys as access tokens (for the APIs), so a signature
//! and an issuer do not tell them apart. What does:
//!
//! - `aud`: an ID token's audience is the client's id. This is the defence
//!   that always holds, provided `auth.audience` names the API and is no
//!   client's id.
//! - `typ`: RFC 9068 access tokens carry `at+jwt`, and a resource server
//!   that requires them MUST check it (RFC 9068 §4); `auth.require_at_jwt`
//!   does that. Many providers send `JWT` or nothing on every kind of
//!   token, so by default those pass too, and any other type is refused:
//!   a logout token, a security event, a DPoP proof, a request object…
//! - `at_hash`, `c_hash`, `s_hash`: OpenID Connect defines them for ID
//!   tokens only (the hash of the access token, code or state issued with
//!   it), so a token carrying one is an ID token whatever its `typ`. Not
//!   every ID token has one; `nonce` would catch more, but some providers
//!   put it in access tokens too (Keycloak did until version 25, and still
//!   does with its backwards-compatibility mapper), so it is not used.
//!
//! `typ` is compared as RFC 7515 §4.1.9 says: without regard to case, and
//! `application/at+jwt` is `at+jwt`.

use super::AuthError;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The media type of RFC 9068 access tokens.
pub const AT_JWT: &str = "at+jwt";

/// Media types of JWTs that are not access tokens, which no configuration
/// may accept: a security event (RFC 8417), a logout token (OpenID Connect
/// Back-Channel Logout), a DPoP proof (RFC 9449), an introspection
/// response (RFC 9701), a request object (RFC 9101).
const NOT_ACCESS_TOKENS: [&str; 5] = [
    "secevent+jwt",
    "logout+jwt",
    "dpop+jwt",
    "token-introspection+jwt",
    "oauth-authz-req+jwt",
];

/// The `typ` values a token may carry (`auth.token_types`,
/// `auth.require_at_jwt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTypes {
    /// Lower case, without `application/`.
    accepted: Vec<String>,
    /// A token without `typ` is refused.
    required: bool,
}

impl Default for TokenTypes {
    /// No `typ`, `JWT` or `at+jwt`.
    fn default() -> Self {
        Self {
            accepted: vec!["jwt".into(), AT_JWT.into()],
            required: false,
        }
    }
}

impl TokenTypes {
    /// `types`, or, when `require_at_jwt`, `at+jwt` alone and required (then
    /// `types` is not used). Each type is a media type as `typ` holds it
    /// (`JWT`, `at+jwt`, `application/at+jwt`); the types of tokens that
    /// are not access tokens are refused, and so is an empty list.
    pub fn new<T: AsRef<str>>(types: &[T], require_at_jwt: bool) -> Result<Self, String> {
        if require_at_jwt {
            return Ok(Self {
                accepted: vec![AT_JWT.into()],
                required: true,
            });
        }
        if types.is_empty() {
            return Err("at least one type is required".into());
        }
        let mut accepted = Vec::with_capacity(types.len());
        for raw in types {
            let raw = raw.as_ref();
            if raw.is_empty() || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("{raw:?} is not a media type"));
            }
            let typ = normalize(raw);
            if NOT_ACCESS_TOKENS.contains(&typ.as_str()) {
                return Err(format!(
                    "{raw} is the type of a token that is not an access token"
                ));
            }
            accepted.push(typ);
        }
        Ok(Self {
            accepted,
            required: false,
        })
    }

    /// Whether a token whose header says `typ` may be an access token.
    pub(super) fn check(&self, typ: Option<&str>) -> Result<(), AuthError> {
        let fits = match typ {
            None => !self.required,
            Some(typ) => self.accepted.contains(&normalize(typ)),
        };
        if fits {
            Ok(())
        } else {
            Err(AuthError::WrongTokenType)
        }
    }
}

/// `typ` as compared: lower case, and without `application/` when no other
/// `/` follows (RFC 7515 §4.1.9).
fn normalize(typ: &str) -> String {
    let typ = typ.to_ascii_lowercase();
    match typ.strip_prefix("application/") {
        Some(rest) if !rest.contains('/') => rest.to_owned(),
        _ => typ,
    }
}

/// The claims that mark an ID token (present, whatever their value).
#[derive(Debug, Default, Deserialize)]
pub(super) struct IdTokenClaims {
    #[serde(default)]
    at_hash: Option<IgnoredAny>,
    #[serde(default)]
    c_hash: Option<IgnoredAny>,
    #[serde(default)]
    s_hash: Option<IgnoredAny>,
}

impl IdTokenClaims {
    pub(super) fn check(&self) -> Result<(), AuthError> {
        if self.at_hash.is_some() || self.c_hash.is_some() || self.s_hash.is_some() {
            Err(AuthError::IdToken)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenRules;
    use crate::auth::test_tokens::{Signer, refused};
    use serde_json::json;

    /// The default rules but these token types.
    fn rules(types: TokenTypes) -> TokenRules {
        TokenRules {
            token_types: types,
            ..Signer::rules()
        }
    }

    #[test]
    fn by_default_jwt_at_jwt_and_no_typ_pass_in_any_case_with_or_without_application() {
        let signer = Signer::new();
        let verifier = signer.cached_verifier(Signer::rules());
        for typ in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("AT+JWT"),
            Some("application/at+jwt"),
            Some("Application/At+JWT"),
        ] {
            let token = signer.sign(&Signer::header(typ), &Signer::claims());
            let principal = verifier.verify(&token);
            assert!(principal.is_ok(), "typ {typ:?}: {principal:?}");
        }
    }

    #[test]
    fn by_default_any_other_typ_is_the_wrong_token_type() {
        let signer = Signer::new();
        let verifier = signer.cached_verifier(Signer::rules());
        for typ in [
            "JOSE",
            "JOSE+JSON",
            "application/jose",
            "id_token+jwt",
            "logout+jwt",
            "secevent+jwt",
            "dpop+jwt",
            "token-introspection+jwt",
            "application/jwt/at+jwt",
            "text/jwt",
            "",
            " JWT",
            "at+jwt ",
        ] {
            let token = signer.sign(&Signer::header(Some(typ)), &Signer::claims());
            assert_eq!(
                refused(&verifier, &token),
                AuthError::WrongTokenType,
                "typ {typ:?}"
            );
        }
        // Checked before the key is looked up: a wrong type naming a key
        // nobody knows is refused for its type, and triggers no refresh.
        let header = json!({"alg": "ES256", "kid": "nobody", "typ": "logout+jwt"});
        let token = signer.sign(&header, &Signer::claims());
        assert_eq!(refused(&verifier, &token), AuthError::WrongTokenType);
        assert_eq!(refused(&verifier, &token).reason(), "WRONG_TOKEN_TYPE");
    }

    #[test]
    fn a_token_carrying_a_claim_only_id_tokens_carry_is_refused_whatever_its_typ() {
        let signer = Signer::new();
        let verifier = signer.cached_verifier(Signer::rules());
        for claim in ["at_hash", "c_hash", "s_hash"] {
            for typ in [None, Some("JWT"), Some("at+jwt")] {
                let mut claims = Signer::claims();
                claims[claim] = "77QmUPtjPfzWtF2AnpK9RQ".into();
                let token = signer.sign(&Signer::header(typ), &claims);
                let refusal = refused(&verifier, &token);
                assert_eq!(refusal, AuthError::IdToken, "{claim}, typ {typ:?}");
                assert_eq!(refusal.reason(), "WRONG_TOKEN_TYPE");
            }
        }
        // `nonce` alone is no proof: some providers put it in access tokens.
        let mut claims = Signer::claims();
        claims["nonce"] = "n-0S6_WzA2Mj".into();
        let token = signer.sign(&Signer::header(Some("JWT")), &claims);
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn require_at_jwt_accepts_at_jwt_alone_whatever_the_list_says() {
        let signer = Signer::new();
        let types = TokenTypes::new(&["JWT", "at+jwt"], true).unwrap();
        let verifier = signer.cached_verifier(rules(types));
        for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
            let token = signer.sign(&Signer::header(Some(typ)), &Signer::claims());
            assert!(verifier.verify(&token).is_ok(), "typ {typ}");
        }
        for typ in [None, Some("JWT"), Some("jwt")] {
            let token = signer.sign(&Signer::header(typ), &Signer::claims());
            assert_eq!(
                refused(&verifier, &token),
                AuthError::WrongTokenType,
                "typ {typ:?}"
            );
        }
    }

    #[test]
    fn configured_types_replace_the_default_list() {
        let signer = Signer::new();
        let types = TokenTypes::new(&["application/vendor-at+jwt"], false).unwrap();
        let verifier = signer.cached_verifier(rules(types));
        for typ in [
            None,
            Some("vendor-at+jwt"),
            Some("Application/Vendor-AT+JWT"),
        ] {
            let token = signer.sign(&Signer::header(typ), &Signer::claims());
            assert!(verifier.verify(&token).is_ok(), "typ {typ:?}");
        }
        for typ in ["JWT", "at+jwt"] {
            let token = signer.sign(&Signer::header(Some(typ)), &Signer::claims());
            assert_eq!(refused(&verifier, &token), AuthError::WrongTokenType);
        }
    }

    #[test]
    fn types_of_tokens_that_are_not_access_tokens_and_non_types_cannot_be_configured() {
        for types in [
            vec!["JWT", "logout+jwt"],
            vec!["application/secevent+jwt"],
            vec!["DPoP+JWT"],
            vec!["token-introspection+jwt"],
            vec!["oauth-authz-req+jwt"],
            vec![""],
            vec!["at+jwt "],
            vec![],
        ] {
            assert!(
                TokenTypes::new(&types, false).is_err(),
                "{types:?} is refused"
            );
        }
        assert_eq!(
            TokenTypes::new(&["JWT", "AT+JWT"], false),
            Ok(TokenTypes::default())
        );
    }
}
