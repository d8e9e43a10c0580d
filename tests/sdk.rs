//! The SDK against real servers: retries across a restart that never
//! duplicate an order, a watch that survives a restart, balancing, DNS
//! discovery, per-call deadlines and token files rewritten mid-run.

mod common;

use common::*;
use orders::sdk::{Client, FileToken, RetryPolicy};
use sqlx::Connection;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::Code;

/// A server on a fixed port, so it can be restarted where clients expect it.
async fn start_on(port: u16, certs: Arc<Certs>, backend: Backend) -> TestServer {
    TestServer::start_with(certs, backend, |s| {
        s.server.addr = std::net::SocketAddr::from(([127, 0, 0, 1], port))
    })
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sqlite_count(backend: &Backend, sql: &str) -> i64 {
    let mut conn = sqlx::SqliteConnection::connect(&backend.url())
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap();
    n
}

#[tokio::test]
async fn registrations_retried_across_a_restart_are_never_duplicated() {
    let certs = Arc::new(Certs::new());
    let backend = Backend::sqlite();
    let port = free_port();
    let server = start_on(port, certs.clone(), backend.clone()).await;
    let client = Client::builder(format!("https://localhost:{port}"))
        .ca_certificate(certs.ca())
        .token(certs.token("alice", READ_WRITE))
        .retry(
            RetryPolicy::default()
                .max_attempts(12)
                .max_backoff(Duration::from_millis(500)),
        )
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    // 10 clients register 30 orders each while the server restarts.
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..30 {
                    let sku = format!("W{w}-{i}");
                    let order = client
                        .register_order(vec![item(&sku, 1, 100)], address("A"))
                        .await;
                    acknowledged.push(order.map(|o| o.id));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = start_on(port, certs.clone(), backend.clone()).await;

    let mut ids = Vec::new();
    for writer in writers {
        for result in writer.await.unwrap() {
            ids.push(
                result.unwrap_or_else(|e| {
                    panic!("every registration succeeds through retries: {e:?}")
                }),
            );
        }
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 300);
    assert_eq!(distinct.len(), 300, "no order acknowledged twice");
    server.stop().await;
    // Counted in the database itself: exactly the acknowledged orders.
    assert_eq!(
        sqlite_count(&backend, "SELECT COUNT(*) FROM orders").await,
        300
    );
    assert_eq!(
        sqlite_count(&backend, "SELECT COUNT(DISTINCT request_id) FROM orders").await,
        300,
        "one order per request_id"
    );
}

#[tokio::test]
async fn a_watch_survives_a_restart_without_missing_or_repeating_a_version() {
    let certs = Arc::new(Certs::new());
    let backend = Backend::sqlite();
    let port = free_port();
    let server = start_on(port, certs.clone(), backend.clone()).await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut watch = alice.watch_order(&order.id, 0).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().version, 1);
    alice
        .update_order(&order.id, vec![address("B")])
        .await
        .unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().version, 2);

    server.stop().await; // the watch gets UNAVAILABLE and reconnects
    let server = start_on(port, certs.clone(), backend.clone()).await;
    let staff = server.staff().await;
    // Changes made while the watch was away and after it is back.
    staff.advance_order(&order.id, 0).await.unwrap();
    server
        .alice()
        .await
        .update_order(&order.id, vec![address("C"), address("D")])
        .await
        .unwrap();
    staff.advance_order(&order.id, 0).await.unwrap();
    staff.advance_order(&order.id, 0).await.unwrap();
    let mut versions = Vec::new();
    while let Some(order) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
    {
        versions.push(order.expect("a version, not an error").version);
    }
    assert_eq!(
        versions,
        [3, 4, 5, 6, 7],
        "every version once, in order, then the end"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_tracker_subscribes_again_after_a_restart() {
    let certs = Arc::new(Certs::new());
    let backend = Backend::sqlite();
    let port = free_port();
    let server = start_on(port, certs.clone(), backend.clone()).await;
    let alice = server.alice().await;
    let a = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let b = alice
        .register_order(vec![item("B", 1, 1)], address("B"))
        .await
        .unwrap();
    let mut tracker = alice.track_orders();
    tracker.subscribe(&a.id).await;
    tracker.subscribe(&b.id).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let o = tracker.next().await.unwrap().unwrap();
        seen.push((o.id, o.version));
    }
    server.stop().await;
    let server = start_on(port, certs.clone(), backend.clone()).await;
    let staff = server.staff().await;
    // While the tracker may still be away, a moves to version 2; after that,
    // both change once the tracker has surely subscribed again.
    staff.advance_order(&a.id, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    staff.advance_order(&b.id, 0).await.unwrap();
    server.alice().await.cancel_order(&a.id, 0).await.unwrap();
    server.alice().await.cancel_order(&b.id, 0).await.unwrap();
    tracker.close();
    while let Some(o) = tokio::time::timeout(Duration::from_secs(10), tracker.next())
        .await
        .unwrap()
    {
        let o = o.unwrap();
        seen.push((o.id, o.version));
    }
    for id in [&a.id, &b.id] {
        let versions: Vec<i64> = seen
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, v)| *v)
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{id}: increasing, no repeats: {versions:?}"
        );
        assert_eq!(versions.first(), Some(&1), "{id}: seen before the restart");
        assert_eq!(
            versions.last(),
            Some(&3),
            "{id}: followed to the final version after it"
        );
    }
    // b's changes all came after the tracker was back: none coalesced.
    let b_versions: Vec<i64> = seen
        .iter()
        .filter(|(i, _)| *i == b.id)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(b_versions, [1, 2, 3]);
    server.stop().await;
}

#[tokio::test]
async fn calls_are_balanced_over_every_endpoint() {
    let certs = Arc::new(Certs::new());
    let one = TestServer::start_with(certs.clone(), Backend::sqlite(), |_| {}).await;
    let two = TestServer::start_with(certs.clone(), Backend::sqlite(), |_| {}).await;
    let client = Client::builder(one.endpoint())
        .endpoint(two.endpoint())
        .ca_certificate(certs.ca())
        .token(certs.token("alice", READ_WRITE))
        .connect()
        .await
        .unwrap();
    for _ in 0..60 {
        // Unknown ids: NOT_FOUND from whichever server answers.
        assert_eq!(
            client.get_order("none").await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let labels = [("grpc_method", "GetOrder"), ("grpc_code", "NotFound")];
    let served_one = metric(
        &one.admin_get("/metrics").await.1,
        "grpc_server_handled_total",
        &labels,
    )
    .unwrap_or(0.0);
    let served_two = metric(
        &two.admin_get("/metrics").await.1,
        "grpc_server_handled_total",
        &labels,
    )
    .unwrap_or(0.0);
    eprintln!("server one answered {served_one}, server two {served_two}");
    assert_eq!(served_one + served_two, 60.0);
    assert!(
        served_one >= 10.0 && served_two >= 10.0,
        "both servers share the load"
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_dns_name_is_resolved_and_balanced() {
    let server = TestServer::start(Backend::sqlite()).await;
    // localhost resolves to 127.0.0.1 (and maybe ::1, where nothing listens:
    // the balancer keeps to the endpoints that connect).
    let client = Client::builder_dns("localhost", server.addr.port(), Duration::from_secs(1))
        .ca_certificate(server.certs.ca())
        .token(server.certs.token("alice", READ_WRITE))
        .connect()
        .await
        .unwrap();
    let order = client
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    assert_eq!(client.get_order(&order.id).await.unwrap().id, order.id);
    server.stop().await;
}

#[tokio::test]
async fn a_per_call_deadline_ends_a_slow_call_with_deadline_exceeded() {
    let backend = Backend::sqlite();
    let server = TestServer::start(backend.clone()).await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut lock = sqlx::SqliteConnection::connect(&backend.url())
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let started = Instant::now();
    let err = alice
        .with_timeout(Duration::from_millis(300))
        .cancel_order(&order.id, 0)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::DeadlineExceeded,
        "{err:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    // The client's default deadline is untouched by the override.
    assert_eq!(alice.get_order(&order.id).await.unwrap().version, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_token_file_rewritten_mid_run_is_picked_up() {
    let server = TestServer::start(Backend::sqlite()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, server.certs.token("alice", READ_WRITE)).unwrap();
    let client = Client::builder(server.endpoint())
        .ca_certificate(server.certs.ca())
        .token_provider(FileToken::new(&path))
        .connect()
        .await
        .unwrap();
    let alices = client
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    assert_eq!(alices.customer_id, "alice");
    // Rotated, as Kubernetes rewrites a projected token: now we are bob.
    let rotated = dir.path().join("token.new");
    std::fs::write(&rotated, server.certs.token("bob", READ_WRITE)).unwrap();
    std::fs::rename(&rotated, &path).unwrap();
    let bobs = client
        .register_order(vec![item("B", 1, 1)], address("B"))
        .await
        .unwrap();
    assert_eq!(bobs.customer_id, "bob");
    assert_eq!(
        client.get_order(&alices.id).await.unwrap_err().code(),
        Code::NotFound
    );
    server.stop().await;
}

#[tokio::test]
async fn reads_are_retried_on_unavailable_but_cancels_are_not() {
    let certs = Arc::new(Certs::new());
    let port = free_port();
    let client = Client::builder(format!("https://localhost:{port}"))
        .endpoint(format!("https://localhost:{port}"))
        .ca_certificate(certs.ca())
        .token(certs.token("alice", READ_WRITE))
        .retry(
            RetryPolicy::default()
                .max_attempts(20)
                .max_backoff(Duration::from_millis(200)),
        )
        .connect()
        .await
        .unwrap();
    // Nothing listens yet: a cancel fails at once with UNAVAILABLE...
    assert_eq!(
        client.cancel_order("x", 0).await.unwrap_err().code(),
        Code::Unavailable
    );
    // ...while a read keeps trying until the server comes up.
    let read = {
        let client = client.clone();
        tokio::spawn(async move { client.get_order("x").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = start_on(port, certs, Backend::sqlite()).await;
    let err = read.await.unwrap().unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the retried read reached the server"
    );
    server.stop().await;
}
