//! Interop from outside Rust: the Python `grpcio`, `grpc.aio` and `grpcurl`
//! suites and the Node `@grpc/grpc-js` and connectrpc suites in
//! `tests/interop/` run against a real TLS server with real tokens.
//!
//! The Python environment (`.venv/`) is made by `scripts/python-env`, the
//! Node packages by `scripts/node-env` (both idempotent; `.ci/run` calls
//! them too). These tests fail, never skip, when they cannot be made:
//! interop is part of the contract.

mod common;

use common::*;
use std::process::Command;

#[tokio::test]
async fn python_grpcio_and_grpcurl_clients_work_against_the_server() {
    let repo = repo();
    let setup = Command::new(repo.join("scripts/python-env"))
        .status()
        .expect("scripts/python-env runs");
    assert!(
        setup.success(),
        "scripts/python-env failed: cannot set up the Python environment"
    );

    let server = TestServer::start(Backend::sqlite()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), server.certs.ca()).unwrap();
    let certs = server.certs.clone();
    let kid = jsonwebtoken::decode_header(certs.token("alice", READ_WRITE))
        .unwrap()
        .kid
        .expect("dev tokens carry a kid");
    let endpoint = format!("localhost:{}", server.addr.port());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(repo.join(".venv/bin/python"))
            .current_dir(&repo)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/interop",
            ])
            .env("ORDERS_ENDPOINT", endpoint)
            .env("ORDERS_CA_CERT", ca.path())
            .env("ORDERS_PROTO_DIR", repo.join("proto"))
            .env("PLATFORM_PROTO_DIR", repo.join("platform/proto"))
            .env("GRPCURL", repo.join(".venv/bin/grpcurl"))
            .env("ORDERS_TOKEN", certs.token("alice", READ_WRITE))
            .env("ORDERS_TOKEN_BOB", certs.token("bob", READ_WRITE))
            .env("ORDERS_TOKEN_STAFF", certs.token("staff-1", STAFF))
            .env("ORDERS_TOKEN_READONLY", certs.token("alice", "orders:read"))
            // For test_pyjwt.py, which mints tokens with PyJWT from the same key.
            .env(
                "ORDERS_SIGNING_KEY",
                certs.dev.path(grpc_platform::dev::SIGNING_KEY),
            )
            .env("ORDERS_KID", kid)
            .env("ORDERS_ISSUER", ISSUER)
            .env("ORDERS_AUDIENCE", AUDIENCE)
            .output()
            .expect("pytest runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the Python interop suite failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed"), "pytest ran tests:\n{stdout}");
    server.stop().await;
}

/// The Node suite (`tests/interop/node/*.test.js`, run with Node's own test
/// runner) against one real TLS server with real tokens. With
/// `@grpc/grpc-js`: every method, deadlines, cancellation, rich errors, gzip,
/// health, reflection, keepalive, and whether UpdateOrder calls cancelled
/// right after their half-close are recorded (admin port metrics) as what
/// happened to the order. With connectrpc's connect-node
/// (`connect.test.js`), over Connect (JSON and protobuf), gRPC and gRPC-Web
/// on HTTP/2: unary, server, client and bidirectional streaming calls,
/// errors with their details, and deadlines.
///
/// The Node modules are installed by `scripts/node-env` (idempotent; `.ci/run`
/// calls it too); this test fails, never skips, when it cannot.
#[tokio::test]
async fn node_grpc_js_clients_work_against_the_server() {
    let repo = repo();
    let setup = Command::new(repo.join("scripts/node-env"))
        .status()
        .expect("scripts/node-env runs");
    assert!(
        setup.success(),
        "scripts/node-env failed: cannot install the Node clients"
    );
    let dir = repo.join("tests/interop/node");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.js"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.js in {}", dir.display());

    let server = TestServer::start(Backend::sqlite()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), server.certs.ca()).unwrap();
    let certs = &server.certs;
    let mut node = tokio::process::Command::new("node");
    node.current_dir(&dir)
        // One file at a time: update_cancel.test.js reads deltas of the
        // server's UpdateOrder counters, which another file's calls would move.
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(&files)
        // The name the server certificate carries: an IP address would make
        // grpc-js send no SNI.
        .env(
            "ORDERS_ENDPOINT",
            format!("localhost:{}", server.addr.port()),
        )
        .env("ORDERS_CA_CERT", ca.path())
        .env("ORDERS_ADMIN_ADDR", server.admin_addr.to_string())
        .env("ORDERS_PROTO_DIR", repo.join("proto"))
        .env("PLATFORM_PROTO_DIR", repo.join("platform/proto"))
        .env("ORDERS_TOKEN", certs.token("alice", READ_WRITE))
        .env("ORDERS_TOKEN_BOB", certs.token("bob", READ_WRITE))
        .env("ORDERS_TOKEN_STAFF", certs.token("staff-1", STAFF))
        .env("ORDERS_TOKEN_READONLY", certs.token("alice", "orders:read"))
        .kill_on_drop(true);
    // The server runs on this test's runtime: wait for node without blocking it.
    let output = tokio::time::timeout(std::time::Duration::from_secs(180), node.output())
        .await
        .expect("the Node suite ends within 180 s")
        .expect("node runs (Node.js 20.10 or later, for --test-concurrency)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    // The spec reporter's closing summary: "ℹ tests 40", "ℹ pass 40", "ℹ fail 0".
    let count = |what: &str| -> usize {
        stdout
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(&format!("ℹ {what} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no '{what}' count in the Node summary:\n{stdout}"))
    };
    assert!(
        output.status.success() && count("fail") == 0,
        "the Node interop suite failed:\n{stdout}\n{stderr}"
    );
    assert!(count("tests") > 0, "the Node suite ran no test:\n{stdout}");
    assert_eq!(count("pass"), count("tests"), "tests not passed:\n{stdout}");
    server.stop().await;
}

/// UNAVAILABLE and an INTERNAL from the database, which the shared server of
/// the suite must never give, decoded by Python too (the `test_outage_*`
/// tests of `tests/interop/test_error_details.py`): a PostgreSQL-backed
/// server of their own, whose streams the server's time cap ends, one of
/// whose tables is dropped behind its back, and which drains while a
/// TrackOrders stream is open.
#[tokio::test]
async fn python_decodes_the_details_of_internal_and_unavailable() {
    use sqlx::Connection;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let repo = repo();
    let setup = Command::new(repo.join("scripts/python-env"))
        .status()
        .expect("scripts/python-env runs");
    assert!(setup.success(), "scripts/python-env failed");
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let server =
        TestServer::start_with(Arc::new(Certs::new()), Backend::Postgres(db.clone()), |s| {
            // Streams asking for more are ended at 2 s (STREAM_TIME_LIMIT).
            s.server.default_timeout = Duration::from_millis(2_000);
            s.server.max_timeout = Duration::from_millis(2_000);
            s.shutdown.drain = Duration::from_secs(1);
        })
        .await;
    // The order the streams follow, registered while the database is whole.
    let order = server
        .alice()
        .await
        .register_order(vec![item("OUTAGE-1", 1, 100)], address("Outage Street"))
        .await
        .unwrap();
    // Every new order is written to this table: RegisterOrder now fails with
    // an error the server cannot classify (INTERNAL), while reads still work.
    let mut pg = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("DROP TABLE order_versions")
        .execute(&mut pg)
        .await
        .unwrap();

    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), server.certs.ca()).unwrap();
    let certs = server.certs.clone();
    let endpoint = format!("localhost:{}", server.addr.port());
    let file = "tests/interop/test_error_details.py";
    let pytest = tokio::task::spawn_blocking(move || {
        Command::new(repo.join(".venv/bin/python"))
            .current_dir(&repo)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            // In this order: the drain comes last, as it stops the server.
            .args(
                [
                    "test_outage_internal_from_a_database_failure_is_opaque",
                    "test_outage_unavailable_when_the_servers_stream_limit_ends_a_stream",
                    "test_outage_unavailable_when_the_server_drains",
                ]
                .map(|test| format!("{file}::{test}")),
            )
            .env("ORDERS_ENDPOINT", endpoint)
            .env("ORDERS_CA_CERT", ca.path())
            .env("ORDERS_PROTO_DIR", repo.join("proto"))
            .env("PLATFORM_PROTO_DIR", repo.join("platform/proto"))
            .env("ORDERS_TOKEN", certs.token("alice", READ_WRITE))
            .env("ORDERS_TOKEN_BOB", certs.token("bob", READ_WRITE))
            .env("ORDERS_TOKEN_STAFF", certs.token("staff-1", STAFF))
            .env("ORDERS_TOKEN_READONLY", certs.token("alice", "orders:read"))
            .env("ORDERS_OUTAGE_ORDER_ID", &order.id)
            .output()
            .expect("pytest runs")
    });
    // Drain once the TrackOrders of the last test is open (or after a bound,
    // so a failed run still ends).
    let started = Instant::now();
    let track = [("grpc_method", "TrackOrders")];
    while metric(
        &server.admin_get("/metrics").await.1,
        "grpc_server_started_total",
        &track,
    )
    .unwrap_or(0.0)
        < 1.0
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;

    let output = pytest.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the Python outage tests failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("3 passed"), "all three ran:\n{stdout}");
}
