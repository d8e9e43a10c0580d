use super::*;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn address(street: &str) -> Address {
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

fn item(sku: &str, quantity: i32, price: i64) -> LineItem {
    let mut v = Violations::default();
    LineItem::parse(sku.into(), quantity, price, "items[0]", &mut v).expect("valid item")
}

fn order() -> Order {
    let new = NewOrder::new(
        vec![item("APPLE-1", 3, 250), item("MILK", 2, 99)],
        address("Main"),
        None,
    )
    .unwrap();
    Order::register(
        OrderId::generate(),
        CustomerId::new("alice").unwrap(),
        new,
        now(),
    )
}

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

#[test]
fn order_ids_of_any_other_form_parse_to_none() {
    assert!(OrderId::parse("not-an-id").is_none());
    assert!(OrderId::parse("").is_none());
    assert!(OrderId::parse("'; DROP TABLE orders; --").is_none());
    let id = OrderId::generate();
    assert_eq!(OrderId::parse(id.as_str()), Some(id.clone()));
    assert_eq!(OrderId::parse(&id.as_str().to_uppercase()), Some(id));
}

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

#[test]
fn status_codes_round_trip() {
    for s in [
        Status::Pending,
        Status::Confirmed,
        Status::Shipped,
        Status::Delivered,
        Status::Cancelled,
    ] {
        assert_eq!(Status::from_code(s.code()), Some(s));
    }
    assert_eq!(Status::from_code(0), None);
    assert!(Status::Delivered.is_final() && Status::Cancelled.is_final());
    assert!(!Status::Shipped.is_final());
}
