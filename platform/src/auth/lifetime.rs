//! When a token may be used, beyond `exp` and `nbf` (which jsonwebtoken
//! checks): it was not issued in the future, and it lives no longer than
//! the configured limit (`auth.max_token_lifetime_secs`).
//!
//! - `iat` later than now plus the leeway: the issuer's clock is wrong or
//!   the token was not made by it; refused.
//! - The lifetime is `exp - iat`. Without `iat`, the token is taken as
//!   issued now (give or take the leeway), so `exp - now` is what must fit:
//!   a token without `iat` is still bounded, and no older than it says.
//! - `iat` is optional; when present it must be a whole, non-negative
//!   number of seconds, read as `exp` is.
//!
//! Both hold at every later moment once they hold at the first check
//! (`iat` only falls further behind, `exp - now` only shrinks), so a
//! verdict kept in the token cache stays right.

use super::AuthError;

/// `iat` as the token holds it: absent, or present with any value (`null`
/// included), so that what is not a NumericDate can be refused.
pub(super) fn present<'de, D>(d: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(d).map(Some)
}

/// The rules on `iat` and on the lifetime, for a token expiring at `exp`,
/// checked at `now` with `leeway` seconds of clock skew; `max_lifetime` in
/// seconds, `None` for no limit.
pub(super) fn check(
    iat: Option<&serde_json::Value>,
    exp: u64,
    now: u64,
    leeway: u64,
    max_lifetime: Option<u64>,
) -> Result<(), AuthError> {
    let iat = match iat {
        None => None,
        Some(value) => Some(value.as_u64().ok_or(AuthError::Malformed)?),
    };
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(AuthError::IssuedInFuture);
    }
    let Some(max) = max_lifetime else {
        return Ok(());
    };
    let too_long = match iat {
        Some(iat) => exp.saturating_sub(iat) > max,
        None => exp.saturating_sub(now) > max.saturating_add(leeway),
    };
    if too_long {
        Err(AuthError::LifetimeTooLong)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TokenRules;
    use crate::auth::test_tokens::{Signer, refused};
    use serde_json::{Value, json};

    const DAY: u64 = 86_400;

    fn rules(leeway_secs: u64, max_lifetime_secs: Option<u64>) -> TokenRules {
        TokenRules {
            leeway_secs,
            max_lifetime_secs,
            ..Signer::rules()
        }
    }

    /// Valid claims with `iat` and `exp` set (`None`: left out).
    fn claims(iat: Option<Value>, exp: u64) -> Value {
        let mut claims = Signer::claims();
        let map = claims.as_object_mut().unwrap();
        map.remove("iat");
        map.remove("nbf");
        if let Some(iat) = iat {
            map.insert("iat".into(), iat);
        }
        map.insert("exp".into(), exp.into());
        claims
    }

    fn now() -> u64 {
        crate::auth::unix_now()
    }

    #[test]
    fn a_token_issued_later_than_now_plus_the_leeway_is_refused() {
        let signer = Signer::new();
        let header = Signer::header(Some("JWT"));
        let strict = signer.cached_verifier(rules(0, Some(DAY)));
        let lenient = signer.cached_verifier(rules(30, Some(DAY)));
        let now = now();

        let ahead = signer.sign(&header, &claims(Some(json!(now + 3600)), now + 7200));
        for verifier in [&strict, &lenient] {
            let refusal = refused(verifier, &ahead);
            assert_eq!(refusal, AuthError::IssuedInFuture);
            assert_eq!(refusal.reason(), "TOKEN_ISSUED_IN_FUTURE");
            // Refused again: a refusal is never cached.
            assert_eq!(refused(verifier, &ahead), AuthError::IssuedInFuture);
        }
        // A few seconds ahead: within 30 s of leeway, not within none.
        let skewed = signer.sign(&header, &claims(Some(json!(now + 10)), now + 600));
        assert_eq!(refused(&strict, &skewed), AuthError::IssuedInFuture);
        assert!(lenient.verify(&skewed).is_ok());
        // Issued now or earlier, or not saying when: fine.
        for iat in [Some(json!(now)), Some(json!(now - 3600)), None] {
            let token = signer.sign(&header, &claims(iat.clone(), now + 600));
            assert!(strict.verify(&token).is_ok(), "iat {iat:?}");
        }
    }

    #[test]
    fn an_iat_that_is_not_a_whole_number_of_seconds_is_malformed() {
        let signer = Signer::new();
        let verifier = signer.cached_verifier(rules(30, Some(DAY)));
        let now = now();
        for iat in [
            json!(now.to_string()),
            json!(now as f64 - 0.5),
            json!(-1),
            Value::Null,
            json!([now]),
            json!(true),
        ] {
            let token = signer.sign(
                &Signer::header(Some("JWT")),
                &claims(Some(iat.clone()), now + 600),
            );
            assert_eq!(
                refused(&verifier, &token),
                AuthError::Malformed,
                "iat {iat}"
            );
        }
    }

    #[test]
    fn a_token_living_longer_than_the_limit_is_refused_counting_from_iat() {
        let signer = Signer::new();
        let header = Signer::header(Some("JWT"));
        let verifier = signer.cached_verifier(rules(30, Some(DAY)));
        let iat = now() - 60;
        // Exactly the limit passes; a second more does not, whatever the
        // leeway (no clock is involved in `exp - iat`).
        let day = signer.sign(&header, &claims(Some(json!(iat)), iat + DAY));
        assert!(verifier.verify(&day).is_ok());
        let longer = signer.sign(&header, &claims(Some(json!(iat)), iat + DAY + 1));
        let refusal = refused(&verifier, &longer);
        assert_eq!(refusal, AuthError::LifetimeTooLong);
        assert_eq!(refusal.reason(), "TOKEN_LIFETIME_TOO_LONG");
        // A token issued long ago with a far `exp`: its lifetime counts,
        // not the time it has left.
        let old = now() - 30 * DAY;
        let year = signer.sign(&header, &claims(Some(json!(old)), old + 365 * DAY));
        assert_eq!(refused(&verifier, &year), AuthError::LifetimeTooLong);
    }

    #[test]
    fn without_iat_the_limit_counts_from_now_give_or_take_the_leeway() {
        let signer = Signer::new();
        let header = Signer::header(Some("JWT"));
        let verifier = signer.cached_verifier(rules(30, Some(DAY)));
        let now = now();
        let within = signer.sign(&header, &claims(None, now + DAY + 30));
        assert!(verifier.verify(&within).is_ok());
        let beyond = signer.sign(&header, &claims(None, now + DAY + 40));
        assert_eq!(refused(&verifier, &beyond), AuthError::LifetimeTooLong);
        let forever = signer.sign(&header, &claims(None, u64::MAX / 2));
        assert_eq!(refused(&verifier, &forever), AuthError::LifetimeTooLong);
    }

    #[test]
    fn with_no_limit_any_lifetime_passes_but_not_a_future_iat() {
        let signer = Signer::new();
        let header = Signer::header(Some("JWT"));
        let verifier = signer.cached_verifier(rules(0, None));
        let now = now();
        let old = now - 30 * DAY;
        for token in [
            signer.sign(&header, &claims(Some(json!(old)), old + 365 * DAY)),
            signer.sign(&header, &claims(None, now + 365 * DAY)),
        ] {
            assert!(verifier.verify(&token).is_ok());
        }
        let ahead = signer.sign(&header, &claims(Some(json!(now + 3600)), now + 7200));
        assert_eq!(refused(&verifier, &ahead), AuthError::IssuedInFuture);
    }

    /// The rule itself at its edges, with a fixed clock.
    #[test]
    fn the_rule_at_its_edges() {
        let now = 1_000_000;
        let at = |iat: Option<u64>, exp: u64, leeway: u64| {
            let iat = iat.map(Value::from);
            check(iat.as_ref(), exp, now, leeway, Some(DAY))
        };
        assert_eq!(at(Some(now + 30), now + 60, 30), Ok(()));
        assert_eq!(
            at(Some(now + 31), now + 60, 30),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(at(Some(now), now + DAY, 0), Ok(()));
        assert_eq!(
            at(Some(now), now + DAY + 1, 30),
            Err(AuthError::LifetimeTooLong)
        );
        assert_eq!(at(None, now + DAY + 30, 30), Ok(()));
        assert_eq!(
            at(None, now + DAY + 31, 30),
            Err(AuthError::LifetimeTooLong)
        );
        assert_eq!(at(None, u64::MAX, u64::MAX), Ok(()), "no overflow");
        assert_eq!(
            at(Some(u64::MAX), u64::MAX, 0),
            Err(AuthError::IssuedInFuture)
        );
        assert_eq!(check(None, u64::MAX, now, 0, None), Ok(()));
    }
}
