//! A valid request to register an order, before it is an order.

use super::address::Address;
use super::line_item::LineItem;
use super::request_id::RequestId;
use super::validation::Violations;
use sha2::{Digest, Sha256};

/// Most items an order may carry.
pub const MAX_ITEMS: usize = 100;

/// A valid request to register an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    items: Vec<LineItem>,
    address: Address,
    request_id: Option<RequestId>,
}

impl NewOrder {
    /// Assembles a new order from parts that were parsed separately; the item
    /// count is the one rule that spans parts, so it is checked here.
    pub fn new(
        items: Vec<LineItem>,
        address: Address,
        request_id: Option<RequestId>,
    ) -> Result<Self, Violations> {
        let mut v = Violations::default();
        if items.is_empty() || items.len() > MAX_ITEMS {
            v.add("items", "must hold 1 to 100 items");
            return Err(v);
        }
        Ok(Self {
            items,
            address,
            request_id,
        })
    }

    pub fn request_id(&self) -> Option<&RequestId> {
        self.request_id.as_ref()
    }

    /// What the order is made of (`Order::register`); the key stays behind.
    pub(super) fn into_parts(self) -> (Vec<LineItem>, Address) {
        (self.items, self.address)
    }

    /// A digest of what was asked for (items and address, not the key), so a
    /// repeated `request_id` can be told apart from a reused one.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for item in &self.items {
            h.update(item.sku().as_bytes());
            h.update([0]);
            h.update(item.quantity().to_be_bytes());
            h.update(item.unit_price_cents().to_be_bytes());
        }
        h.update([0xff]);
        for field in [
            self.address.street(),
            self.address.city(),
            self.address.postal_code(),
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(self.address.number().to_be_bytes());
        let digest = h.finalize();
        // One string for the whole digest, not one allocation per byte.
        hex::encode(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{address, item};

    #[test]
    fn an_order_needs_one_to_a_hundred_items() {
        assert!(NewOrder::new(vec![], address("A"), None).is_err());
        assert!(NewOrder::new(vec![item("A", 1, 1); 100], address("A"), None).is_ok());
        let err = NewOrder::new(vec![item("A", 1, 1); 101], address("A"), None).unwrap_err();
        assert_eq!(err.iter().next().unwrap().field, "items");
    }

    #[test]
    fn the_fingerprint_tells_payloads_apart_but_ignores_the_request_id() {
        let mut v = Violations::default();
        let rid = RequestId::parse("0190f1c4-6a7a-7cc1-9f4b-1b2c3d4e5f60", "request_id", &mut v);
        let a = NewOrder::new(vec![item("A", 1, 1)], address("A"), None).unwrap();
        let a2 = NewOrder::new(vec![item("A", 1, 1)], address("A"), rid).unwrap();
        let b = NewOrder::new(vec![item("A", 2, 1)], address("A"), None).unwrap();
        let c = NewOrder::new(vec![item("A", 1, 1)], address("B"), None).unwrap();
        assert_eq!(a.fingerprint(), a2.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        // Stored beside the order: its form must not change between versions.
        let f = a.fingerprint();
        assert!(
            f.len() == 64 && f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "lowercase hex of a SHA-256: {f}"
        );
    }
}
