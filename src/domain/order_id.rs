//! An order's id.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An order's opaque id: a UUIDv7 string (time-ordered, so ids sort by creation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl OrderId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Parses a client-supplied id. `None` for anything that cannot name an
    /// order: callers answer NOT_FOUND for it, as for an absent order.
    pub fn parse(raw: &str) -> Option<Self> {
        let id = uuid::Uuid::try_parse(raw).ok()?;
        Some(Self(id.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_of_any_other_form_parse_to_none() {
        assert!(OrderId::parse("not-an-id").is_none());
        assert!(OrderId::parse("").is_none());
        assert!(OrderId::parse("'; DROP TABLE orders; --").is_none());
        let id = OrderId::generate();
        assert_eq!(OrderId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(OrderId::parse(&id.as_str().to_uppercase()), Some(id));
    }
}
