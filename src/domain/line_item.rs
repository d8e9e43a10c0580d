//! One line of an order.

use super::validation::Violations;
use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    sku: String,
    quantity: i32,
    unit_price_cents: i64,
}

impl LineItem {
    /// Checks every limit, recording each violation under `path` (for example
    /// `items[3]`) so one request reports all of its problems at once.
    pub fn parse(
        sku: String,
        quantity: i32,
        unit_price_cents: i64,
        path: &str,
        violations: &mut Violations,
    ) -> Option<Self> {
        let before = violations.len();
        let sku_ok = (1..=64).contains(&sku.chars().count())
            && sku
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
        if !sku_ok {
            violations.add(
                format!("{path}.sku"),
                "must be 1 to 64 characters of A-Z, 0-9 and '-'",
            );
        }
        if !(1..=1_000).contains(&quantity) {
            violations.add(format!("{path}.quantity"), "must be between 1 and 1000");
        }
        if !(0..=10_000_000).contains(&unit_price_cents) {
            violations.add(
                format!("{path}.unit_price_cents"),
                "must be between 0 and 10000000",
            );
        }
        (violations.len() == before).then_some(Self {
            sku,
            quantity,
            unit_price_cents,
        })
    }

    pub fn sku(&self) -> &str {
        &self.sku
    }
    pub fn quantity(&self) -> i32 {
        self.quantity
    }
    pub fn unit_price_cents(&self) -> i64 {
        self.unit_price_cents
    }
    /// What the line costs; an order's total is the sum of these.
    pub(super) fn line_total(&self) -> i64 {
        i64::from(self.quantity) * self.unit_price_cents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_item_limits_at_and_past_their_bounds() {
        let ok = |sku: &str, q: i32, p: i64| {
            let mut v = Violations::default();
            LineItem::parse(sku.into(), q, p, "items[0]", &mut v).is_some()
        };
        assert!(ok("A", 1, 0));
        assert!(ok(&"Z".repeat(64), 1_000, 10_000_000));
        assert!(!ok("", 1, 0));
        assert!(!ok(&"Z".repeat(65), 1, 0));
        assert!(!ok("apple", 1, 0));
        assert!(!ok("A B", 1, 0));
        assert!(!ok("A", 0, 0));
        assert!(!ok("A", 1_001, 0));
        assert!(!ok("A", 1, -1));
        assert!(!ok("A", 1, 10_000_001));
    }
}
