//! The orders domain: types that cannot be invalid, and the rules of an
//! order's life. No I/O and no protobuf here; `service::convert` parses wire
//! messages into these types, `store` persists them.
//!
//! Invariants kept by construction (private fields, checked constructors):
//! - an [`Order`] has 1 to 100 valid [`LineItem`]s and a valid [`Address`];
//! - `total_cents` is always the sum of the items;
//! - every change returns a new `Order` whose `version` is exactly one more.

mod validation;

pub use validation::{FieldViolation, Violations};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Most items an order may carry.
pub const MAX_ITEMS: usize = 100;

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
    fn line_total(&self) -> i64 {
        i64::from(self.quantity) * self.unit_price_cents
    }
}

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

/// The caller's idempotency key (AIP-155): a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(raw: &str, path: &str, violations: &mut Violations) -> Option<Self> {
        match uuid::Uuid::try_parse(raw) {
            Ok(id) => Some(Self(id.hyphenated().to_string())),
            Err(_) => {
                violations.add(path, "must be a UUID");
                None
            }
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

    /// A digest of what was asked for (items and address, not the key), so a
    /// repeated `request_id` can be told apart from a reused one.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for item in &self.items {
            h.update(item.sku.as_bytes());
            h.update([0]);
            h.update(item.quantity.to_be_bytes());
            h.update(item.unit_price_cents.to_be_bytes());
        }
        h.update([0xff]);
        for field in [
            &self.address.street,
            &self.address.city,
            &self.address.postal_code,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.update(self.address.number.to_be_bytes());
        let digest = h.finalize();
        // One string, not a string per byte (was 2% of a RegisterOrder).
        hex::encode(digest)
    }
}

/// Where an order is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    /// Delivered and cancelled orders never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Cancelled)
    }

    /// The stable number used on the wire and in the database.
    pub fn code(self) -> i32 {
        match self {
            Status::Pending => 1,
            Status::Confirmed => 2,
            Status::Shipped => 3,
            Status::Delivered => 4,
            Status::Cancelled => 5,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Status::Pending,
            2 => Status::Confirmed,
            3 => Status::Shipped,
            4 => Status::Delivered,
            5 => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Confirmed => "CONFIRMED",
            Status::Shipped => "SHIPPED",
            Status::Delivered => "DELIVERED",
            Status::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
        let total_cents = new.items.iter().map(LineItem::line_total).sum();
        Self {
            id,
            customer_id,
            items: new.items,
            address: new.address,
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
    pub fn relocate(&self, address: Address, now: DateTime<Utc>) -> Result<Self, RuleError> {
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
        self.staff || order.customer_id == self.customer_id
    }
    /// The owner filter for listings: `None` for staff (everything).
    pub fn list_scope(&self) -> Option<&CustomerId> {
        (!self.staff).then_some(&self.customer_id)
    }
}

#[cfg(test)]
mod tests;
