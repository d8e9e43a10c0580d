//! Two replicas on one PostgreSQL: changes made through one reach watchers on
//! the other (LISTEN/NOTIFY), and idempotency holds across them.

mod common;

use common::*;
use orders::sdk::pb;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;

async fn two_replicas() -> Option<(TestServer, TestServer)> {
    let db = PgDatabase::create().await?;
    let certs = Arc::new(Certs::new());
    let a = TestServer::start_with(certs.clone(), Backend::Postgres(db.clone()), |_| {}).await;
    let b = TestServer::start_with(certs, Backend::Postgres(db), |_| {}).await;
    Some((a, b))
}

async fn next(stream: &mut tonic::Streaming<pb::OrderEvent>) -> pb::Order {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
        .order
        .unwrap()
}

#[tokio::test]
async fn a_watcher_on_one_replica_sees_every_change_made_through_the_other() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let order = a
        .alice()
        .await
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut watch = a
        .alice()
        .await
        .watch_order_stream(&order.id, 0)
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await.version, 1);
    let (alice_b, staff_b) = (b.alice().await, b.staff().await);
    alice_b
        .update_order(&order.id, vec![address("B"), address("C")])
        .await
        .unwrap();
    staff_b.advance_order(&order.id, 0).await.unwrap();
    staff_b.advance_order(&order.id, 0).await.unwrap();
    staff_b.advance_order(&order.id, 0).await.unwrap();
    let versions: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next(&mut watch).await.version);
        }
        v
    };
    assert_eq!(versions, [2, 3, 4, 5, 6]);
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert!(end.is_none(), "delivered: the watch ends");

    // TrackOrders on b hears a's changes too.
    let other = a
        .alice()
        .await
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let requests = vec![pb::TrackOrdersRequest {
        action: Some(pb::track_orders_request::Action::Subscribe(
            other.id.clone(),
        )),
    }];
    let mut track = b
        .alice()
        .await
        .track_orders_stream(tokio_stream::iter(requests))
        .await
        .unwrap();
    assert_eq!(next(&mut track).await.version, 1);
    a.alice().await.cancel_order(&other.id, 0).await.unwrap();
    assert_eq!(next(&mut track).await.version, 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn one_request_id_sent_to_both_replicas_at_once_is_one_order() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let (ca, cb) = (a.alice().await, b.alice().await);
    let rid = uuid::Uuid::new_v4().to_string();
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            let rid = rid.clone();
            tokio::spawn(async move { client.register(register_request(&rid)).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for call in calls {
        ids.insert(call.await.unwrap().unwrap().order_id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(count_orders(&ca).await, 1);
    // Page tokens are signed with a key both replicas share.
    for _ in 0..3 {
        ca.register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
    }
    let page = ca
        .list_orders(pb::ListOrdersRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = cb
        .list_orders(pb::ListOrdersRequest {
            page_size: 2,
            page_token: page.next_page_token,
            status: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.orders.len() + rest.orders.len(), 4);
    a.stop().await;
    b.stop().await;
}

/// A rolling deploy on a fresh database starts replicas together: each runs
/// the migrations at start, under sqlx's advisory lock, so one applies them
/// while the others wait, and then all serve. Every migration is recorded
/// once.
#[tokio::test]
async fn replicas_starting_together_on_a_fresh_database_migrate_once_and_all_serve() {
    use sqlx::Connection;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let certs = Arc::new(Certs::new());
    let start = |certs: Arc<Certs>, db: Arc<PgDatabase>| {
        TestServer::start_with(certs, Backend::Postgres(db), |_| {})
    };
    let (a, b, c) = tokio::join!(
        start(certs.clone(), db.clone()),
        start(certs.clone(), db.clone()),
        start(certs, db.clone()),
    );
    for server in [&a, &b, &c] {
        let order = server
            .alice()
            .await
            .register_order(vec![item("MIGRATED", 1, 1)], address("A"))
            .await
            .expect("every replica serves");
        assert_eq!(order.version, 1);
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let applied: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, count(*) FROM _sqlx_migrations GROUP BY version ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let on_disk = std::fs::read_dir(repo().join("migrations/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(
        applied.len(),
        on_disk,
        "every migration applied: {applied:?}"
    );
    assert!(
        applied.iter().all(|(_, n)| *n == 1),
        "each migration recorded once: {applied:?}"
    );
    for server in [a, b, c] {
        server.stop().await;
    }
}

/// During a rolling upgrade, a replica of the previous release may restart
/// after the new release has migrated the database. Migrations only expand
/// the schema (docs/migrations.md), so it must start and serve on it.
#[tokio::test]
async fn a_replica_of_the_previous_release_starts_on_a_database_a_newer_release_migrated() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    // The newer release: this release's migrations plus an expanding one,
    // applied by sqlx as that release's start would.
    let newer = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("migrations/postgres")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, newer.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        newer.path().join("9001_expand_orders_with_a_note.sql"),
        "ALTER TABLE orders ADD COLUMN note TEXT;\n",
    )
    .unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(newer.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool.close().await;

    let old = TestServer::start_with(Arc::new(Certs::new()), Backend::Postgres(db), |_| {}).await;
    let order = old
        .alice()
        .await
        .register_order(vec![item("UPGRADE", 1, 1)], address("A"))
        .await
        .expect("the previous release serves on the expanded schema");
    assert_eq!(
        old.alice()
            .await
            .get_order(&order.id)
            .await
            .unwrap()
            .version,
        1
    );
    old.stop().await;
}
