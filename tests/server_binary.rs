//! The `orders-server` program as an operator runs it: a fresh checkout
//! (no certificates yet) serving TLS and JWT at once, `check-config`, exit 78
//! on bad configuration, `dev-token`, and exit 0 after SIGTERM.

mod common;

use common::repo;
use orders::sdk::Client;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = env!("CARGO_BIN_EXE_orders-server");

/// `orders-server` run from `cwd` with the repo's config/ and a clean environment.
fn server(cwd: &Path) -> Command {
    let mut cmd = Command::new(SERVER);
    cmd.current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORDERS_CONFIG_DIR", repo().join("config"));
    cmd
}

#[test]
fn a_bad_configuration_exits_78_naming_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = server(dir.path())
        .arg("check-config")
        .env("ORDERS_ENV", "production")
        .env("ORDERS__SERVER__MAX_CONCURRENT_STREAMS", "zero")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_concurrent_streams"), "{err}");

    let out = server(dir.path())
        .arg("check-config")
        .env("ORDERS_ENV", "production")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "tls.cert",
        "tls.key",
        "auth.issuer",
        "auth.audience",
        "auth: no verification keys",
    ] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }

    let out = server(dir.path())
        .arg("check-config")
        .env("ORDERS_ENV", "staging")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORDERS_ENV"));

    let out = server(dir.path())
        .args(["--config", "missing.toml", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn check_config_prints_the_layers_result_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hs256-secret-that-must-never-be-printed";
    let out = server(dir.path())
        .arg("check-config")
        .env("ORDERS__SERVER__ADDR", "127.0.0.1:6000")
        .env("ORDERS__AUTH__ALGORITHMS", "ES256,HS256")
        .env("ORDERS__AUTH__HS256_SECRET", secret)
        .env("ORDERS__DATABASE__URL", "postgres://app:hunter2@db/orders")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("127.0.0.1:6000"), "{text}");
    assert!(text.contains("\"HS256\""), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(
        !text.contains(secret) && !text.contains("hunter2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_fresh_checkout_serves_tls_and_jwt_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = server(dir.path())
        .env("ORDERS__SERVER__ADDR", "127.0.0.1:0")
        .env("ORDERS__TELEMETRY__LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The bound address is in the "serving" log line.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("serving orders.v1.OrderService") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server starts");
    let port = addr.rsplit_once(':').unwrap().1;
    assert!(
        dir.path().join("certs/dev/ca.pem").is_file(),
        "dev certificates generated"
    );

    let token = server(dir.path())
        .args(["dev-token", "--sub", "alice"])
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let client = Client::builder(format!("https://localhost:{port}"))
        .ca_certificate(std::fs::read(dir.path().join("certs/dev/ca.pem")).unwrap())
        .token(token.trim())
        .connect()
        .await
        .unwrap();
    let order = client
        .register_order(
            vec![common::item("APPLE-1", 1, 100)],
            common::address("Main"),
        )
        .await
        .unwrap();
    assert_eq!(client.get_order(&order.id).await.unwrap().id, order.id);
    assert!(
        dir.path().join("data/orders.db").is_file(),
        "SQLite by default, folder created"
    );
    drop(client);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "exits after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}
