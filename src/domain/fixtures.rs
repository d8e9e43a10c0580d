//! Valid values for the crate's unit tests, at a fixed time.

use super::{Address, CustomerId, LineItem, NewOrder, Order, OrderId, Violations};
use chrono::{DateTime, Utc};

pub(crate) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

pub(crate) fn address(street: &str) -> Address {
    let mut v = Violations::default();
    Address::parse(
        street.into(),
        12,
        "Utrecht".into(),
        "3511 AB".into(),
        "address",
        &mut v,
    )
    .expect("valid address")
}

pub(crate) fn item(sku: &str, quantity: i32, price: i64) -> LineItem {
    let mut v = Violations::default();
    LineItem::parse(sku.into(), quantity, price, "items[0]", &mut v).expect("valid item")
}

/// Alice's order of two lines (3 × 250 and 2 × 99 cents), registered at [`now`].
pub(crate) fn order() -> Order {
    order_of("alice")
}

/// The same order, of another customer.
pub(crate) fn order_of(customer: &str) -> Order {
    let new = NewOrder::new(
        vec![item("APPLE-1", 3, 250), item("MILK", 2, 99)],
        address("Main"),
        None,
    )
    .unwrap();
    Order::register(
        OrderId::generate(),
        CustomerId::new(customer).unwrap(),
        new,
        now(),
    )
}
