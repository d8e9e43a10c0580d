//! The verified-token cache: a token verified once costs a keyed hash and a
//! hash lookup until it expires, instead of a signature check per call.
//!
//! `quick_cache` rather than `moka`: we need a bounded, concurrent,
//! synchronous map and nothing else (expiry is the token's own `exp`, checked
//! on every hit below, not a cache-wide TTL). quick_cache does that with a
//! few small dependencies and lock-light reads; moka's background machinery
//! and its larger dependency tree buy us nothing here.
//!
//! Invariants:
//! - keyed by a 128-bit keyed hash of the token ([`TokenKeys`]), so the
//!   cache never holds a token, and no caller can make two tokens share an
//!   entry: the hash keys are random, made when the cache is, and never
//!   leave the process. Not a cryptographic digest, and it need not be one:
//!   nobody sees the hashes, so there is nothing to invert, and a collision
//!   can only be found by knowing the keys (aHash is built to resist
//!   collision floods from callers who do not). Two independently keyed
//!   64-bit hashes make an accidental collision between live tokens as
//!   unlikely as a 128-bit one. The SHA-256 it replaced was most of a
//!   cache hit's cost (the auth row of `bench/results/breakdown.md`);
//! - only successful verifications are cached (a refusal costs what it always
//!   did, and no attacker can fill the cache without valid tokens);
//! - a hit is used only while `now <= exp + leeway` (the same rule as a full
//!   check) and only if it was verified with the key set still in force
//!   (its generation), so a removed key's tokens stop working at the next
//!   refresh even if a verification raced with the swap; the cache is also
//!   cleared on every key change to free the memory.

use super::Principal;
use quick_cache::sync::Cache;

pub(super) type TokenDigest = [u64; 2];

/// The two random hash keys of one cache.
struct TokenKeys([ahash::RandomState; 2]);

impl TokenKeys {
    fn new() -> Self {
        // Each `RandomState::new()` draws fresh keys from the process's
        // random source (ahash's `runtime-rng`).
        Self([ahash::RandomState::new(), ahash::RandomState::new()])
    }

    fn digest(&self, token: &str) -> TokenDigest {
        [self.0[0].hash_one(token), self.0[1].hash_one(token)]
    }
}

#[derive(Clone)]
struct Entry {
    principal: Principal,
    /// The token's `exp` (seconds since the epoch).
    exp: u64,
    /// The key set generation it was verified with.
    generation: u64,
}

pub(super) struct TokenCache {
    keys: TokenKeys,
    entries: Cache<TokenDigest, Entry>,
}

impl TokenCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            keys: TokenKeys::new(),
            entries: Cache::new(capacity),
        }
    }

    /// The key `token` is cached under, in this cache only.
    pub(super) fn digest(&self, token: &str) -> TokenDigest {
        self.keys.digest(token)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_cache_and_tell_tokens_apart() {
        let (a, b) = (TokenCache::new(4), TokenCache::new(4));
        let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
        // The same token: the same key in one cache, another in the next
        // (its hash keys are its own, drawn at random).
        assert_eq!(a.digest(token), a.digest(token));
        assert_ne!(a.digest(token), b.digest(token));
        // Tokens a byte apart: both halves differ.
        let other = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lo";
        let (x, y) = (a.digest(token), a.digest(other));
        assert!(x[0] != y[0] && x[1] != y[1], "{x:?} {y:?}");
    }
}
