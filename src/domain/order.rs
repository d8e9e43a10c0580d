//! One version of an order, the rules of its life, and the error a broken
//! rule gives. [`RuleError`] lives here rather than in a file of its own:
//! only [`Order`]'s changes return it, and it names nothing but their rules.

use super::address::Address;
use super::customer_id::CustomerId;
use super::line_item::LineItem;
use super::new_order::NewOrder;
use super::order_id::OrderId;
use super::status::Status;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A lifecycle rule that a requested change breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The caller expected another version (optimistic concurrency).
    #[error("order is at version {actual}, not the expected {expected}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// The change is not allowed from the order's status.
    #[error("cannot {action} an order that is {status}")]
    Transition {
        action: &'static str,
        status: Status,
    },
}

/// One version of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    id: OrderId,
    customer_id: CustomerId,
    items: Vec<LineItem>,
    address: Address,
    status: Status,
    total_cents: i64,
    version: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl Order {
    /// A newly registered order: PENDING, version 1, total computed.
    pub fn register(
        id: OrderId,
        customer_id: CustomerId,
        new: NewOrder,
        now: DateTime<Utc>,
    ) -> Self {
        let (items, address) = new.into_parts();
        let total_cents = items.iter().map(LineItem::line_total).sum();
        Self {
            id,
            customer_id,
            items,
            address,
            status: Status::Pending,
            total_cents,
            version: 1,
            create_time: now,
            update_time: now,
        }
    }

    pub fn id(&self) -> &OrderId {
        &self.id
    }
    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }
    pub fn items(&self) -> &[LineItem] {
        &self.items
    }
    pub fn address(&self) -> &Address {
        &self.address
    }
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn total_cents(&self) -> i64 {
        self.total_cents
    }
    pub fn version(&self) -> i64 {
        self.version
    }
    pub fn create_time(&self) -> DateTime<Utc> {
        self.create_time
    }
    pub fn update_time(&self) -> DateTime<Utc> {
        self.update_time
    }

    /// `expected_version` 0 means "any version".
    fn check_version(&self, expected_version: i64) -> Result<(), RuleError> {
        if expected_version != 0 && expected_version != self.version {
            return Err(RuleError::VersionMismatch {
                expected: expected_version,
                actual: self.version,
            });
        }
        Ok(())
    }

    fn next(&self, status: Status, address: Address, now: DateTime<Utc>) -> Self {
        Self {
            status,
            address,
            version: self.version + 1,
            // Clocks of replicas may disagree; time never runs backwards within an order.
            update_time: now.max(self.update_time),
            ..self.clone()
        }
    }

    /// PENDING → CONFIRMED → SHIPPED → DELIVERED.
    pub fn advance(&self, expected_version: i64, now: DateTime<Utc>) -> Result<Self, RuleError> {
        self.check_version(expected_version)?;
        let next = match self.status {
            Status::Pending => Status::Confirmed,
            Status::Confirmed => Status::Shipped,
            Status::Shipped => Status::Delivered,
            status @ (Status::Delivered | Status::Cancelled) => {
                return Err(RuleError::Transition {
                    action: "advance",
                    status,
                });
            }
        };
        Ok(self.next(next, self.address.clone(), now))
    }

    /// Allowed while PENDING or CONFIRMED.
    pub fn cancel(&self, expected_version: i64, now: DateTime<Utc>) -> Result<Self, RuleError> {
        self.check_version(expected_version)?;
        match self.status {
            Status::Pending | Status::Confirmed => {
                Ok(self.next(Status::Cancelled, self.address.clone(), now))
            }
            status => Err(RuleError::Transition {
                action: "cancel",
                status,
            }),
        }
    }

    /// The customer moved: a new delivery address, refused once the order has
    /// shipped (or ended).
    fn relocate(&self, address: Address, now: DateTime<Utc>) -> Result<Self, RuleError> {
        match self.status {
            Status::Pending | Status::Confirmed => Ok(self.next(self.status, address, now)),
            status => Err(RuleError::Transition {
                action: "change the address of",
                status,
            }),
        }
    }

    /// Applies several address changes in order, each its own version; all
    /// or none.
    /// Every address in turn, each its own version, provided the order is at
    /// `expected_version` (0: any) before the first.
    pub fn relocate_all(
        &self,
        expected_version: i64,
        addresses: Vec<Address>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Self>, RuleError> {
        self.check_version(expected_version)?;
        let mut versions: Vec<Self> = Vec::with_capacity(addresses.len());
        for address in addresses {
            let current = versions.last().unwrap_or(self);
            let next = current.relocate(address, now)?;
            versions.push(next);
        }
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{address, now, order};

    #[test]
    fn a_new_order_is_pending_at_version_1_with_the_total_computed() {
        let o = order();
        assert_eq!(o.status(), Status::Pending);
        assert_eq!(o.version(), 1);
        assert_eq!(o.total_cents(), 3 * 250 + 2 * 99);
        assert_eq!(o.create_time(), o.update_time());
    }

    #[test]
    fn advance_walks_the_lifecycle_one_version_at_a_time_then_refuses() {
        let mut o = order();
        for expected in [Status::Confirmed, Status::Shipped, Status::Delivered] {
            let next = o.advance(0, now()).unwrap();
            assert_eq!(next.status(), expected);
            assert_eq!(next.version(), o.version() + 1);
            o = next;
        }
        assert_eq!(
            o.advance(0, now()),
            Err(RuleError::Transition {
                action: "advance",
                status: Status::Delivered
            })
        );
    }

    #[test]
    fn cancel_is_allowed_only_before_shipping() {
        let pending = order();
        assert_eq!(
            pending.cancel(0, now()).unwrap().status(),
            Status::Cancelled
        );
        let confirmed = pending.advance(0, now()).unwrap();
        assert_eq!(
            confirmed.cancel(0, now()).unwrap().status(),
            Status::Cancelled
        );
        let shipped = confirmed.advance(0, now()).unwrap();
        assert!(matches!(
            shipped.cancel(0, now()),
            Err(RuleError::Transition { .. })
        ));
        let cancelled = pending.cancel(0, now()).unwrap();
        assert!(matches!(
            cancelled.cancel(0, now()),
            Err(RuleError::Transition { .. })
        ));
        assert!(matches!(
            cancelled.advance(0, now()),
            Err(RuleError::Transition { .. })
        ));
    }

    #[test]
    fn a_wrong_expected_version_is_a_mismatch_and_zero_means_any() {
        let o = order();
        assert_eq!(
            o.cancel(7, now()),
            Err(RuleError::VersionMismatch {
                expected: 7,
                actual: 1
            })
        );
        assert!(o.advance(1, now()).is_ok());
        assert!(o.advance(0, now()).is_ok());
    }

    #[test]
    fn relocations_are_each_a_version_and_stop_at_shipping() {
        let o = order();
        let versions = o
            .relocate_all(0, vec![address("A"), address("B"), address("C")], now())
            .unwrap();
        assert_eq!(
            versions.iter().map(Order::version).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(versions.last().unwrap().address().street(), "C");
        let shipped = o.advance(0, now()).unwrap().advance(0, now()).unwrap();
        assert!(shipped.relocate_all(0, vec![address("D")], now()).is_err());
    }

    #[test]
    fn relocations_with_an_expected_version_apply_once() {
        let o = order();
        let first = o.relocate_all(1, vec![address("A")], now()).unwrap();
        assert_eq!(first.last().unwrap().version(), 2);
        // The same updates again, as a retry of an attempt that was applied.
        let again = first
            .last()
            .unwrap()
            .relocate_all(1, vec![address("A")], now());
        assert_eq!(
            again.unwrap_err(),
            RuleError::VersionMismatch {
                expected: 1,
                actual: 2
            }
        );
    }

    #[test]
    fn update_time_never_goes_backwards() {
        let o = order();
        let earlier = now() - chrono::Duration::hours(1);
        assert_eq!(
            o.advance(0, earlier).unwrap().update_time(),
            o.update_time()
        );
    }
}
