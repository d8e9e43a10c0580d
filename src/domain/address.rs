//! A delivery address.

use super::validation::Violations;
use serde::{Deserialize, Serialize};

/// A delivery address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    street: String,
    number: i64,
    city: String,
    postal_code: String,
}

impl Address {
    /// Checks every limit, recording violations under `path` (`address`).
    pub fn parse(
        street: String,
        number: i64,
        city: String,
        postal_code: String,
        path: &str,
        violations: &mut Violations,
    ) -> Option<Self> {
        let before = violations.len();
        let text_ok = |s: &str| (1..=200).contains(&s.chars().count()) && !s.trim().is_empty();
        if !text_ok(&street) {
            violations.add(format!("{path}.street"), "must be 1 to 200 characters");
        }
        if !(1..=1_000_000).contains(&number) {
            violations.add(format!("{path}.number"), "must be between 1 and 1000000");
        }
        if !text_ok(&city) {
            violations.add(format!("{path}.city"), "must be 1 to 200 characters");
        }
        let postal_ok = (1..=16).contains(&postal_code.chars().count())
            && postal_code
                .chars()
                .all(|c| c.is_alphanumeric() || c == ' ' || c == '-')
            && !postal_code.trim().is_empty();
        if !postal_ok {
            violations.add(
                format!("{path}.postal_code"),
                "must be 1 to 16 letters, digits, spaces or '-'",
            );
        }
        (violations.len() == before).then_some(Self {
            street,
            number,
            city,
            postal_code,
        })
    }

    pub fn street(&self) -> &str {
        &self.street
    }
    pub fn number(&self) -> i64 {
        self.number
    }
    pub fn city(&self) -> &str {
        &self.city
    }
    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_limits_at_and_past_their_bounds() {
        let ok = |street: &str, number: i64, city: &str, postal: &str| {
            let mut v = Violations::default();
            Address::parse(
                street.into(),
                number,
                city.into(),
                postal.into(),
                "address",
                &mut v,
            )
            .is_some()
        };
        assert!(ok(
            &"s".repeat(200),
            1_000_000,
            &"c".repeat(200),
            &"1".repeat(16)
        ));
        assert!(ok("Straße", 1, "Zürich", "8001"));
        assert!(!ok(&"s".repeat(201), 1, "c", "1"));
        assert!(!ok("s", 1_000_001, "c", "1"));
        assert!(!ok("s", 1, "c", &"1".repeat(17)));
        assert!(!ok("s", 1, "c", "12_34"));
        assert!(!ok("   ", 1, "c", "1"));
    }
}
