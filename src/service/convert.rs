//! Wire ↔ domain. Parsing collects every violation of a message at once, with
//! the field paths the client wrote (AIP-193).

use crate::domain::{Address, LineItem, NewOrder, Order, RequestId, Status, Violations};
use crate::pb;
use chrono::{DateTime, Utc};

impl TryFrom<pb::RegisterOrderRequest> for NewOrder {
    type Error = Violations;

    fn try_from(req: pb::RegisterOrderRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let count = req.items.len();
        if count == 0 || count > crate::domain::MAX_ITEMS {
            v.add("items", "must hold 1 to 100 items");
        }
        let items: Vec<Option<LineItem>> = req
            .items
            .into_iter()
            .take(crate::domain::MAX_ITEMS)
            .enumerate()
            .map(|(i, item)| {
                LineItem::parse(
                    item.sku,
                    item.quantity,
                    item.unit_price_cents,
                    &format!("items[{i}]"),
                    &mut v,
                )
            })
            .collect();
        let address = parse_address(req.address, "address", &mut v);
        let request_id = if req.request_id.is_empty() {
            None
        } else {
            RequestId::parse(&req.request_id, "request_id", &mut v)
        };
        if !v.is_empty() {
            return Err(v);
        }
        let items = items.into_iter().flatten().collect();
        let address = v.into_result(address)?;
        NewOrder::new(items, address, request_id)
    }
}

/// An address that must be present.
pub fn parse_address(
    address: Option<pb::Address>,
    path: &str,
    v: &mut Violations,
) -> Option<Address> {
    match address {
        None => {
            v.add(path, "is required");
            None
        }
        Some(a) => Address::parse(a.street, a.number, a.city, a.postal_code, path, v),
    }
}

impl From<Status> for pb::OrderStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => pb::OrderStatus::Pending,
            Status::Confirmed => pb::OrderStatus::Confirmed,
            Status::Shipped => pb::OrderStatus::Shipped,
            Status::Delivered => pb::OrderStatus::Delivered,
            Status::Cancelled => pb::OrderStatus::Cancelled,
        }
    }
}

/// The status filter of a listing: `None` for UNSPECIFIED; `Err` for a number
/// that names no status.
pub fn status_filter(raw: i32) -> Result<Option<Status>, Violations> {
    match pb::OrderStatus::try_from(raw) {
        Ok(pb::OrderStatus::Unspecified) => Ok(None),
        Ok(s) => Ok(Status::from_code(s as i32)),
        Err(_) => {
            let mut v = Violations::default();
            v.add("status", "is not a known order status");
            Err(v)
        }
    }
}

fn timestamp(t: DateTime<Utc>) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl From<&Order> for pb::Order {
    fn from(o: &Order) -> Self {
        pb::Order {
            id: o.id().to_string(),
            customer_id: o.customer_id().as_str().to_owned(),
            items: o
                .items()
                .iter()
                .map(|i| pb::LineItem {
                    sku: i.sku().to_owned(),
                    quantity: i.quantity(),
                    unit_price_cents: i.unit_price_cents(),
                })
                .collect(),
            address: Some(pb::Address {
                street: o.address().street().to_owned(),
                number: o.address().number(),
                city: o.address().city().to_owned(),
                postal_code: o.address().postal_code().to_owned(),
            }),
            status: pb::OrderStatus::from(o.status()) as i32,
            total_cents: o.total_cents(),
            version: o.version(),
            create_time: Some(timestamp(o.create_time())),
            update_time: Some(timestamp(o.update_time())),
        }
    }
}

impl From<&Order> for pb::OrderEvent {
    fn from(o: &Order) -> Self {
        pb::OrderEvent {
            order: Some(o.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i32, price: i64) -> pb::LineItem {
        pb::LineItem {
            sku: sku.into(),
            quantity,
            unit_price_cents: price,
        }
    }

    fn address() -> pb::Address {
        pb::Address {
            street: "Main".into(),
            number: 1,
            city: "Delft".into(),
            postal_code: "2611 AA".into(),
        }
    }

    fn fields(err: Violations) -> Vec<String> {
        err.iter().map(|f| f.field.clone()).collect()
    }

    #[test]
    fn a_valid_request_parses() {
        let req = pb::RegisterOrderRequest {
            items: vec![item("A", 2, 10)],
            address: Some(address()),
            request_id: "0190f1c4-6a7a-7cc1-9f4b-1b2c3d4e5f60".into(),
        };
        let new = NewOrder::try_from(req).unwrap();
        assert_eq!(
            new.request_id().unwrap().as_str(),
            "0190f1c4-6a7a-7cc1-9f4b-1b2c3d4e5f60"
        );
    }

    #[test]
    fn all_violations_are_reported_together_with_paths() {
        let req = pb::RegisterOrderRequest {
            items: vec![item("A", 1, 1), item("", 0, 1), item("B", 1, -1)],
            address: Some(pb::Address {
                city: String::new(),
                ..address()
            }),
            request_id: "not-a-uuid".into(),
        };
        assert_eq!(
            fields(NewOrder::try_from(req).unwrap_err()),
            [
                "items[1].sku",
                "items[1].quantity",
                "items[2].unit_price_cents",
                "address.city",
                "request_id"
            ]
        );
    }

    #[test]
    fn missing_items_and_address_are_violations() {
        let req = pb::RegisterOrderRequest::default();
        assert_eq!(
            fields(NewOrder::try_from(req).unwrap_err()),
            ["items", "address"]
        );
    }

    #[test]
    fn too_many_items_is_one_violation() {
        let req = pb::RegisterOrderRequest {
            items: vec![item("A", 1, 1); 101],
            address: Some(address()),
            request_id: String::new(),
        };
        assert_eq!(fields(NewOrder::try_from(req).unwrap_err()), ["items"]);
    }

    #[test]
    fn status_filter_maps_unspecified_to_none_and_refuses_unknown_numbers() {
        assert_eq!(status_filter(0).unwrap(), None);
        assert_eq!(status_filter(3).unwrap(), Some(Status::Shipped));
        assert!(status_filter(42).is_err());
    }
}
