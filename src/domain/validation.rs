//! Field violations, collected across a whole request so the caller learns of
//! every problem at once (AIP-193 `google.rpc.BadRequest`).

/// One field that breaks a rule, with its path as the client wrote it
/// (`items[0].quantity`, `address.city`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Every violation found in one request, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldViolation> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// `Ok(value)` when nothing was violated.
    pub fn into_result<T>(self, value: Option<T>) -> Result<T, Violations> {
        match value {
            Some(v) if self.is_empty() => Ok(v),
            _ => Err(self),
        }
    }
}

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Address, LineItem};

    #[test]
    fn every_violation_of_a_request_is_reported_with_its_path() {
        let mut v = Violations::default();
        assert!(LineItem::parse("bad sku".into(), 0, -5, "items[2]", &mut v).is_none());
        assert!(
            Address::parse(
                String::new(),
                0,
                "x".repeat(201),
                "!!".into(),
                "address",
                &mut v
            )
            .is_none()
        );
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[2].sku",
                "items[2].quantity",
                "items[2].unit_price_cents",
                "address.street",
                "address.number",
                "address.city",
                "address.postal_code",
            ]
        );
    }
}
