//! Who is calling, as far as the rules are concerned.

use super::customer_id::CustomerId;
use super::order::Order;

/// Who is calling, as far as the rules are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    customer_id: CustomerId,
    staff: bool,
}

impl Caller {
    pub fn new(customer_id: CustomerId, staff: bool) -> Self {
        Self { customer_id, staff }
    }
    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }
    /// Staff (`orders:admin`) see and act on every customer's orders.
    pub fn is_staff(&self) -> bool {
        self.staff
    }
    /// A customer sees only their own orders; staff see all. An order the
    /// caller may not see is treated exactly like an absent one.
    pub fn may_see(&self, order: &Order) -> bool {
        self.staff || *order.customer_id() == self.customer_id
    }
    /// The owner filter for listings: `None` for staff (everything).
    pub fn list_scope(&self) -> Option<&CustomerId> {
        (!self.staff).then_some(&self.customer_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::order;

    #[test]
    fn customers_see_their_own_orders_and_staff_see_all() {
        let o = order();
        let alice = Caller::new(CustomerId::new("alice").unwrap(), false);
        let bob = Caller::new(CustomerId::new("bob").unwrap(), false);
        let staff = Caller::new(CustomerId::new("staff-1").unwrap(), true);
        assert!(alice.may_see(&o));
        assert!(!bob.may_see(&o));
        assert!(staff.may_see(&o));
        assert_eq!(staff.list_scope(), None);
        assert_eq!(bob.list_scope().map(CustomerId::as_str), Some("bob"));
    }
}
