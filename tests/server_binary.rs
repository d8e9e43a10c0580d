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
        .env("ORDERS__ADMIN__ADDR", "127.0.0.1:0")
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

/// A running `orders-server` process with its stdout lines collected.
struct Running {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
    admin_port: u16,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    fn start(envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = server(dir.path());
        cmd.env("ORDERS__SERVER__ADDR", "127.0.0.1:0")
            .env("ORDERS__ADMIN__ADDR", "127.0.0.1:0")
            .env("ORDERS__TELEMETRY__LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let msg = v["message"].as_str().unwrap_or_default();
                    if msg.starts_with("serving") {
                        let _ = tx.send((
                            msg.to_owned(),
                            v["addr"].as_str().unwrap_or_default().to_owned(),
                        ));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut port = 0;
        let mut admin_port = 0;
        while port == 0 || admin_port == 0 {
            let (msg, addr) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the server starts");
            let p: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
            if msg.contains("admin") {
                admin_port = p;
            } else {
                port = p;
            }
        }
        Self {
            child,
            dir,
            port,
            admin_port,
            lines,
        }
    }

    fn token(&self, sub: &str) -> String {
        let out = server(self.dir.path())
            .args(["dev-token", "--sub", sub])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    async fn client(&self, sub: &str) -> Client {
        Client::builder(format!("https://localhost:{}", self.port))
            .ca_certificate(std::fs::read(self.dir.path().join("certs/dev/ca.pem")).unwrap())
            .token(self.token(sub))
            .connect()
            .await
            .unwrap()
    }

    fn sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "exits within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn readiness(&self, name: &str) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            self.admin_port
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest {
            service: name.into(),
        };
        health.check(request).await.unwrap().into_inner().status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn every_call_leaves_one_json_access_log_line_without_the_token() {
    // Debug for auth: its "call refused" line is written during the call.
    let mut server = Running::start(&[(
        "ORDERS__TELEMETRY__LOG_LEVEL",
        "info,grpc_platform::auth=debug",
    )]);
    let alice = server.client("alice").await;
    let token = server.token("alice");
    let mut raw = orders::sdk::pb::order_service_client::OrderServiceClient::new(alice.channel());
    let mut request = tonic::Request::new(common::register_request(""));
    let metadata = request.metadata_mut();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    metadata.insert("x-request-id", "log-test-1".parse().unwrap());
    metadata.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    raw.register_order(request).await.unwrap();
    let mut request = tonic::Request::new(orders::sdk::pb::GetOrderRequest {
        order_id: "x".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer not-a-token".parse().unwrap());
    raw.get_order(request).await.unwrap_err();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let lines = server.lines.lock().unwrap().clone();
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 2, "one line per call: {access:#?}");
    let ok = &access[0];
    assert_eq!(ok["method"], "/orders.v1.OrderService/RegisterOrder");
    assert_eq!(ok["code"], "OK");
    assert_eq!(ok["request_id"], "log-test-1");
    assert_eq!(ok["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ok["subject"], "alice");
    assert!(ok["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let refused = &access[1];
    assert_eq!(refused["code"], "Unauthenticated");
    assert_eq!(refused["subject"], "");
    assert!(uuid::Uuid::try_parse(refused["request_id"].as_str().unwrap()).is_ok());
    // A line written during a call carries its request id, as the `rpc`
    // span object (in production from the call's scope, not a span).
    let during: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "call refused")
        .collect();
    assert_eq!(during.len(), 1, "{during:#?}");
    assert_eq!(during[0]["span"]["name"], "rpc");
    assert_eq!(during[0]["span"]["request_id"], refused["request_id"]);
    let everything = lines.join("\n");
    assert!(
        !everything.contains(&token) && !everything.contains("not-a-token"),
        "no token is ever logged"
    );
    server.sigterm();
    assert_eq!(server.exit_code().await, Some(0));
}

#[tokio::test]
async fn on_sigterm_readiness_drops_at_once_calls_in_flight_finish_and_the_exit_is_0() {
    use sqlx::Connection;
    let mut server = Running::start(&[("ORDERS__SHUTDOWN__DRAIN_SECS", "2")]);
    let alice = server.client("alice").await;
    let order = alice
        .register_order(vec![common::item("A", 1, 1)], common::address("A"))
        .await
        .unwrap();
    // Hold SQLite's write lock so the next write is in flight when the signal comes.
    let db = format!("sqlite://{}/data/orders.db", server.dir.path().display());
    let mut lock = sqlx::SqliteConnection::connect(&db).await.unwrap();
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
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(
        server.readiness("readiness").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(server.readiness("").await, ServingStatus::NotServing as i32);
    assert_eq!(
        server.readiness("liveness").await,
        ServingStatus::Serving as i32
    );
    // Lame duck: still serving new calls while draining.
    assert_eq!(alice.get_order(&order.id).await.unwrap().version, 1);
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    let cancelled = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(cancelled.version, 2);
    drop(alice);
    assert_eq!(server.exit_code().await, Some(0));
}

#[test]
fn each_configuration_layer_wins_over_the_one_below() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    // Keys that every layer sets to its own value: the highest layer must show.
    std::fs::write(
        config.join("default.toml"),
        "[auth]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\nalgorithms = [\"HS256\"]\n\
         [tls]\nenabled = false\n\
         [server]\nconcurrency_limit = 11\nmax_concurrent_streams = 21\nkeepalive_interval_secs = 31\nmax_connection_age_secs = 41\n",
    )
    .unwrap();
    std::fs::write(
        config.join("test.toml"),
        "[server]\nconcurrency_limit = 12\nmax_concurrent_streams = 22\nkeepalive_interval_secs = 32\n",
    )
    .unwrap();
    let extra = dir.path().join("extra.toml");
    std::fs::write(
        &extra,
        "[server]\nconcurrency_limit = 13\nmax_concurrent_streams = 23\n",
    )
    .unwrap();
    let out = Command::new(SERVER)
        .current_dir(dir.path())
        .env_clear()
        .env("ORDERS_ENV", "test")
        .env("ORDERS_CONFIG_DIR", &config)
        .env("ORDERS__SERVER__CONCURRENCY_LIMIT", "14")
        .args(["--config", extra.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "concurrency_limit = 14",       // environment variable
        "max_concurrent_streams = 23",  // --config
        "keepalive_interval_secs = 32", // config/test.toml
        "max_connection_age_secs = 41", // config/default.toml
        "max_timeout_ms = 60000",       // built-in default
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("# environment: test"));
}

#[test]
fn each_kind_of_bad_value_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "[server]\nreflection = \"sometimes\"\n").unwrap();
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "[server]\nadress = \"127.0.0.1:1\"\n").unwrap();
    /// What is wrong, the environment and arguments that make it so, the key
    /// the message must name.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unparsable number",
            vec![("ORDERS__SERVER__MAX_MESSAGE_BYTES", "lots")],
            vec![],
            "max_message_bytes",
        ),
        (
            "bad address",
            vec![("ORDERS__ADMIN__ADDR", "port-eighty")],
            vec![],
            "admin.addr",
        ),
        (
            "bad enum",
            vec![("ORDERS__TELEMETRY__LOG_FORMAT", "xml")],
            vec![],
            "log_format",
        ),
        (
            "bad log filter",
            vec![("ORDERS__TELEMETRY__LOG_LEVEL", "=[")],
            vec![],
            "telemetry.log_level",
        ),
        (
            "bad url",
            vec![("ORDERS__DATABASE__URL", "mysql://db")],
            vec![],
            "database.url",
        ),
        (
            "bad otlp endpoint",
            vec![("ORDERS__TELEMETRY__OTLP_ENDPOINT", "collector:4317")],
            vec![],
            "telemetry.otlp_endpoint",
        ),
        (
            "unknown algorithm",
            vec![("ORDERS__AUTH__ALGORITHMS", "ES256,XS999")],
            vec![],
            "auth.algorithms",
        ),
        (
            "unreadable key file",
            vec![("ORDERS__AUTH__PUBLIC_KEYS", "/nonexistent.pem")],
            vec![],
            "auth.public_keys[0]",
        ),
        (
            "wrong type in a file",
            vec![],
            vec!["--config", bad_file.to_str().unwrap()],
            "reflection",
        ),
        (
            "unknown key",
            vec![],
            vec!["--config", unknown_key.to_str().unwrap()],
            "adress",
        ),
        (
            "missing --config file",
            vec![],
            vec!["--config", "/nonexistent.toml"],
            "--config",
        ),
        (
            "unknown environment",
            vec![("ORDERS_ENV", "staging")],
            vec![],
            "ORDERS_ENV",
        ),
        (
            "plaintext in production",
            vec![
                ("ORDERS_ENV", "production"),
                ("ORDERS__TLS__ENABLED", "false"),
            ],
            vec![],
            "tls.enabled",
        ),
        (
            "HS256 in production",
            vec![
                ("ORDERS_ENV", "production"),
                (
                    "ORDERS__AUTH__HS256_SECRET",
                    "0123456789abcdef0123456789abcdef",
                ),
            ],
            vec![],
            "auth.hs256_secret",
        ),
    ];
    for (what, envs, args, key) in cases {
        let mut cmd = server(dir.path());
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        let out = cmd.args(&args).arg("check-config").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {err}");
        assert!(err.contains(key), "{what}: {key} not named in: {err}");
    }
    // `serve` refuses the same way, before binding anything.
    let out = server(dir.path())
        .env("ORDERS__SERVER__MAX_MESSAGE_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
}
