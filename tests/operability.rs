//! Operability (docs/operations.md; docs/reference.md "Configuration"): metrics with exact counts,
//! deadlines that stop the work, load shedding, request ids, and health on
//! the admin port.

mod common;

use common::*;
use orders::sdk::pb;
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const ORDERS: &str = "orders.v1.OrderService";

/// Holds SQLite's write lock from outside the server, so the server's next
/// write waits: a dependency made slow on purpose.
async fn hold_write_lock(backend: &Backend) -> sqlx::SqliteConnection {
    let mut conn = sqlx::SqliteConnection::connect(&backend.url())
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release(mut lock: sqlx::SqliteConnection) {
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
}

#[tokio::test]
async fn metrics_count_exactly_the_calls_made_with_codes_read_from_trailers() {
    let server = TestServer::start(Backend::sqlite()).await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    alice
        .register(pb::RegisterOrderRequest::default())
        .await
        .unwrap_err();
    alice.get_order("no-such-order").await.unwrap_err();
    server
        .anonymous()
        .await
        .get_order(&order.id)
        .await
        .unwrap_err();
    let mut watch = alice.watch_order_stream(&order.id, 0).await.unwrap();
    watch.next().await.unwrap().unwrap();
    alice.cancel_order(&order.id, 0).await.unwrap();
    watch.next().await.unwrap().unwrap();
    assert!(watch.next().await.is_none());
    // The server records a stream's end when its trailers go out.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let handled = |method: &str, kind: &str, code: &str| {
        metric(
            &text,
            "grpc_server_handled_total",
            &[
                ("grpc_service", ORDERS),
                ("grpc_method", method),
                ("grpc_type", kind),
                ("grpc_code", code),
            ],
        )
    };
    assert_eq!(handled("RegisterOrder", "unary", "OK"), Some(1.0), "{text}");
    assert_eq!(
        handled("RegisterOrder", "unary", "InvalidArgument"),
        Some(1.0)
    );
    assert_eq!(handled("GetOrder", "unary", "NotFound"), Some(1.0));
    assert_eq!(handled("GetOrder", "unary", "Unauthenticated"), Some(1.0));
    assert_eq!(handled("CancelOrder", "unary", "OK"), Some(1.0));
    assert_eq!(handled("WatchOrder", "server_stream", "OK"), Some(1.0));
    let method = |m: &'static str, kind: &'static str| {
        [
            ("grpc_service", ORDERS),
            ("grpc_method", m),
            ("grpc_type", kind),
        ]
    };
    assert_eq!(
        metric(
            &text,
            "grpc_server_started_total",
            &method("RegisterOrder", "unary")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "grpc_server_started_total",
            &method("GetOrder", "unary")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "grpc_server_msg_sent_total",
            &method("WatchOrder", "server_stream")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "grpc_server_msg_received_total",
            &method("WatchOrder", "server_stream")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "grpc_server_msg_received_total",
            &method("RegisterOrder", "unary")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "grpc_server_handling_seconds_count",
            &method("GetOrder", "unary")
        ),
        Some(2.0)
    );
    assert!(metric(&text, "orders_db_pool_max_connections", &[]).unwrap() >= 1.0);
    assert!(metric(&text, "orders_db_pool_connections", &[("state", "idle")]).is_some());
    // One registration and one cancel were stored (the invalid call wrote nothing).
    assert_eq!(metric(&text, "orders_db_writes_total", &[]), Some(2.0));
    let transactions = metric(&text, "orders_db_write_transactions_total", &[]).unwrap();
    assert!((1.0..=2.0).contains(&transactions), "{transactions}");
    let expiry = metric(&text, "orders_tls_cert_expiry_timestamp_seconds", &[]).unwrap();
    assert!(
        expiry > chrono::Utc::now().timestamp() as f64,
        "the serving certificate's not_after"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_default_deadline_ends_a_slow_unary_call_and_its_work_stops() {
    let backend = Backend::sqlite();
    let server = TestServer::start_with(std::sync::Arc::new(Certs::new()), backend.clone(), |s| {
        s.server.default_timeout = Duration::from_millis(300);
    })
    .await;
    // A raw client that sends no grpc-timeout: only the server's default applies.
    let alice = server.alice().await;
    let mut raw = pb::order_service_client::OrderServiceClient::new(alice.channel());
    let mut request = tonic::Request::new(register_request(""));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.certs.token("alice", READ_WRITE))
            .parse()
            .unwrap(),
    );
    let lock = hold_write_lock(&backend).await;
    let started = Instant::now();
    let err = raw.register_order(request).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::DeadlineExceeded,
        "{err} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ended near its deadline, not the 5 s lock wait"
    );
    // Had the handler lived on, it would register the order once the lock goes.
    release(lock).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count_orders(&alice).await,
        0,
        "the dropped handler wrote nothing"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_deadline_is_answered_deadline_exceeded_and_caps_apply_to_streams() {
    let backend = Backend::sqlite();
    let server = TestServer::start_with(std::sync::Arc::new(Certs::new()), backend.clone(), |s| {
        s.server.max_timeout = Duration::from_millis(400);
    })
    .await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();

    // The client's 300 ms deadline: the server answers, not just the client's timer.
    let mut raw = pb::order_service_client::OrderServiceClient::new(alice.channel());
    let lock = hold_write_lock(&backend).await;
    let mut request = tonic::Request::new(pb::CancelOrderRequest {
        order_id: order.id.clone(),
        expected_version: 0,
    });
    request.set_timeout(Duration::from_millis(300));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.certs.token("alice", READ_WRITE))
            .parse()
            .unwrap(),
    );
    let status = raw.cancel_order(request).await.unwrap_err();
    // The raw tonic client enforces the deadline too and calls its own expiry
    // CANCELLED; which reply wins is a race. The server's verdict is in its
    // metrics, whatever the client saw first.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let labels = [
        ("grpc_method", "CancelOrder"),
        ("grpc_code", "DeadlineExceeded"),
    ];
    let started = Instant::now();
    while metric(
        &server.admin_get("/metrics").await.1,
        "grpc_server_handled_total",
        &labels,
    ) != Some(1.0)
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server answered DEADLINE_EXCEEDED"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    release(lock).await;

    // A watch asking for an hour is capped at server.max_timeout_ms (400 ms).
    let mut request = tonic::Request::new(pb::WatchOrderRequest {
        order_id: order.id.clone(),
        after_version: 0,
    });
    request.set_timeout(Duration::from_secs(3600));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.certs.token("alice", READ_WRITE))
            .parse()
            .unwrap(),
    );
    let started = Instant::now();
    let mut stream = raw.watch_order(request).await.unwrap().into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().order.unwrap().version,
        1
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends");
    // The server's cap, not the client's deadline, ended it: UNAVAILABLE
    // (clients resume), saying so.
    let end = end.unwrap().unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("server.max_timeout_ms = 400 ms"),
        "{end:?}"
    );
    let details = tonic_types::StatusExt::get_error_details(&end);
    assert_eq!(details.error_info().unwrap().reason, "STREAM_TIME_LIMIT");
    assert!(details.retry_info().is_some());
    assert!(started.elapsed() < Duration::from_secs(3));
    // The order was not changed by the cancel whose deadline passed.
    assert_eq!(alice.get_order(&order.id).await.unwrap().version, 1);
    server.stop().await;
}

#[tokio::test]
async fn past_the_concurrency_limit_calls_are_shed_and_the_server_recovers() {
    let backend = Backend::sqlite();
    let server = TestServer::start_with(std::sync::Arc::new(Certs::new()), backend.clone(), |s| {
        s.server.concurrency_limit = 1;
    })
    .await;
    let alice = server.alice().await;
    let lock = hold_write_lock(&backend).await;
    let busy = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .register_order(vec![item("A", 1, 1)], address("A"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = alice.get_order("any").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Probes are never shed.
    assert_eq!(
        alice.health("readiness").await.unwrap(),
        ServingStatus::Serving
    );
    release(lock).await;
    busy.await.unwrap().unwrap();
    assert_eq!(
        count_orders(&alice).await,
        1,
        "recovered once the load dropped"
    );
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let server = TestServer::start(Backend::sqlite()).await;
    let mut raw = pb::order_service_client::OrderServiceClient::new(server.alice().await.channel());
    let token = format!("Bearer {}", server.certs.token("alice", READ_WRITE));
    let mut request = tonic::Request::new(pb::GetOrderRequest {
        order_id: "x".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", token.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let status = raw.get_order(request).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "req-42");
    let mut request = tonic::Request::new(pb::ListOrdersRequest::default());
    request
        .metadata_mut()
        .insert("authorization", token.parse().unwrap());
    let response = raw.list_orders(request).await.unwrap();
    let made = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::try_parse(made).is_ok(), "{made}");
    server.stop().await;
}

#[tokio::test]
async fn the_admin_port_serves_health_watch_and_metrics_without_tls_or_token() {
    let server = TestServer::start(Backend::sqlite()).await;
    let mut health = server.admin_health().await;
    for (name, expected) in [
        ("liveness", ServingStatus::Serving),
        ("readiness", ServingStatus::Serving),
        ("", ServingStatus::Serving),
        (ORDERS, ServingStatus::Serving),
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, expected as i32, "{name:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // As every error of the main port: a google.rpc.Status with ErrorInfo.
    use tonic_types::StatusExt;
    let info = err.get_error_details().error_info().cloned();
    assert_eq!(
        info.map(|i| (i.reason, i.domain)),
        Some(("NOT_FOUND".to_string(), "grpc.health.v1.Health".to_string())),
        "{err:?}"
    );
    let mut unknown = health
        .watch(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unknown.next().await.unwrap().unwrap().status,
        ServingStatus::ServiceUnknown as i32
    );

    // Watch follows readiness: the database check failing and recovering.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    server.health.set_dependencies_ok(false);
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    let live = health
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        live.status,
        ServingStatus::Serving as i32,
        "liveness does not follow the database"
    );
    server.health.set_dependencies_ok(true);
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE orders_db_pool_max_connections gauge"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn readiness_follows_a_real_database_outage_and_recovery() {
    let Some(pg) = TempPostgres::start() else {
        return;
    };
    let url = pg.url();
    let server =
        TestServer::start_with(std::sync::Arc::new(Certs::new()), Backend::sqlite(), |s| {
            s.service.database.url = url.clone().into();
            s.admin.check_interval = Duration::from_millis(250);
            s.admin.check_timeout = Duration::from_millis(500);
        })
        .await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut health = server.admin_health().await;
    let mut readiness = health
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        readiness.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    pg.stop();
    let stopped = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(5), readiness.next())
        .await
        .expect("readiness changes");
    assert_eq!(
        next.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    eprintln!(
        "readiness turned NOT_SERVING {:?} after the database stopped",
        stopped.elapsed()
    );
    let err = alice.get_order(&order.id).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let live = health
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.status, ServingStatus::Serving as i32);

    pg.start_again();
    let next = tokio::time::timeout(Duration::from_secs(10), readiness.next())
        .await
        .expect("readiness recovers");
    assert_eq!(next.unwrap().unwrap().status, ServingStatus::Serving as i32);
    assert_eq!(
        alice.get_order(&order.id).await.unwrap().id,
        order.id,
        "nothing acknowledged was lost"
    );
    server.stop().await;
}

#[tokio::test]
async fn gzip_and_zstd_are_used_when_the_client_asks() {
    use tonic::codec::CompressionEncoding;
    let server = TestServer::start(Backend::sqlite()).await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut raw = pb::order_service_client::OrderServiceClient::new(alice.channel())
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let mut request = tonic::Request::new(pb::GetOrderRequest {
            order_id: order.id.clone(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", server.certs.token("alice", READ_WRITE))
                .parse()
                .unwrap(),
        );
        let response = raw.get_order(request).await.unwrap();
        let sent = response
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            sent.as_deref(),
            Some(encoding.to_string().as_str()),
            "{encoding:?}"
        );
        assert_eq!(response.into_inner().id, order.id);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_cancel_ends_the_servers_stream_work() {
    let server = TestServer::start(Backend::sqlite()).await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let mut watch = alice.watch_order_stream(&order.id, 0).await.unwrap();
    watch.next().await.unwrap().unwrap();
    drop(watch); // the client cancels: RST_STREAM
    let labels = [
        ("grpc_service", ORDERS),
        ("grpc_method", "WatchOrder"),
        ("grpc_type", "server_stream"),
        ("grpc_code", "Canceled"),
    ];
    let started = Instant::now();
    loop {
        let (_, text) = server.admin_get("/metrics").await;
        if metric(&text, "grpc_server_handled_total", &labels) == Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server ended the stream: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stream's task is gone too: a later change is not sent anywhere, and
    // the server still shuts down at once (an open stream would hold it).
    alice.cancel_order(&order.id, 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("stops promptly");
}

/// gRFC A9 connection age: at its (jittered) age a connection gets GOAWAY,
/// its calls finish and new calls go to a new connection, so callers see
/// no failure, not even without retries; streams on it end with UNAVAILABLE
/// so their clients resume at once; and whatever still holds it open after
/// the grace is cut off.
#[tokio::test]
async fn connections_past_their_age_are_recycled_without_failing_a_call() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.max_connection_age = Some(Duration::from_secs(1));
        s.server.max_connection_age_grace = Duration::from_secs(2);
        // Eight callers as one subject, as fast as they can: what is
        // measured is recycling, not the per-caller rate.
        s.server.max_call_rate_per_caller = 0;
    })
    .await;
    let alice = server.alice().await;
    let order = alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();

    // A plain generated client, no SDK resume: the stream must end by itself.
    let token = server.certs.token("alice", READ_WRITE);
    let mut raw = pb::order_service_client::OrderServiceClient::new(alice.channel());
    let mut request = tonic::Request::new(pb::WatchOrderRequest {
        order_id: order.id.clone(),
        after_version: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let opened = Instant::now();
    let mut watch = raw.watch_order(request).await.unwrap().into_inner();
    // A health watch on the main port is not ended by recycling: the grace
    // ends it, with the connection.
    let mut health = tonic_health::pb::health_client::HealthClient::new(alice.channel())
        .watch(HealthCheckRequest {
            service: ORDERS.into(),
        })
        .await
        .unwrap()
        .into_inner();

    let once = alice.with_retry(orders::sdk::RetryPolicy::none());
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let client = once.clone();
            let id = order.id.clone();
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_millis(3500);
                let mut calls = 0u32;
                while Instant::now() < until {
                    client.get_order(&id).await.expect("no call fails");
                    calls += 1;
                }
                calls
            })
        })
        .collect();

    assert_eq!(
        watch.next().await.unwrap().unwrap().order.unwrap().version,
        1
    );
    let status = watch
        .next()
        .await
        .expect("the stream ends with a status")
        .expect_err("the stream ends with UNAVAILABLE");
    let ended = opened.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("maximum age"), "{status:?}");
    assert!(
        ended >= Duration::from_millis(850) && ended < Duration::from_millis(2500),
        "ended at the connection's age (1 s ± 10%), not at the grace: {ended:?}"
    );

    let health_end = loop {
        match health.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the health watch ended without an error"),
        }
    };
    let cut = opened.elapsed();
    assert!(
        cut >= Duration::from_millis(2700) && cut < Duration::from_secs(6),
        "cut off once age (≈1 s) and grace (2 s) had passed: {cut:?} ({health_end:?})"
    );

    let mut calls = 0;
    for caller in callers {
        calls += caller.await.unwrap();
    }
    assert!(calls > 100, "calls kept flowing across recycling: {calls}");
    server.stop().await;
}

/// Every metric the shipped rules and dashboard (deploy/monitoring/) read is
/// one this server exports, under that exact name: a renamed metric or a
/// typo in a rule would otherwise leave an alert that can never fire.
#[tokio::test]
async fn the_shipped_rules_and_dashboard_read_only_metrics_the_server_exports() {
    use std::collections::BTreeSet;

    let server = TestServer::start(Backend::sqlite()).await;
    let alice = server.alice().await;
    alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    alice.get_order("no-such-order").await.unwrap_err();
    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    // The parser gathers a histogram's `_bucket` samples under the base name;
    // its `_sum` and `_count` stay samples of their own.
    let exported: BTreeSet<String> = scrape
        .samples
        .iter()
        .map(|s| match s.value {
            prometheus_parse::Value::Histogram(_) => format!("{}_bucket", s.metric),
            _ => s.metric.clone(),
        })
        .collect();
    assert!(
        exported.contains("grpc_server_handled_total"),
        "the calls made left labelled series: {exported:?}"
    );
    // The latency SLO counts calls under 256 ms, `le="0.256"`: a bucket
    // boundary, spelled as the rules match it.
    assert!(
        text.lines()
            .any(|l| l.starts_with("grpc_server_handling_seconds_bucket{")
                && l.contains(r#"le="0.256""#)),
        "{text}"
    );

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring");
    let rule: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join("prometheusrule.yaml")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in rule["spec"]["groups"].as_sequence().expect("spec.groups") {
        for r in group["rules"].as_sequence().expect("rules") {
            exprs.push(
                r["expr"]
                    .as_str()
                    .expect("every rule has an expr")
                    .to_owned(),
            );
            if let Some(name) = r["record"].as_str() {
                recorded.insert(name.to_owned());
            }
        }
    }
    let rule_exprs = exprs.len();
    let board: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("dashboard.json")).unwrap())
            .unwrap();
    collect_exprs(&board, &mut exprs);
    assert!(exprs.len() > rule_exprs, "the dashboard has queries");

    // `up` is made by Prometheus for every scrape target, not exported.
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| promql_metric_names(e))
        .filter(|name| !recorded.contains(name) && name != "up")
        .collect();
    assert!(!used.is_empty());
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "deploy/monitoring reads metrics the server does not export: {unknown:?}\n\
         exported: {exported:?}"
    );
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match v {
                    serde_json::Value::String(s) if key == "expr" => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression reads: identifiers outside label
/// matchers, strings and ranges that are not functions, keywords, or label
/// lists (`by (...)`, `on (...)`, ...). Written by hand because a lexical pass
/// is all this needs: the expressions' syntax is checked by promtool
/// (scripts/check-monitoring), and the one maintained PromQL parser crate
/// would bring a parser generator into the build for this test alone.
fn promql_metric_names(expr: &str) -> Vec<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Keywords, and the aggregations, which may be followed by `by (...)`
    // rather than their argument.
    const OPERATORS: [&str; 21] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |mut i: usize, close: char| {
        while i < chars.len() && chars[i] != close {
            if chars[i] == '\\' {
                i += 1;
            } else if chars[i] == '"' && close != '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut names = Vec::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_to(i + 1, c),
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '(' if label_list_next => {
                label_list_next = false;
                i = skip_to(i + 1, ')');
            }
            '#' => i = skip_to(i + 1, '\n'),
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (`14.4`, `1e3`, `5m`).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    // `group_left` may stand without a list.
                    label_list_next = next == Some(&'(');
                } else if !OPERATORS.contains(&lower.as_str()) && next != Some(&'(') {
                    // Not an operator, nor a function or aggregation called.
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}
