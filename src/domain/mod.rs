//! The orders domain: types that cannot be invalid, and the rules of an
//! order's life. No I/O and no protobuf here; `service::convert` parses wire
//! messages into these types, `store` persists them.
//!
//! Invariants kept by construction (private fields, checked constructors):
//! - an [`Order`] has 1 to 100 valid [`LineItem`]s and a valid [`Address`];
//! - `total_cents` is always the sum of the items;
//! - every change returns a new `Order` whose `version` is exactly one more.
//!
//! One type per file, each with its rules and their tests; `crate::domain::X`
//! names them all.

mod address;
mod caller;
mod customer_id;
mod line_item;
mod new_order;
mod order;
mod order_id;
mod request_id;
mod status;
mod validation;

#[cfg(test)]
pub(crate) mod fixtures;

pub use address::Address;
pub use caller::Caller;
pub use customer_id::CustomerId;
pub use line_item::LineItem;
pub use new_order::{MAX_ITEMS, NewOrder};
pub use order::{Order, RuleError};
pub use order_id::OrderId;
pub use request_id::RequestId;
pub use status::Status;
pub use validation::{FieldViolation, Violations};
