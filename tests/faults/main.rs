//! Reliability under faults (RELIABILITY.md): real `orders-server` processes
//! on 127.0.0.1, several of them on one PostgreSQL, clients through the SDK,
//! and the failures production brings: a replica killed mid-write, a rolling
//! restart, watchers on a replica that dies, a database outage, a crash of
//! the SQLite server, hostile clients beside normal ones, and foreign gRPC
//! clients (Python `grpc.aio`, Node `grpc-js`) through connection recycling
//! and SIGTERM drains (`foreign.rs`). Each scenario prints its figures (`cargo test --test faults -- --nocapture`) and asserts
//! on them.
//!
//! The scenarios run one at a time (they measure latencies and share two
//! cores), each with its own processes and database.

/// A figure, printed in one greppable format.
macro_rules! figure {
    ($scenario:expr, $($arg:tt)*) => {
        println!("[faults:{}] {}", $scenario, format!($($arg)*))
    };
}

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod foreign;
mod hostile;

use cluster::{Cluster, Latencies, Replica, SdkEvents, ms, patient};
use common::*;
use orders::sdk::{Client, RetryPolicy, pb};
use sqlx::Connection;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// One scenario at a time: they measure latencies and share two cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn register(request_id: &str, n: usize) -> pb::RegisterOrderRequest {
    pb::RegisterOrderRequest {
        items: vec![item(&format!("SKU-{}", n % 1000), 1 + (n % 5) as i32, 250)],
        address: Some(address("Main Street")),
        request_id: request_id.into(),
    }
}

/// Every order of a PostgreSQL database: id → (customer, request_id).
async fn pg_orders(url: &str) -> HashMap<String, (String, Option<String>)> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, customer_id, request_id FROM orders")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter().map(|(id, c, r)| (id, (c, r))).collect()
}

/// (customer, request_id) pairs that have more than one order.
fn doubled(orders: &HashMap<String, (String, Option<String>)>) -> Vec<(String, String)> {
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (customer, rid) in orders.values() {
        if let Some(rid) = rid {
            *seen.entry((customer.clone(), rid.clone())).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}

/// An acknowledged registration: who, which request_id, which order.
#[derive(Clone, Debug)]
struct Ack {
    customer: String,
    request_id: String,
    order_id: String,
}

/// Checks that each acknowledged order is stored once under its request_id
/// and that no request_id has two orders; prints the counts.
fn assert_exactly_once(
    scenario: &str,
    acks: &[Ack],
    stored: &HashMap<String, (String, Option<String>)>,
) {
    let mut missing = Vec::new();
    for ack in acks {
        match stored.get(&ack.order_id) {
            Some((customer, rid)) => {
                assert_eq!(customer, &ack.customer, "{ack:?}");
                assert_eq!(rid.as_deref(), Some(ack.request_id.as_str()), "{ack:?}");
            }
            None => missing.push(ack.clone()),
        }
    }
    let distinct: HashSet<&str> = acks.iter().map(|a| a.order_id.as_str()).collect();
    let doubled = doubled(stored);
    figure!(
        scenario,
        "acknowledged={} distinct_ids={} stored={} missing={} request_ids_with_two_orders={}",
        acks.len(),
        distinct.len(),
        stored.len(),
        missing.len(),
        doubled.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    assert!(
        doubled.is_empty(),
        "request ids with two orders: {doubled:?}"
    );
    assert_eq!(distinct.len(), acks.len(), "an order acknowledged twice");
}

/// Scenario 1: 50 clients register 2,000 orders while one of three replicas
/// is SIGKILLed and restarted. Every acknowledged order exists exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_a_replica_killed_during_writes_loses_and_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    SdkEvents::install();
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::start(3, &db.url, &[]).await;
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 40;
    let done = Arc::new(AtomicUsize::new(0));
    let (retries_before, _) = SdkEvents::snapshot();
    let started = Instant::now();
    let mut writers = Vec::new();
    for c in 0..CLIENTS {
        let customer = format!("crash-{c}");
        let client = cluster.client(&customer, READ_WRITE).await;
        let done = done.clone();
        writers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut resends = 0;
            for n in 0..PER_CLIENT {
                let request_id = uuid::Uuid::new_v4().to_string();
                // The application keeps the request_id with the cart and
                // sends it again if even the SDK's retries gave up.
                let order_id = loop {
                    match client.register(register(&request_id, n)).await {
                        Ok(r) => break r.order_id,
                        Err(e) => {
                            assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                            resends += 1;
                            assert!(resends < 50, "{customer} keeps failing: {e:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                };
                done.fetch_add(1, Ordering::Relaxed);
                acks.push(Ack {
                    customer: customer.clone(),
                    request_id,
                    order_id,
                });
            }
            (acks, resends)
        }));
    }
    // Kill replica-1 a quarter of the way in, restart it a second later.
    while done.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = &mut cluster.replicas[1];
    let served_by_victim = victim
        .method_metric("grpc_server_handled_total", "RegisterOrder", Some("OK"))
        .await;
    let at_kill = done.load(Ordering::Relaxed);
    victim.kill();
    let killed_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_took = victim.start().await;
    let mut acks = Vec::new();
    let mut resends = 0;
    for w in writers {
        let (a, r) = w.await.unwrap();
        acks.extend(a);
        resends += r;
    }
    let elapsed = started.elapsed();
    let (retries_after, _) = SdkEvents::snapshot();
    figure!(
        "s1",
        "{} registrations by {CLIENTS} clients over 3 replicas in {:.2}s ({:.0}/s)",
        acks.len(),
        elapsed.as_secs_f64(),
        acks.len() as f64 / elapsed.as_secs_f64()
    );
    figure!(
        "s1",
        "replica-1 SIGKILLed at {:.2}s after {at_kill} acknowledgements ({served_by_victim} of them its own), restarted and ready in {:.0}ms",
        killed_at.as_secs_f64(),
        ms(restart_took)
    );
    figure!(
        "s1",
        "SDK retries={} application resends (same request_id)={resends}",
        retries_after - retries_before
    );
    assert!(
        served_by_victim > 0.0,
        "the killed replica was taking writes"
    );
    assert_eq!(acks.len(), CLIENTS * PER_CLIENT);
    assert_exactly_once("s1", &acks, &pg_orders(&db.url).await);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (versions,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM order_versions")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(versions as usize, acks.len(), "one version row per order");
}

/// One call of the steady load, timed.
struct Call {
    at: Duration,
    took: Duration,
    method: &'static str,
    error: Option<orders::sdk::Error>,
}

/// Scenario 2: each of three replicas in turn gets SIGTERM, drains, exits 0
/// and restarts, under steady load: the clients see zero failed calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_a_rolling_restart_under_load_fails_no_call() {
    let _serial = SERIAL.lock().await;
    SdkEvents::install();
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    // A short lame-duck time keeps the test quick; production uses 10 s.
    let mut cluster = Cluster::start(3, &db.url, &[("ORDERS__SHUTDOWN__DRAIN_SECS", "1")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (retries_before, health_before) = SdkEvents::snapshot();
    let mut load = Vec::new();
    for c in 0..12 {
        // The default retry policy: a rolling restart must not need more.
        let client = cluster
            .builder(&format!("rolling-{c}"), READ_WRITE)
            .connect()
            .await
            .unwrap();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut mine: Vec<String> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let at = started.elapsed();
                let t = Instant::now();
                let (method, result) = match n % 3 {
                    0 => {
                        let rid = uuid::Uuid::new_v4().to_string();
                        let r = client.register(register(&rid, n)).await;
                        if let Ok(r) = &r {
                            mine.push(r.order_id.clone());
                        }
                        ("RegisterOrder", r.map(|_| ()))
                    }
                    1 if !mine.is_empty() => {
                        let id = &mine[n % mine.len()];
                        let r = client.get_order(id).await;
                        if let Ok(o) = &r {
                            assert_eq!(&o.id, id);
                        }
                        ("GetOrder", r.map(|_| ()))
                    }
                    _ => {
                        let request = pb::ListOrdersRequest {
                            page_size: 20,
                            ..Default::default()
                        };
                        ("ListOrders", client.list_orders(request).await.map(|_| ()))
                    }
                };
                calls.push(Call {
                    at,
                    took: t.elapsed(),
                    method,
                    error: result.err(),
                });
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            calls
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut steps = Vec::new();
    for i in 0..cluster.replicas.len() {
        let replica = &mut cluster.replicas[i];
        let served_before = replica
            .method_metric("grpc_server_handled_total", "GetOrder", Some("OK"))
            .await;
        let t0 = Instant::now();
        replica.sigterm();
        let not_ready = loop {
            if replica.readiness().await == Some(ServingStatus::NotServing) {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "readiness follows SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let code = replica.wait_exit(Duration::from_secs(20)).await;
        let exited = t0.elapsed();
        assert_eq!(code, Some(0), "{} exits 0 after draining", replica.name);
        let restart = replica.start().await;
        figure!(
            "s2",
            "{}: served {served_before} reads, NOT_SERVING {:.0}ms after SIGTERM, exited 0 after {:.0}ms, restarted and ready in {:.0}ms",
            replica.name,
            ms(not_ready),
            ms(exited),
            ms(restart)
        );
        steps.push((replica.name.clone(), exited));
        // Clients find it again (its health watch) before the next one goes.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    for l in load {
        calls.extend(l.await.unwrap());
    }
    let (retries_after, health_after) = SdkEvents::snapshot();
    let failed: Vec<&Call> = calls.iter().filter(|c| c.error.is_some()).collect();
    let by_method = |m: &str| calls.iter().filter(|c| c.method == m).count();
    figure!(
        "s2",
        "{} calls in {:.1}s (RegisterOrder {}, GetOrder {}, ListOrders {}), failed={}",
        calls.len(),
        started.elapsed().as_secs_f64(),
        by_method("RegisterOrder"),
        by_method("GetOrder"),
        by_method("ListOrders"),
        failed.len()
    );
    figure!(
        "s2",
        "latency {}",
        Latencies::new(calls.iter().map(|c| c.took).collect()).summary()
    );
    figure!(
        "s2",
        "SDK retries={} SDK health changes seen={}",
        retries_after - retries_before,
        health_after - health_before
    );
    for c in &failed {
        println!(
            "[faults:s2] failed {} at {:.3}s after {:.0}ms: {:?}",
            c.method,
            c.at.as_secs_f64(),
            ms(c.took),
            c.error
        );
    }
    assert!(failed.is_empty(), "{} calls failed", failed.len());
    assert!(
        calls.len() > 500,
        "the load was steady: {} calls",
        calls.len()
    );
    // Each restarted replica serves again.
    for r in &cluster.replicas {
        assert_eq!(r.readiness().await, Some(ServingStatus::Serving));
    }
    let total_after: f64 = {
        let mut t = 0.0;
        for r in &cluster.replicas {
            t += r
                .method_metric("grpc_server_handled_total", "GetOrder", Some("OK"))
                .await;
        }
        t
    };
    assert!(total_after > 0.0);
}

/// Scenario 3: watchers follow orders across replicas while the replica
/// holding the most watch streams is killed (twice, different replicas);
/// every watcher gets every version of its order exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_watchers_on_a_killed_replica_resume_elsewhere_missing_nothing() {
    let _serial = SERIAL.lock().await;
    SdkEvents::install();
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::start(3, &db.url, &[]).await;
    const ORDERS: usize = 30;
    const UPDATES: usize = 6; // address changes, then 3 advances to DELIVERED
    const FINAL_VERSION: i64 = 1 + UPDATES as i64 + 3;
    let customer = cluster.client("watched", READ_WRITE).await;
    let staff = cluster.client("staff-1", STAFF).await;
    let mut ids = Vec::new();
    for n in 0..ORDERS {
        let rid = uuid::Uuid::new_v4().to_string();
        ids.push(customer.register(register(&rid, n)).await.unwrap().order_id);
    }
    // Watchers: 6 clients (as 6 application instances would), 5 orders each.
    let mut watchers = Vec::new();
    let opened = Arc::new(AtomicUsize::new(0));
    for (n, id) in ids.iter().enumerate() {
        if n % 5 == 0 {
            watchers.push(Vec::new());
        }
        watchers.last_mut().unwrap().push(id.clone());
    }
    let mut tasks = Vec::new();
    for group in watchers {
        let client = cluster.client("watched", READ_WRITE).await;
        for id in group {
            let mut watch = client.watch_order(&id, 0).await.unwrap();
            let opened = opened.clone();
            tasks.push(tokio::spawn(async move {
                let mut versions = Vec::new();
                // `false` when 60 s passed without an event or the end: the
                // test then fails with what the SDK and the replicas said.
                let ended = loop {
                    let Ok(item) =
                        tokio::time::timeout(Duration::from_secs(60), watch.next()).await
                    else {
                        break false;
                    };
                    let Some(item) = item else { break true };
                    let order = item.unwrap_or_else(|e| panic!("watch of {id} failed: {e:?}"));
                    if versions.is_empty() {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    versions.push(order.version);
                };
                (id, versions, ended)
            }));
        }
    }
    while opened.load(Ordering::Relaxed) < ORDERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The writer: one step per order per round, checking after a failure
    // whether the step was applied (the only writer, so the version tells).
    let round = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (customer, staff, ids, round) =
            (customer.clone(), staff.clone(), ids.clone(), round.clone());
        tokio::spawn(async move {
            let mut version: HashMap<String, i64> = ids.iter().map(|i| (i.clone(), 1)).collect();
            let mut failed_steps = 0;
            for r in 0..UPDATES + 3 {
                round.store(r, Ordering::Relaxed);
                for id in &ids {
                    let expected = version[id] + 1;
                    loop {
                        let result = if r < UPDATES {
                            customer
                                .update_order(id, vec![address(&format!("Street {r}"))])
                                .await
                                .map(|_| ())
                        } else {
                            staff.advance_order(id, expected - 1).await.map(|_| ())
                        };
                        if result.is_ok() {
                            break;
                        }
                        failed_steps += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        match customer.get_order(id).await {
                            Ok(o) if o.version == expected => break, // applied
                            Ok(o) => assert_eq!(o.version, expected - 1, "{id}"),
                            Err(_) => {}
                        }
                    }
                    version.insert(id.clone(), expected);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            failed_steps
        })
    };
    let started_watches = |text: &str| {
        let started = metric(
            text,
            "grpc_server_started_total",
            &[("grpc_method", "WatchOrder")],
        )
        .unwrap_or(0.0);
        let handled: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("grpc_server_handled_total{")
                    && l.contains("grpc_method=\"WatchOrder\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        (started, started - handled)
    };
    let mut killed = Vec::new();
    for kill_at_round in [2, 5] {
        while round.load(Ordering::Relaxed) < kill_at_round {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The replica with the most open watch streams (not one killed before).
        let mut open = Vec::new();
        for (i, r) in cluster.replicas.iter().enumerate() {
            open.push((started_watches(&r.metrics().await).1, i));
        }
        let (streams, victim) = open
            .iter()
            .filter(|(_, i)| !killed.iter().any(|(k, _)| k == i))
            .copied()
            .fold((-1.0, 0), |a, b| if b.0 > a.0 { b } else { a });
        figure!(
            "s3",
            "round {kill_at_round}: open watch streams per replica {:?}; SIGKILL replica-{victim} ({streams} streams)",
            open.iter().map(|(s, _)| *s).collect::<Vec<_>>()
        );
        assert!(streams > 0.0, "the killed replica had watchers");
        cluster.replicas[victim].kill();
        killed.push((victim, streams));
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.replicas[victim].start().await;
    }
    let failed_steps = writer.await.unwrap();
    let mut events = 0;
    for task in tasks {
        let (id, versions, ended) = task.await.unwrap();
        if !ended {
            let logs: Vec<String> = cluster
                .replicas
                .iter()
                .map(|r| format!("--- {} (warnings) ---\n{}", r.name, r.log_tail()))
                .collect();
            panic!(
                "the watcher of {id} had no event for 60 s after versions {versions:?}\n\
                 --- SDK events ---\n{}\n{}",
                SdkEvents::recent(),
                logs.join("\n")
            );
        }
        events += versions.len();
        let expected: Vec<i64> = (1..=FINAL_VERSION).collect();
        assert_eq!(versions, expected, "watcher of {id}");
    }
    figure!(
        "s3",
        "{ORDERS} watchers received {events} versions (each 1..={FINAL_VERSION} exactly once, in order) although {} of their streams died with a killed replica; writer steps retried={failed_steps}",
        killed.iter().map(|(_, s)| s).sum::<f64>()
    );
}

/// Scenario 4: PostgreSQL stops for 10 s under two replicas. Readiness turns
/// NOT_SERVING within 2 s, calls fail fast with UNAVAILABLE within their
/// deadline, service resumes on its own, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_a_database_outage_fails_fast_and_heals_by_itself() {
    let _serial = SERIAL.lock().await;
    SdkEvents::install();
    let Some(pg) = TempPostgres::start() else {
        return;
    };
    let pg = Arc::new(pg);
    // Readiness is known within check_interval + check_timeout, 500 ms +
    // 500 ms with the defaults (the production settings): room under 2 s.
    let cluster = Cluster::start(2, &pg.url(), &[]).await;
    const DEADLINE: Duration = Duration::from_secs(5);
    const OUTAGE: Duration = Duration::from_secs(10);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut load = Vec::new();
    for c in 0..8 {
        let customer = format!("outage-{c}");
        let client = cluster
            .builder(&customer, READ_WRITE)
            .timeout(DEADLINE)
            .connect()
            .await
            .unwrap();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let rid = uuid::Uuid::new_v4().to_string();
                let at = started.elapsed();
                let t = Instant::now();
                let result = client.register(register(&rid, n)).await;
                results.push((at, t.elapsed(), customer.clone(), rid, result));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (client, results)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let down_at = started.elapsed();
    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .unwrap();
    }
    let t0 = Instant::now();
    // Readiness of each replica, polled as a kubelet would (every 50 ms).
    let mut not_ready = vec![None; cluster.replicas.len()];
    while not_ready.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(5) {
        for (i, r) in cluster.replicas.iter().enumerate() {
            if not_ready[i].is_none() && r.readiness().await == Some(ServingStatus::NotServing) {
                not_ready[i] = Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While the database is away: calls with no retries show the server's
    // own answer time; liveness stays SERVING (no restart wanted).
    let probe = cluster
        .builder("outage-probe", READ_WRITE)
        .timeout(DEADLINE)
        .retry(RetryPolicy::none())
        .connect()
        .await
        .unwrap();
    let mut probes = Vec::new();
    while t0.elapsed() < OUTAGE - Duration::from_millis(500) {
        let t = Instant::now();
        let result = probe
            .register(register(&uuid::Uuid::new_v4().to_string(), 0))
            .await;
        probes.push((t.elapsed(), result.map(|_| ()).map_err(|e| e.code())));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in &cluster.replicas {
        assert_eq!(r.health("liveness").await, Some(ServingStatus::Serving));
    }
    let remaining = OUTAGE.saturating_sub(t0.elapsed());
    tokio::time::sleep(remaining).await;
    let up_at = started.elapsed();
    {
        let pg = pg.clone();
        tokio::task::spawn_blocking(move || pg.start_again())
            .await
            .unwrap();
    }
    let t1 = Instant::now();
    let mut ready_again = vec![None; cluster.replicas.len()];
    while ready_again.iter().any(Option::is_none) && t1.elapsed() < Duration::from_secs(15) {
        for (i, r) in cluster.replicas.iter().enumerate() {
            if ready_again[i].is_none() && r.readiness().await == Some(ServingStatus::Serving) {
                ready_again[i] = Some(t1.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    let mut clients = HashMap::new();
    for l in load {
        let (client, r) = l.await.unwrap();
        if let Some((_, _, customer, _, _)) = r.first() {
            clients.insert(customer.clone(), client);
        }
        results.extend(r);
    }

    type Outcome = (
        Duration,
        Duration,
        String,
        String,
        Result<pb::RegisterOrderResponse, orders::sdk::Error>,
    );
    fn ok(r: &Outcome) -> bool {
        r.4.is_ok()
    }
    let during: Vec<_> = results
        .iter()
        .filter(|r| r.0 >= down_at && r.0 < up_at)
        .collect();
    let after: Vec<_> = results.iter().filter(|r| r.0 >= up_at).collect();
    let failures: Vec<_> = results.iter().filter(|r| r.4.is_err()).collect();
    let first_ok_after = after
        .iter()
        .filter(|r| ok(r))
        .map(|r| r.0 - up_at)
        .min()
        .unwrap_or(Duration::MAX);
    let failure_codes: HashSet<Code> = failures
        .iter()
        .map(|r| r.4.as_ref().unwrap_err().code())
        .collect();
    let slowest_failure = failures.iter().map(|r| r.1).max().unwrap_or_default();
    let probe_latency = Latencies::new(probes.iter().map(|p| p.0).collect());
    let probe_codes: HashSet<Result<(), Code>> = probes.iter().map(|p| p.1).collect();
    for (i, t) in not_ready.iter().enumerate() {
        figure!(
            "s4",
            "replica-{i}: NOT_SERVING {:.0}ms after PostgreSQL stopped; SERVING again {:.0}ms after it returned",
            t.map(ms).unwrap_or(f64::NAN),
            ready_again[i].map(ms).unwrap_or(f64::NAN)
        );
    }
    figure!(
        "s4",
        "load: {} calls, {} during the {}s outage ({} succeeded), {} after ({} succeeded); first success {:.0}ms after PostgreSQL returned",
        results.len(),
        during.len(),
        OUTAGE.as_secs(),
        during.iter().filter(|r| ok(r)).count(),
        after.len(),
        after.iter().filter(|r| ok(r)).count(),
        ms(first_ok_after)
    );
    figure!(
        "s4",
        "failed calls: {} with codes {:?}; slowest failure {:.0}ms (deadline {}ms)",
        failures.len(),
        failure_codes,
        ms(slowest_failure),
        DEADLINE.as_millis()
    );
    figure!(
        "s4",
        "unretried probes while down: {} answered {:?}",
        probe_latency.summary(),
        probe_codes
    );
    for (i, t) in not_ready.iter().enumerate() {
        let t = t.unwrap_or_else(|| panic!("replica-{i} never turned NOT_SERVING"));
        assert!(
            t <= Duration::from_secs(2),
            "replica-{i}: NOT_SERVING after {t:?}"
        );
        assert!(
            ready_again[i].is_some(),
            "replica-{i} never became ready again"
        );
    }
    assert!(!failures.is_empty(), "the outage was felt");
    assert_eq!(
        failure_codes,
        HashSet::from([Code::Unavailable]),
        "failures are UNAVAILABLE"
    );
    assert!(
        slowest_failure < DEADLINE,
        "a call hung to its deadline: {slowest_failure:?}"
    );
    assert_eq!(probe_codes, HashSet::from([Err(Code::Unavailable)]));
    // Fast: answered at once (no database round trip, no pool wait), far
    // inside the deadline even on a busy machine.
    assert!(
        probe_latency.quantile(0.5) < Duration::from_millis(100)
            && probe_latency.max() < DEADLINE / 5,
        "not ready, the server answers at once: {}",
        probe_latency.summary()
    );
    assert!(
        after.iter().filter(|r| ok(r)).count() > 20,
        "service resumed by itself"
    );

    // Nothing acknowledged is lost; the registrations that failed are sent
    // again with their request_id, as the application would, and none of
    // them becomes a second order.
    let mut acks: Vec<Ack> = results
        .iter()
        .filter_map(|(_, _, customer, rid, r)| {
            r.as_ref().ok().map(|r| Ack {
                customer: customer.clone(),
                request_id: rid.clone(),
                order_id: r.order_id.clone(),
            })
        })
        .collect();
    let acknowledged = acks.len();
    let mut already_there = 0;
    let before_resend = pg_orders(&pg.url()).await;
    for (_, _, customer, rid, r) in &results {
        if r.is_err() {
            let response = clients[customer]
                .register(register(rid, 0))
                .await
                .unwrap_or_else(|e| panic!("resend of {rid} after the outage: {e:?}"));
            if before_resend.contains_key(&response.order_id) {
                already_there += 1;
            }
            acks.push(Ack {
                customer: customer.clone(),
                request_id: rid.clone(),
                order_id: response.order_id,
            });
        }
    }
    figure!(
        "s4",
        "resent {} failed registrations after the outage: {already_there} had been committed before their reply was lost",
        acks.len() - acknowledged
    );
    let stored = pg_orders(&pg.url()).await;
    assert_exactly_once("s4", &acks, &stored);
    assert_eq!(stored.len(), acks.len(), "no order nobody asked for");
    drop(cluster);
}

/// Scenario 5: the SQLite server is SIGKILLed (twice) during sustained
/// writes and restarted; every acknowledged order is there and the file
/// passes `PRAGMA integrity_check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_sqlite_survives_sigkill_during_writes() {
    let _serial = SERIAL.lock().await;
    SdkEvents::install();
    let certs = Arc::new(Certs::new());
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("orders.db");
    let url = format!("sqlite://{}", db.display());
    let mut server = Replica::new("sqlite", &certs, &url, &[]);
    server.start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for c in 0..16 {
        let customer = format!("sqlite-{c}");
        let client = Client::builder(server.endpoint())
            .ca_certificate(certs.ca())
            .token(certs.token(&customer, READ_WRITE))
            .retry(patient())
            .connect()
            .await
            .unwrap();
        let (stop, done) = (stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut failed = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let rid = uuid::Uuid::new_v4().to_string();
                match client.register(register(&rid, n)).await {
                    Ok(r) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        acks.push(Ack {
                            customer: customer.clone(),
                            request_id: rid,
                            order_id: r.order_id,
                        });
                    }
                    // Not acknowledged: it may or may not be stored.
                    Err(_) => failed += 1,
                }
                n += 1;
            }
            (acks, failed)
        }));
    }
    let mut kills = Vec::new();
    for _ in 0..2 {
        let target = done.load(Ordering::Relaxed) + 300;
        while done.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        kills.push(done.load(Ordering::Relaxed));
        let restart = server.start().await;
        figure!(
            "s5",
            "SIGKILL after {} acknowledged writes; restarted (recovery included) and ready in {:.0}ms",
            kills.last().unwrap(),
            ms(restart)
        );
    }
    let target = done.load(Ordering::Relaxed) + 200;
    while done.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acks.extend(a);
        failed += f;
    }
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)).await, Some(0));

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, customer_id, request_id FROM orders")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let (orphans,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM orders o WHERE NOT EXISTS \
         (SELECT 1 FROM order_versions v WHERE v.order_id = o.id AND v.version = o.version)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let stored: HashMap<String, (String, Option<String>)> =
        rows.into_iter().map(|(id, c, r)| (id, (c, r))).collect();
    figure!(
        "s5",
        "16 writers: {} acknowledged, {failed} failed (not acknowledged) across 2 SIGKILLs; integrity_check={check}; orders without their version row={orphans}",
        acks.len()
    );
    assert_eq!(check, "ok");
    assert_eq!(
        orphans, 0,
        "every order's current version is in its history"
    );
    assert_exactly_once("s5", &acks, &stored);
}

/// Scenario 6: idle connections, streams that never read and an HTTP/2
/// reset flood beside normal clients: their p99 stays within 5× of its
/// baseline and the server stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_hostile_clients_do_not_hurt_normal_ones() {
    let _serial = SERIAL.lock().await;
    SdkEvents::install();
    hostile::scenario().await;
}

/// The SDK's client-side health checks, step by step, with servers in this
/// process and no retries: a replica that is not ready gets no calls (so none
/// fails), one that is gone neither, one that is back gets them again, and
/// when none is ready the calls still go out and fail fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sends_calls_only_to_ready_replicas() {
    let _serial = SERIAL.lock().await;
    let certs = Arc::new(Certs::new());
    let port_a = cluster::free_port();
    let start_a = || {
        TestServer::start_with(certs.clone(), Backend::sqlite(), move |s| {
            s.server.addr = std::net::SocketAddr::from(([127, 0, 0, 1], port_a));
        })
    };
    let a = start_a().await;
    let b = TestServer::start_with(certs.clone(), Backend::sqlite(), |_| {}).await;
    let client = Client::builder(a.endpoint())
        .endpoint(b.endpoint())
        .ca_certificate(certs.ca())
        .token(certs.token("alice", READ_WRITE))
        .retry(RetryPolicy::none())
        .connect()
        .await
        .unwrap();
    async fn served(s: &TestServer) -> f64 {
        let text = s.admin_get("/metrics").await.1;
        let labels = [("grpc_method", "GetOrder")];
        metric(&text, "grpc_server_handled_total", &labels).unwrap_or(0.0)
    }
    // 40 calls for an unknown order: NOT_FOUND from whoever answers.
    let calls = |n: usize| {
        let client = client.clone();
        async move {
            let mut codes = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                codes.push(client.get_order("none").await.unwrap_err().code());
                assert!(t.elapsed() < Duration::from_secs(1), "a call hung");
            }
            codes
        }
    };
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    assert!(calls(40).await.iter().all(|c| *c == Code::NotFound));
    let (a1, b1) = (served(&a).await, served(&b).await);
    figure!("sdk", "both ready: a={a1} b={b1}");
    assert!(a1 > 0.0 && b1 > 0.0, "both in rotation");

    a.health.drain(); // NOT_SERVING, still serving what it is sent
    settle().await;
    assert!(calls(40).await.iter().all(|c| *c == Code::NotFound));
    let (a2, b2) = (served(&a).await, served(&b).await);
    figure!("sdk", "a draining: a={a2} b={b2}");
    assert_eq!(a2, a1, "a draining replica gets no new calls");

    a.stop().await; // gone: connections refused
    settle().await;
    assert!(calls(40).await.iter().all(|c| *c == Code::NotFound));
    let b3 = served(&b).await;
    assert_eq!(b3 - b2, 40.0, "every call went to b and none failed");

    let a = start_a().await; // back on its port, ready
    tokio::time::sleep(Duration::from_secs(3)).await; // the health watch retries with backoff
    b.health.drain();
    settle().await;
    assert!(calls(40).await.iter().all(|c| *c == Code::NotFound));
    let (a4, b4) = (served(&a).await, served(&b).await);
    figure!("sdk", "a restarted, b draining: a={a4} b={b4}");
    assert_eq!(
        (a4, b4),
        (40.0, b3),
        "the restarted replica is back in rotation"
    );

    a.health.drain(); // none ready: calls go to both and are answered
    settle().await;
    assert!(calls(40).await.iter().all(|c| *c == Code::NotFound));
    let (a5, b5) = (served(&a).await, served(&b).await);
    figure!("sdk", "none ready: a={a5} b={b5}");
    assert!(a5 > a4 && b5 > b4, "none ready: every replica gets calls");
    a.stop().await;
    b.stop().await;
}

/// What lets clients leave a stopping server in time: once it has drained,
/// its health watches end with UNAVAILABLE (after NOT_SERVING) instead of
/// holding the shutdown up, and new connections are refused at once while
/// the calls in flight finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_ends_health_watches_and_refuses_new_connections() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start(Backend::sqlite()).await;
    let (addr, url) = (server.addr, server.backend.url());
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(alice.channel());
    let request = tonic_health::pb::HealthCheckRequest {
        service: "orders.v1.OrderService".into(),
    };
    let mut watch = health.watch(request).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // Hold SQLite's write lock so a write is in flight during the stop.
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let in_flight = {
        let alice = alice.clone();
        let id = order.id.clone();
        tokio::spawn(async move { alice.cancel_order(&id, 0).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let stopping = tokio::spawn(server.stop());

    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch hears of the stop");
    assert_eq!(
        next.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch ends once drained");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    let ended = t0.elapsed();
    let refused = loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!in_flight.is_finished(), "the write is still in flight");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let cancelled = in_flight
        .await
        .unwrap()
        .expect("the in-flight call finishes");
    assert_eq!(cancelled.version, 2);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops once its calls are done")
        .unwrap();
    figure!(
        "drain",
        "health watch ended {:.0}ms and connections refused {:.0}ms after the stop, with a call still in flight",
        ms(ended),
        ms(refused)
    );
}

/// Scenario 7: a replica recycles its connections every second under the
/// load of grpc.aio (C-core) and grpc-js processes with many calls in
/// flight: no call fails, no connection is failed with an HTTP/2 error, and
/// no write reported failed was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_foreign_clients_through_connection_recycling_fail_no_call() {
    let _serial = SERIAL.lock().await;
    foreign::recycling().await;
}

/// Scenario 8: grpc.aio and grpc-js processes balance over two replicas
/// while each in turn is SIGTERMed, drains, exits and restarts: no call
/// fails, no connection is failed with an HTTP/2 error, and no write
/// reported failed was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_foreign_clients_through_a_sigterm_drain_fail_no_call() {
    let _serial = SERIAL.lock().await;
    foreign::sigterm_drain().await;
}
