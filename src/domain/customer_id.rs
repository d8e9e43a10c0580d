//! The customer an order belongs to.

use serde::{Deserialize, Serialize};

/// The customer an order belongs to: the `sub` claim of the registering token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(String);

impl CustomerId {
    /// `None` for an empty subject, which can own nothing.
    pub fn new(sub: impl Into<String>) -> Option<Self> {
        let sub = sub.into();
        (!sub.is_empty()).then_some(Self(sub))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
