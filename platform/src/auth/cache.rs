//! The verified-token cache: a token verified once costs a SHA-256 and a
//! hash lookup until it expires, instead of a signature check per call.
//!
//! `quick_cache` rather than `moka`: we need a bounded, concurrent,
//! synchronous map and nothing else (expiry is the token's own `exp`, checked
//! on every hit below, not a cache-wide TTL). quick_cache does that with a
//! few small dependencies and lock-light reads; moka's background machinery
//! and its larger dependency tree buy us nothing here.
//!
//! Invariants:
//! - keyed by the SHA-256 of the token, so the cache never holds a token;
//! - only successful verifications are cached (a refusal costs what it always
//!   did, and no attacker can fill the cache without valid tokens);
//! - a hit is used only while `now <= exp + leeway` (the same rule as a full
//!   check) and only if it was verified with the key set still in force
//!   (its generation), so a removed key's tokens stop working at the next
//!   refresh even if a verification raced with the swap; the cache is also
//!   cleared on every key change to free the memory.

use super::Principal;
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

pub(super) type TokenDigest = [u8; 32];

#[derive(Clone)]
struct Entry {
    principal: Principal,
    /// The token's `exp` (seconds since the epoch).
    exp: u64,
    /// The key set generation it was verified with.
    generation: u64,
}

pub(super) struct TokenCache {
    entries: Cache<TokenDigest, Entry>,
}

impl TokenCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity),
        }
    }

    pub(super) fn digest(token: &str) -> TokenDigest {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached principal, if the token was verified with key set
    /// `generation` and is not expired at `now` (with `leeway`).
    pub(super) fn get(
        &self,
        digest: &TokenDigest,
        generation: u64,
        now: u64,
        leeway: u64,
    ) -> Option<Principal> {
        let entry = self.entries.get(digest)?;
        if entry.generation == generation && now <= entry.exp.saturating_add(leeway) {
            Some(entry.principal)
        } else {
            self.entries.remove(digest);
            None
        }
    }

    pub(super) fn insert(
        &self,
        digest: TokenDigest,
        principal: Principal,
        exp: u64,
        generation: u64,
    ) {
        self.entries.insert(
            digest,
            Entry {
                principal,
                exp,
                generation,
            },
        );
    }

    pub(super) fn clear(&self) {
        self.entries.clear();
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
