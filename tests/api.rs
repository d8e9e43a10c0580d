//! Every RPC and every error row of the API reference (the proto, docs/reference.md
//! "Errors", "Authentication and authorization") that the core
//! owns, through the SDK, against real servers on SQLite and PostgreSQL.

mod common;

use common::*;
use orders::sdk::pb::{self, OrderStatus};
use std::collections::HashSet;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

/// Runs `scenario` against a fresh server on every backend.
macro_rules! on_every_backend {
    (|$server:ident| $body:block) => {
        for backend in backends().await {
            let name = backend.name();
            eprintln!("-- backend: {name}");
            let $server = TestServer::start(backend).await;
            $body
            $server.stop().await;
        }
    };
}

fn status_of(order: &pb::Order) -> OrderStatus {
    OrderStatus::try_from(order.status).unwrap()
}

#[tokio::test]
async fn register_then_get_returns_a_pending_order_with_a_computed_total() {
    on_every_backend!(|server| {
        let alice = server.alice().await;
        let created = alice.register(register_request("")).await.unwrap();
        let order = created.order.unwrap();
        assert_eq!(created.order_id, order.id);
        assert_eq!(status_of(&order), OrderStatus::Pending);
        assert_eq!(order.version, 1);
        assert_eq!(order.total_cents, 3 * 250 + 2 * 99);
        assert_eq!(order.customer_id, "alice");
        assert!(order.create_time.is_some() && order.create_time == order.update_time);
        let fetched = alice.get_order(&order.id).await.unwrap();
        assert_eq!(fetched, order);
    });
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_order_and_a_changed_payload_is_already_exists() {
    on_every_backend!(|server| {
        let alice = server.alice().await;
        let rid = uuid::Uuid::new_v4().to_string();
        let first = alice.register(register_request(&rid)).await.unwrap();
        let again = alice.register(register_request(&rid)).await.unwrap();
        assert_eq!(first, again);
        let mut changed = register_request(&rid);
        changed.items[0].quantity = 4;
        let err = alice.register(changed).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        // The key is per caller: bob's identical request is bob's own order.
        let bob = server
            .bob()
            .await
            .register(register_request(&rid))
            .await
            .unwrap();
        assert_ne!(bob.order_id, first.order_id);
        assert_eq!(count_orders(&alice).await, 1);
    });
}

#[tokio::test]
async fn the_same_request_id_sent_concurrently_yields_exactly_one_order() {
    on_every_backend!(|server| {
        let alice = server.alice().await;
        let rid = uuid::Uuid::new_v4().to_string();
        let calls = (0..32).map(|_| {
            let alice = alice.clone();
            let rid = rid.clone();
            tokio::spawn(async move { alice.register(register_request(&rid)).await })
        });
        let mut ids = HashSet::new();
        for call in calls {
            ids.insert(call.await.unwrap().unwrap().order_id);
        }
        assert_eq!(ids.len(), 1, "one order for one request_id");
        assert_eq!(count_orders(&alice).await, 1);
    });
}

#[tokio::test]
async fn every_field_violation_is_reported_at_once_with_its_path() {
    on_every_backend!(|server| {
        let alice = server.alice().await;
        let request = pb::RegisterOrderRequest {
            items: vec![item("APPLE-1", 1, 1), item("bad sku", 0, 10_000_001)],
            address: Some(pb::Address {
                street: String::new(),
                number: 1_000_001,
                city: "c".repeat(201),
                postal_code: "12_34".into(),
            }),
            request_id: "not-a-uuid".into(),
        };
        let err = alice.register(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let fields: Vec<String> = err.violations().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "items[1].sku",
                "items[1].quantity",
                "items[1].unit_price_cents",
                "address.street",
                "address.number",
                "address.city",
                "address.postal_code",
                "request_id",
            ]
        );
        let err = alice
            .register(pb::RegisterOrderRequest::default())
            .await
            .unwrap_err();
        let fields: Vec<String> = err.violations().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["items", "address"]);
        // Nothing was stored.
        assert!(count_orders(&alice).await == 0);
    });
}

#[tokio::test]
async fn listing_pages_by_cursor_filters_by_status_and_keeps_customers_apart() {
    on_every_backend!(|server| {
        let (alice, bob, staff) = (
            server.alice().await,
            server.bob().await,
            server.staff().await,
        );
        let mut mine = Vec::new();
        for _ in 0..7 {
            mine.push(
                alice
                    .register_order(vec![item("A", 1, 1)], address("A"))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let bobs = bob
            .register_order(vec![item("B", 1, 1)], address("B"))
            .await
            .unwrap()
            .id;
        staff.advance_order(&mine[2], 0).await.unwrap();

        // Pages of 3: 3 + 3 + 1, in creation order, each a cursor.
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = alice
                .list_orders(pb::ListOrdersRequest {
                    page_size: 3,
                    page_token: token,
                    status: 0,
                })
                .await
                .unwrap();
            pages += 1;
            assert!(page.orders.len() <= 3);
            seen.extend(page.orders.into_iter().map(|o| o.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, mine, "every order once, oldest first, none of bob's");

        let confirmed = alice.list_all(OrderStatus::Confirmed, 0).await.unwrap();
        assert_eq!(
            confirmed.iter().map(|o| &o.id).collect::<Vec<_>>(),
            [&mine[2]]
        );
        let everything = staff.list_all(OrderStatus::Unspecified, 500).await.unwrap();
        assert_eq!(everything.len(), 8);
        assert!(everything.iter().any(|o| o.id == bobs));
        // page_size over 500 is clamped, not refused.
        let big = alice
            .list_orders(pb::ListOrdersRequest {
                page_size: 100_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(big.orders.len(), 7);
    });
}

#[tokio::test]
async fn forged_foreign_and_malformed_page_tokens_are_invalid_argument() {
    on_every_backend!(|server| {
        let (alice, bob) = (server.alice().await, server.bob().await);
        for _ in 0..3 {
            alice
                .register_order(vec![item("A", 1, 1)], address("A"))
                .await
                .unwrap();
        }
        let page = alice
            .list_orders(pb::ListOrdersRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let token = page.next_page_token;
        assert!(!token.is_empty());
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let cases = [
            ("garbage", "not-a-token!".to_string(), alice.clone(), 0),
            (
                "tampered",
                String::from_utf8(tampered).unwrap(),
                alice.clone(),
                0,
            ),
            ("another caller's", token.clone(), bob.clone(), 0),
            (
                "another filter's",
                token.clone(),
                alice.clone(),
                OrderStatus::Shipped as i32,
            ),
        ];
        for (what, page_token, client, status) in cases {
            let err = client
                .list_orders(pb::ListOrdersRequest {
                    page_size: 1,
                    page_token,
                    status,
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what} token");
            assert_eq!(err.violations()[0].0, "page_token", "{what} token");
        }
        let err = alice
            .list_orders(pb::ListOrdersRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = alice
            .list_orders(pb::ListOrdersRequest {
                status: 99,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.violations()[0].0, "status");
    });
}

#[tokio::test]
async fn another_customers_order_and_any_malformed_id_are_not_found() {
    on_every_backend!(|server| {
        let (alice, bob, staff) = (
            server.alice().await,
            server.bob().await,
            server.staff().await,
        );
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let absent = uuid::Uuid::now_v7().to_string();
        for id in [
            order.id.as_str(),
            absent.as_str(),
            "",
            "nope",
            "'; DROP TABLE orders; --",
        ] {
            let err = bob.get_order(id).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "id {id:?}");
            assert_eq!(
                err.status().unwrap().message(),
                "order not found",
                "no hint for {id:?}"
            );
        }
        assert_eq!(
            bob.cancel_order(&order.id, 0).await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            bob.update_order(&order.id, vec![address("X")])
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        assert_eq!(
            bob.watch_order_stream(&order.id, 0)
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        assert_eq!(staff.get_order(&order.id).await.unwrap(), order);
        assert_eq!(alice.get_order(&order.id).await.unwrap(), order);
    });
}

/// Staff act for customers, as a supermarket's customer service does: with
/// `orders:admin` and `orders:write` they re-address and cancel any
/// customer's order. `orders:admin` alone advances orders and changes
/// nothing else.
#[tokio::test]
async fn staff_with_write_act_for_customers_and_admin_alone_only_advances() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let admin_only = server.client("staff-2", "orders:read orders:admin").await;
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let err = admin_only.cancel_order(&order.id, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = admin_only
            .update_order(&order.id, vec![address("B")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);

        staff
            .update_order(&order.id, vec![address("Staff Street")])
            .await
            .expect("staff re-address a customer's order");
        let cancelled = staff.cancel_order(&order.id, 0).await.unwrap();
        assert_eq!(status_of(&cancelled), OrderStatus::Cancelled);
        // Still the customer's order, and the customer sees what staff did.
        let seen = alice.get_order(&order.id).await.unwrap();
        assert_eq!(seen.customer_id, "alice");
        assert_eq!(seen.address.as_ref().unwrap().street, "Staff Street");
        assert_eq!(status_of(&seen), OrderStatus::Cancelled);
    });
}

#[tokio::test]
async fn advance_walks_the_lifecycle_and_refuses_past_delivered() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let mut version = 1;
        for expected in [
            OrderStatus::Confirmed,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ] {
            let o = staff.advance_order(&order.id, version).await.unwrap();
            version += 1;
            assert_eq!((status_of(&o), o.version), (expected, version));
        }
        let err = staff.advance_order(&order.id, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let failure =
            tonic_types::StatusExt::get_details_precondition_failure(err.status().unwrap())
                .expect("PreconditionFailure details");
        assert_eq!(failure.violations[0].r#type, "STATUS");
        // Customers are not staff.
        let err = alice.advance_order(&order.id, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.reason().as_deref(), Some("MISSING_SCOPE"));
        assert_eq!(err.error_metadata()["required_scope"], "orders:admin");
    });
}

#[tokio::test]
async fn cancel_is_allowed_before_shipping_and_a_stale_expected_version_is_aborted() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        staff.advance_order(&order.id, 0).await.unwrap();
        let err = alice.cancel_order(&order.id, 1).await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        let cancelled = alice.cancel_order(&order.id, 2).await.unwrap();
        assert_eq!(
            (status_of(&cancelled), cancelled.version),
            (OrderStatus::Cancelled, 3)
        );
        assert_eq!(
            alice.cancel_order(&order.id, 0).await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            staff.advance_order(&order.id, 0).await.unwrap_err().code(),
            Code::FailedPrecondition
        );

        let shipped = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        staff.advance_order(&shipped.id, 0).await.unwrap();
        staff.advance_order(&shipped.id, 0).await.unwrap();
        assert_eq!(
            alice.cancel_order(&shipped.id, 0).await.unwrap_err().code(),
            Code::FailedPrecondition
        );
    });
}

#[tokio::test]
async fn concurrent_changes_each_get_their_own_version() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let updates = (0..8).map(|i| {
            let alice = alice.clone();
            let id = order.id.clone();
            tokio::spawn(async move {
                alice
                    .update_order(&id, vec![address(&format!("S{i}"))])
                    .await
            })
        });
        for u in updates {
            u.await.unwrap().unwrap();
        }
        let after = staff.get_order(&order.id).await.unwrap();
        assert_eq!(after.version, 9, "8 updates, 8 versions, none lost");
    });
}

#[tokio::test]
async fn update_applies_every_streamed_address_atomically_each_as_a_version() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let reply = alice
            .update_order(&order.id, vec![address("B"), address("C"), address("D")])
            .await
            .unwrap();
        assert_eq!(reply.updates_applied, 3);
        let updated = reply.order.unwrap();
        assert_eq!(updated.version, 4);
        assert_eq!(updated.address.unwrap().street, "D");

        // A stream naming two orders changes nothing.
        let other = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let mixed = vec![
            pb::UpdateOrderRequest {
                order_id: order.id.clone(),
                address: Some(address("E")),
                expected_version: 0,
            },
            pb::UpdateOrderRequest {
                order_id: other.id.clone(),
                address: Some(address("F")),
                expected_version: 0,
            },
        ];
        let err = alice
            .update_stream(tokio_stream::iter(mixed))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // One bad address among good ones changes nothing either.
        let mut bad = address("G");
        bad.city = String::new();
        let err = alice
            .update_order(&order.id, vec![address("F"), bad])
            .await
            .unwrap_err();
        assert_eq!(err.violations()[0].0, "address.city");
        assert_eq!(alice.get_order(&order.id).await.unwrap().version, 4);

        // An empty stream is refused.
        let err = alice
            .update_stream(tokio_stream::iter(vec![]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // Once shipped, the address is fixed.
        staff.advance_order(&order.id, 0).await.unwrap();
        staff.advance_order(&order.id, 0).await.unwrap();
        let err = alice
            .update_order(&order.id, vec![address("H")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(alice.get_order(&order.id).await.unwrap().version, 6);
    });
}

/// A client stream that is cut off before it ends (here by its deadline, as
/// when a client stalls or dies mid-stream) must leave the order untouched:
/// the versions are stored only when the whole stream has arrived. (A call
/// the client abandons after sending the end of its stream is another
/// matter: gRPC cancellation is best effort, and the change may be stored.)
#[tokio::test]
async fn an_update_stream_cut_off_mid_stream_changes_nothing() {
    on_every_backend!(|server| {
        let alice = server.alice().await;
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let call = {
            let alice = alice.with_timeout(Duration::from_millis(300));
            tokio::spawn(async move {
                alice
                    .update_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            })
        };
        tx.send(pb::UpdateOrderRequest {
            order_id: order.id.clone(),
            address: Some(address("B")),
            expected_version: 0,
        })
        .await
        .unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{err:?}"
        );
        // The stream's end arrives after the call is over: too late.
        drop(tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = alice.get_order(&order.id).await.unwrap();
        assert_eq!(
            (after.version, after.address.unwrap().street.as_str()),
            (1, "A")
        );
    });
}

async fn next_event(stream: &mut tonic::Streaming<pb::OrderEvent>) -> pb::Order {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("an event, not an error")
        .order
        .unwrap()
}

async fn assert_ends(stream: &mut tonic::Streaming<pb::OrderEvent>) {
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends within 10 s");
    assert!(end.is_none(), "stream ended OK, got {end:?}");
}

#[tokio::test]
async fn watch_sends_the_current_order_then_every_change_and_ends_when_final() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let mut watch = alice.watch_order_stream(&order.id, 0).await.unwrap();
        assert_eq!(next_event(&mut watch).await.version, 1);
        alice
            .update_order(&order.id, vec![address("B"), address("C")])
            .await
            .unwrap();
        staff.advance_order(&order.id, 0).await.unwrap();
        alice.cancel_order(&order.id, 0).await.unwrap();
        let mut versions = Vec::new();
        for _ in 0..4 {
            versions.push(next_event(&mut watch).await);
        }
        assert_eq!(
            versions.iter().map(|o| o.version).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        assert_eq!(versions[0].address.as_ref().unwrap().street, "B");
        assert_eq!(status_of(&versions[3]), OrderStatus::Cancelled);
        assert_ends(&mut watch).await;
    });
}

#[tokio::test]
async fn watch_resumes_after_a_version_without_missing_or_repeating_any() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        alice
            .update_order(&order.id, vec![address("B"), address("C")])
            .await
            .unwrap();
        staff.advance_order(&order.id, 0).await.unwrap(); // version 4
        let mut watch = alice.watch_order_stream(&order.id, 2).await.unwrap();
        assert_eq!(next_event(&mut watch).await.version, 3);
        assert_eq!(next_event(&mut watch).await.version, 4);
        staff.advance_order(&order.id, 0).await.unwrap();
        assert_eq!(next_event(&mut watch).await.version, 5);
        // Up to date: nothing is resent, later changes still arrive.
        let mut current = alice.watch_order_stream(&order.id, 5).await.unwrap();
        staff.advance_order(&order.id, 0).await.unwrap();
        let delivered = next_event(&mut current).await;
        assert_eq!(
            (delivered.version, status_of(&delivered)),
            (6, OrderStatus::Delivered)
        );
        assert_ends(&mut current).await;
        // Ahead of the order: OUT_OF_RANGE.
        assert_eq!(
            alice
                .watch_order_stream(&order.id, 99)
                .await
                .unwrap_err()
                .code(),
            Code::OutOfRange
        );
        // A final order's watch sends it and ends.
        let mut done = alice.watch_order_stream(&order.id, 0).await.unwrap();
        assert_eq!(next_event(&mut done).await.version, 6);
        assert_ends(&mut done).await;
    });
}

#[tokio::test]
async fn track_follows_many_orders_on_one_stream() {
    on_every_backend!(|server| {
        let (alice, staff) = (server.alice().await, server.staff().await);
        let a = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let b = alice
            .register_order(vec![item("B", 1, 1)], address("B"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut events = alice
            .track_orders_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        use pb::track_orders_request::Action;
        let send = |action| pb::TrackOrdersRequest {
            action: Some(action),
        };
        tx.send(send(Action::Subscribe(a.id.clone())))
            .await
            .unwrap();
        assert_eq!(next_event(&mut events).await.id, a.id);
        tx.send(send(Action::Subscribe(b.id.clone())))
            .await
            .unwrap();
        assert_eq!(next_event(&mut events).await.id, b.id);

        staff.advance_order(&a.id, 0).await.unwrap();
        let e = next_event(&mut events).await;
        assert_eq!((e.id.as_str(), e.version), (a.id.as_str(), 2));
        staff.advance_order(&b.id, 0).await.unwrap();
        let e = next_event(&mut events).await;
        assert_eq!((e.id.as_str(), e.version), (b.id.as_str(), 2));

        // After unsubscribing from a, only b's changes arrive.
        tx.send(send(Action::Unsubscribe(a.id.clone())))
            .await
            .unwrap();
        // Requests are handled in order: a re-subscribe of b (a no-op) proves
        // the unsubscribe took effect before the next change.
        tokio::time::sleep(Duration::from_millis(100)).await;
        staff.advance_order(&a.id, 0).await.unwrap();
        alice.cancel_order(&b.id, 0).await.unwrap();
        let e = next_event(&mut events).await;
        assert_eq!(
            (e.id.as_str(), status_of(&e)),
            (b.id.as_str(), OrderStatus::Cancelled)
        );

        // Half-closed with nothing left that can change: the stream ends OK.
        drop(tx);
        assert_ends(&mut events).await;
    });
}

#[tokio::test]
async fn track_ends_with_not_found_for_an_order_the_caller_cannot_see() {
    on_every_backend!(|server| {
        let (alice, bob) = (server.alice().await, server.bob().await);
        let a = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        let requests = vec![pb::TrackOrdersRequest {
            action: Some(pb::track_orders_request::Action::Subscribe(a.id.clone())),
        }];
        let mut events = bob
            .track_orders_stream(tokio_stream::iter(requests))
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    });
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_returns() {
    let server = TestServer::start(Backend::sqlite()).await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut watch = alice.watch_order_stream(&order.id, 0).await.unwrap();
    next_event(&mut watch).await;
    server.stop().await; // would hang if the open watch held the server
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable),
        None => {}
        Some(Ok(e)) => panic!("unexpected event {e:?}"),
    }
}

/// Many callers changing one order at once, none with a precondition: every
/// change is applied, one after another (none ends ABORTED for having lost
/// optimistic races), and the history has every version once.
#[tokio::test]
async fn concurrent_changes_to_one_order_all_apply() {
    on_every_backend!(|server| {
        let alice = server.alice().await;
        let order = alice
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
        const CALLERS: usize = 40;
        let calls = (0..CALLERS).map(|i| {
            let alice = alice.clone();
            let id = order.id.clone();
            tokio::spawn(async move {
                alice
                    .update_order(&id, vec![address(&format!("Street {i}"))])
                    .await
            })
        });
        for result in futures::future::join_all(calls).await {
            result.unwrap().unwrap();
        }
        let after = alice.get_order(&order.id).await.unwrap();
        assert_eq!(after.version, 1 + CALLERS as i64);
    });
}
