//! Opaque page tokens (AIP-158): the cursor of a keyset listing, bound to the
//! query it came from and signed with a key all replicas share, so a forged,
//! altered, foreign or stale token is refused (INVALID_ARGUMENT) instead of
//! silently listing something else.

use crate::domain::{OrderId, Status, Violations};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a page token stays usable.
pub const TOKEN_TTL_SECS: i64 = 24 * 60 * 60;
const MAC_LEN: usize = 16;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Payload {
    /// Last id of the previous page.
    after: String,
    /// The listing's status filter (0: none).
    status: i32,
    /// Whose listing: the customer, or "*" for staff.
    owner: String,
    /// Issued at, Unix seconds.
    iat: i64,
}

pub struct PageTokens {
    key: Vec<u8>,
}

/// The parts of a listing a token is bound to.
pub struct Query<'a> {
    pub owner: Option<&'a str>,
    pub status: Option<Status>,
}

impl Query<'_> {
    fn owner(&self) -> String {
        self.owner.unwrap_or("*").to_owned()
    }
    fn status(&self) -> i32 {
        self.status.map(Status::code).unwrap_or(0)
    }
}

impl PageTokens {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(payload);
        mac.finalize().into_bytes()[..MAC_LEN].to_vec()
    }

    pub fn issue(&self, query: &Query<'_>, after: &OrderId, now: i64) -> String {
        let payload = serde_json::to_vec(&Payload {
            after: after.to_string(),
            status: query.status(),
            owner: query.owner(),
            iat: now,
        })
        .expect("a payload always serializes");
        let mut bytes = self.mac(&payload);
        bytes.extend_from_slice(&payload);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor in `token`, if it is genuine, fresh and for this query.
    pub fn open(&self, query: &Query<'_>, token: &str, now: i64) -> Result<OrderId, Violations> {
        let invalid = |why: &str| {
            let mut v = Violations::default();
            v.add("page_token", why);
            v
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid("is not a page token from this service"))?;
        if bytes.len() <= MAC_LEN {
            return Err(invalid("is not a page token from this service"));
        }
        let (tag, payload) = bytes.split_at(MAC_LEN);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(payload);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(tag)
            .map_err(|_| invalid("is not a page token from this service"))?;
        let p: Payload = serde_json::from_slice(payload)
            .map_err(|_| invalid("is not a page token from this service"))?;
        if p.owner != query.owner() || p.status != query.status() {
            return Err(invalid(
                "belongs to a different listing (caller or status filter)",
            ));
        }
        if now - p.iat > TOKEN_TTL_SECS || p.iat - now > 300 {
            return Err(invalid("has expired; list again from the start"));
        }
        OrderId::parse(&p.after).ok_or_else(|| invalid("is not a page token from this service"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn query() -> Query<'static> {
        Query {
            owner: Some("alice"),
            status: None,
        }
    }

    #[test]
    fn a_token_round_trips() {
        let tokens = PageTokens::new(b"k");
        let id = OrderId::generate();
        let t = tokens.issue(&query(), &id, NOW);
        assert_eq!(tokens.open(&query(), &t, NOW + 10).unwrap(), id);
    }

    #[test]
    fn forged_altered_foreign_and_stale_tokens_are_refused() {
        let tokens = PageTokens::new(b"k");
        let t = tokens.issue(&query(), &OrderId::generate(), NOW);
        assert!(tokens.open(&query(), "garbage!", NOW).is_err());
        assert!(tokens.open(&query(), "", NOW).is_err());
        assert!(PageTokens::new(b"other").open(&query(), &t, NOW).is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        assert!(
            tokens
                .open(&query(), &URL_SAFE_NO_PAD.encode(bytes), NOW)
                .is_err()
        );
        let bob = Query {
            owner: Some("bob"),
            status: None,
        };
        assert!(tokens.open(&bob, &t, NOW).is_err());
        let shipped = Query {
            owner: Some("alice"),
            status: Some(Status::Shipped),
        };
        assert!(tokens.open(&shipped, &t, NOW).is_err());
        assert!(tokens.open(&query(), &t, NOW + TOKEN_TTL_SECS + 1).is_err());
    }
}
