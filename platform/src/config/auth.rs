//! The `auth` section: who issues the tokens the server accepts, for
//! which audience, with which algorithms, and where the keys come from.

use super::duration::secs_or_never;
use super::redact_opt;
use crate::auth::{
    AT_JWT, JwksUrl, KeyError, KeySource, TokenRules, TokenTypes, Verifier, VerifierOptions,
};
use jsonwebtoken::Algorithm;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (`leeway_secs`).
    #[serde(rename = "leeway_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub leeway: Duration,
    /// The header `typ` values a token may carry, compared without regard
    /// to case, `application/` optional (`at+jwt` is
    /// `application/at+jwt`); a token without `typ` passes too. The default,
    /// `JWT` and `at+jwt`, is what identity providers put on access tokens;
    /// any other type (a logout token, a security event, …) is refused, and
    /// the types of tokens that are not access tokens may not be listed.
    /// ID tokens, which usually say `JWT` or nothing, are kept out by `aud`
    /// (theirs is a client's id) and by the claims only they carry
    /// (`at_hash`, `c_hash`, `s_hash`).
    pub token_types: Vec<String>,
    /// Accept RFC 9068 access tokens only: every token must say `typ:
    /// at+jwt` (RFC 9068 §4), and `token_types` is not used. Off by default
    /// because many providers send `JWT` or nothing on their access tokens;
    /// turn it on when yours sends `at+jwt`, and ID tokens are then refused
    /// by their type, whatever their audience.
    pub require_at_jwt: bool,
    /// The longest lifetime a token may have, `exp - iat`, or for a token
    /// without `iat` `exp - now` less the leeway (`max_token_lifetime_secs`;
    /// 0: no limit, refused in production). It bounds how long a stolen or
    /// mis-issued token works whatever `exp` its issuer wrote; a provider
    /// that issues longer tokens needs a larger value, not none.
    #[serde(rename = "max_token_lifetime_secs", with = "secs_or_never")]
    pub max_token_lifetime: Option<Duration>,
    pub public_keys: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    #[serde(serialize_with = "redact_opt")]
    pub hs256_secret: Option<SecretString>,
    /// PEM CA certificate(s) trusted for `jwks_url` instead of the public
    /// (webpki) roots.
    pub jwks_ca: Option<PathBuf>,
    /// Re-read every key source this often (`jwks_refresh_secs`; 0: only
    /// on unknown `kid`s).
    #[serde(rename = "jwks_refresh_secs", with = "secs_or_never")]
    pub jwks_refresh: Option<Duration>,
    /// At most one unknown-`kid` refresh per this many seconds, for all
    /// callers together, so a flood of made-up `kid`s cannot hammer the
    /// key source (`jwks_min_refresh_secs`).
    #[serde(rename = "jwks_min_refresh_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub jwks_min_refresh: Duration,
    /// Deadline of one JWKS fetch, connect included (`jwks_timeout_ms`).
    #[serde(rename = "jwks_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub jwks_timeout: Duration,
    /// Largest JWKS document accepted from `jwks_url`.
    pub jwks_max_bytes: usize,
    /// Verified tokens remembered until their `exp`; 0 turns the cache off.
    pub token_cache_size: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec!["ES256".into(), "RS256".into(), "EdDSA".into()],
            leeway: Duration::from_secs(30),
            token_types: vec!["JWT".into(), AT_JWT.into()],
            require_at_jwt: false,
            max_token_lifetime: Some(Duration::from_secs(86_400)),
            public_keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            hs256_secret: None,
            jwks_ca: None,
            jwks_refresh: Some(Duration::from_secs(300)),
            jwks_min_refresh: Duration::from_secs(10),
            jwks_timeout: Duration::from_millis(5_000),
            jwks_max_bytes: 256 * 1024,
            token_cache_size: 10_000,
        }
    }
}

impl AuthSettings {
    /// Adds this section's problems, each naming its key. `production`:
    /// HS256 and its shared secret are refused. `generated`: the
    /// development JWKS is made at start-up, so a missing file is fine.
    pub fn validate(&self, production: bool, generated: bool, problems: &mut Vec<String>) {
        if self.issuer.is_empty() {
            problems.push("auth.issuer: required".into());
        }
        if self.audience.is_empty() {
            problems.push("auth.audience: required".into());
        }
        match self.algorithms() {
            Ok(algs) if algs.is_empty() => {
                problems.push("auth.algorithms: at least one is required".into())
            }
            Ok(algs) => {
                let hs = algs.contains(&Algorithm::HS256);
                if hs && production {
                    problems.push("auth.algorithms: HS256 is refused in production".into());
                }
                if hs && self.hs256_secret.is_none() {
                    problems
                        .push("auth.hs256_secret: required when auth.algorithms has HS256".into());
                }
            }
            Err(e) => problems.push(e),
        }
        if let Err(e) = self.token_types() {
            problems.push(e);
        }
        if production && self.max_token_lifetime.is_none() {
            problems
                .push("auth.max_token_lifetime_secs: 0 (no limit) is refused in production".into());
        }
        if let Some(secret) = &self.hs256_secret {
            if production {
                problems.push("auth.hs256_secret: refused in production".into());
            } else if secret.expose_secret().len() < 32 {
                problems.push("auth.hs256_secret: must be at least 32 bytes".into());
            }
        }
        if self.public_keys.is_empty()
            && self.jwks_file.is_none()
            && self.jwks_url.is_none()
            && self.hs256_secret.is_none()
        {
            problems.push(
                "auth: no verification keys (set auth.public_keys, auth.jwks_file, auth.jwks_url or auth.hs256_secret)"
                    .into(),
            );
        }
        for (i, p) in self.public_keys.iter().enumerate() {
            if !p.is_file() {
                problems.push(format!(
                    "auth.public_keys[{i}]: cannot read {}",
                    p.display()
                ));
            }
        }
        if let Some(p) = &self.jwks_file
            && !p.is_file()
            && !generated
        {
            problems.push(format!("auth.jwks_file: cannot read {}", p.display()));
        }
        match &self.jwks_url {
            Some(u) => match url::Url::parse(u) {
                Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => {}
                Ok(_) => problems.push("auth.jwks_url: must be an https:// URL".into()),
                Err(e) => problems.push(format!("auth.jwks_url: not a URL ({e})")),
            },
            None if self.jwks_ca.is_some() => {
                problems.push("auth.jwks_ca: set, but auth.jwks_url is not".into())
            }
            None => {}
        }
        if let Some(p) = &self.jwks_ca
            && !p.is_file()
        {
            problems.push(format!("auth.jwks_ca: cannot read {}", p.display()));
        }
        if production && self.jwks_min_refresh.is_zero() {
            problems.push(
                "auth.jwks_min_refresh_secs: must be at least 1 in production (it rate-limits unknown-kid refreshes)"
                    .into(),
            );
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.jwks_timeout) {
            problems.push("auth.jwks_timeout_ms: must be 1 to 60000".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.jwks_max_bytes) {
            problems.push("auth.jwks_max_bytes: must be 1024 to 16777216".into());
        }
    }

    /// `algorithms`, parsed; only ES256, RS256, EdDSA and HS256 are allowed.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        self.algorithms
            .iter()
            .map(|a| {
                let alg = Algorithm::from_str(a.trim())
                    .map_err(|_| format!("auth.algorithms: unknown algorithm {a:?}"))?;
                match alg {
                    Algorithm::ES256 | Algorithm::RS256 | Algorithm::EdDSA | Algorithm::HS256 => {
                        Ok(alg)
                    }
                    _ => Err(format!(
                        "auth.algorithms: {a} is not allowed (ES256, RS256, EdDSA, HS256)"
                    )),
                }
            })
            .collect()
    }

    /// `token_types` and `require_at_jwt`, checked.
    pub fn token_types(&self) -> Result<TokenTypes, String> {
        TokenTypes::new(&self.token_types, self.require_at_jwt)
            .map_err(|e| format!("auth.token_types: {e}"))
    }

    /// The key sources the section names (building the HTTPS client of
    /// `jwks_url`, which reads `jwks_ca`).
    pub fn key_sources(&self) -> Result<Vec<KeySource>, KeyError> {
        let mut sources: Vec<KeySource> = self
            .public_keys
            .iter()
            .cloned()
            .map(KeySource::PemFile)
            .collect();
        if let Some(p) = &self.jwks_file {
            sources.push(KeySource::JwksFile(p.clone()));
        }
        if let Some(url) = &self.jwks_url {
            sources.push(KeySource::JwksUrl(JwksUrl::new(
                url,
                self.jwks_ca.as_deref(),
                self.jwks_timeout,
                self.jwks_max_bytes,
            )?));
        }
        if let Some(s) = &self.hs256_secret {
            sources.push(KeySource::Hs256Secret(
                s.expose_secret().as_bytes().to_vec(),
            ));
        }
        Ok(sources)
    }

    /// How the verifier refreshes keys and caches verified tokens.
    pub fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            refresh_interval: self.jwks_refresh,
            min_refresh_interval: self.jwks_min_refresh,
            cache_size: self.token_cache_size,
        }
    }

    /// The token verifier this section describes, with its keys loaded (a
    /// JWKS URL fetched: an unreachable one stops the start). Call
    /// [`Verifier::spawn_refresh`] to keep the keys fresh.
    pub async fn verifier(&self) -> anyhow::Result<Verifier> {
        let rules = TokenRules {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            algorithms: self.algorithms().map_err(anyhow::Error::msg)?,
            leeway_secs: self.leeway.as_secs(),
            token_types: self.token_types().map_err(anyhow::Error::msg)?,
            max_lifetime_secs: self.max_token_lifetime.map(|d| d.as_secs()),
        };
        Ok(Verifier::from_sources(rules, self.key_sources()?, self.verifier_options()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings with every required key, so a test sees only the problems
    /// of the keys it is about.
    fn settings() -> AuthSettings {
        AuthSettings {
            issuer: "https://login.example/".into(),
            audience: "things".into(),
            jwks_url: Some("https://login.example/jwks.json".into()),
            ..Default::default()
        }
    }

    fn problems(settings: &AuthSettings, production: bool) -> Vec<String> {
        let mut problems = Vec::new();
        settings.validate(production, false, &mut problems);
        problems
    }

    #[test]
    fn token_types_default_to_jwt_and_at_jwt_and_a_bad_list_is_named() {
        let defaults = settings();
        assert_eq!(defaults.token_types, ["JWT", "at+jwt"]);
        assert!(!defaults.require_at_jwt);
        assert_eq!(problems(&defaults, true), Vec::<String>::new());
        assert_eq!(defaults.token_types(), Ok(TokenTypes::default()));

        for list in [vec![], vec!["JWT", "logout+jwt"], vec![" "]] {
            let bad = AuthSettings {
                token_types: list.iter().map(|t| t.to_string()).collect(),
                ..settings()
            };
            let found = problems(&bad, false);
            assert_eq!(found.len(), 1, "{list:?}: {found:?}");
            assert!(found[0].starts_with("auth.token_types: "), "{found:?}");
        }
        // With require_at_jwt the list is not used, so not checked either.
        let rfc9068 = AuthSettings {
            token_types: Vec::new(),
            require_at_jwt: true,
            ..settings()
        };
        assert_eq!(problems(&rfc9068, true), Vec::<String>::new());
        assert_eq!(
            rfc9068.token_types(),
            TokenTypes::new(&[AT_JWT], true),
            "at+jwt alone"
        );
    }

    #[test]
    fn token_lifetime_is_limited_to_a_day_by_default_and_always_in_production() {
        let defaults = settings();
        assert_eq!(
            defaults.max_token_lifetime,
            Some(Duration::from_secs(86_400))
        );
        let unlimited = AuthSettings {
            max_token_lifetime: None,
            ..settings()
        };
        assert_eq!(problems(&unlimited, false), Vec::<String>::new());
        assert_eq!(
            problems(&unlimited, true),
            ["auth.max_token_lifetime_secs: 0 (no limit) is refused in production"]
        );
        // Read and printed in seconds, 0 meaning no limit.
        let read: AuthSettings = serde_json::from_str(r#"{"max_token_lifetime_secs": 0}"#).unwrap();
        assert_eq!(read.max_token_lifetime, None);
        let read: AuthSettings =
            serde_json::from_str(r#"{"max_token_lifetime_secs": 3600}"#).unwrap();
        assert_eq!(read.max_token_lifetime, Some(Duration::from_secs(3600)));
        let printed = serde_json::to_value(&defaults).unwrap();
        assert_eq!(printed["max_token_lifetime_secs"], 86_400);
    }
}
