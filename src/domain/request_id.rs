//! The caller's idempotency key of a registration.

use super::validation::Violations;
use serde::{Deserialize, Serialize};

/// The caller's idempotency key (AIP-155): a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(raw: &str, path: &str, violations: &mut Violations) -> Option<Self> {
        match uuid::Uuid::try_parse(raw) {
            Ok(id) => Some(Self(id.hyphenated().to_string())),
            Err(_) => {
                violations.add(path, "must be a UUID");
                None
            }
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
