//! `ordersctl` as a user runs it: the real binary, configured through its
//! environment variables, against a real TLS server with real tokens.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Longest any one `ordersctl` run (or one awaited line of it) may take.
const LIMIT: Duration = Duration::from_secs(30);

/// How to reach a test server: endpoint, CA file and token, as env vars.
struct Ctl {
    endpoint: String,
    ca: tempfile::NamedTempFile,
    token: Option<String>,
}

impl Ctl {
    fn new(server: &TestServer, token: Option<String>) -> Self {
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        ca.write_all(&server.certs.ca()).unwrap();
        Self {
            endpoint: server.endpoint(),
            ca,
            token,
        }
    }

    fn alice(server: &TestServer) -> Self {
        Self::new(server, Some(server.certs.token("alice", READ_WRITE)))
    }

    fn staff(server: &TestServer) -> Self {
        Self::new(server, Some(server.certs.token("staff-1", STAFF)))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ordersctl"));
        cmd.args(args)
            .env("ORDERS_ENDPOINT", &self.endpoint)
            .env("ORDERS_CA_CERT", self.ca.path())
            .env_remove("ORDERS_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = &self.token {
            cmd.env("ORDERS_TOKEN", token);
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(LIMIT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("ordersctl {args:?} did not finish within {LIMIT:?}"))
            .unwrap();
        Run(output)
    }

    /// Runs and expects exit 0.
    async fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args).await;
        assert_eq!(run.code(), 0, "ordersctl {args:?}: {}", run.stderr());
        run
    }

    /// `register --output json` of APPLE-1:3:250 and MILK:2:99.
    async fn register(&self, extra: &[&str]) -> Value {
        let mut args = vec![
            "--output",
            "json",
            "register",
            "--item",
            "APPLE-1:3:250",
            "--item",
            "MILK:2:99",
            "--street",
            "Main Street",
            "--number",
            "12",
            "--city",
            "Utrecht",
            "--postal-code",
            "3511 AB",
        ];
        args.extend_from_slice(extra);
        self.ok(&args).await.json()
    }

    async fn register_id(&self) -> String {
        self.register(&[]).await["orderId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn spawn(&self, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            // Shown with the test's output if something goes wrong.
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    }
}

struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().expect("exited, not killed")
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", self.stdout()))
    }
    fn json_lines(&self) -> Vec<Value> {
        self.stdout()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The next line a child prints, as JSON.
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("a line within the limit")
        .unwrap()
        .expect("a line, not the end of the output");
    serde_json::from_str(&line).unwrap()
}

/// Waits for a child to end after its output ended; returns its exit code.
async fn exit_code(mut child: Child, lines: &mut Lines<BufReader<ChildStdout>>) -> i32 {
    let rest = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("the output ends within the limit")
        .unwrap();
    assert_eq!(rest, None, "no more output");
    tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("exits within the limit")
        .unwrap()
        .code()
        .unwrap()
}

fn field<'a>(event: &'a Value, path: &[&str]) -> &'a str {
    let mut v = event;
    for key in path {
        v = &v[key];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {event}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_prints_the_response_in_proto3_json() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let response = ctl.register(&[]).await;
    let order = &response["order"];
    assert_eq!(response["orderId"], order["id"]);
    assert_eq!(order["status"], "ORDER_STATUS_PENDING");
    // int64 travels as a JSON string in the proto3 mapping.
    assert_eq!(order["totalCents"], "948");
    assert_eq!(order["version"], "1");
    assert_eq!(order["customerId"], "alice");
    assert_eq!(order["address"]["postalCode"], "3511 AB");
    assert_eq!(order["items"][0]["unitPriceCents"], "250");
    assert!(
        order["createTime"].as_str().unwrap().ends_with('Z'),
        "{order}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_the_same_request_id_twice_gives_the_same_order() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let rid = uuid::Uuid::new_v4().to_string();
    let first = ctl.register(&["--request-id", &rid]).await;
    let again = ctl.register(&["--request-id", &rid]).await;
    assert_eq!(first["orderId"], again["orderId"]);
    let all = ctl.ok(&["--output", "json", "list"]).await.json_lines();
    assert_eq!(all.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_the_order_as_json_and_as_a_table() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let id = ctl.register_id().await;
    let run = ctl.ok(&["--output", "json", "get", &id]).await;
    // Fields in proto order, as grpcurl prints them; one line.
    assert!(run.stdout().starts_with("{\"id\":"), "{}", run.stdout());
    assert_eq!(run.stdout().lines().count(), 1);
    let order = run.json();
    assert_eq!(order["id"], id.as_str());
    assert_eq!(order["status"], "ORDER_STATUS_PENDING");

    // Table is the default output.
    let table = ctl.ok(&["get", &id]).await.stdout();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID"), "{table}");
    for expected in [
        id.as_str(),
        "alice",
        "PENDING",
        "9.48",
        "Main Street 12, Utrecht",
    ] {
        assert!(lines[1].contains(expected), "{expected} in {table}");
    }
    assert!(!table.contains("ORDER_STATUS_"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_follows_every_page() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(ctl.register_id().await);
    }
    let listed = ctl
        .ok(&["--output", "json", "list", "--page-size", "2"])
        .await
        .json_lines();
    let listed: Vec<&str> = listed.iter().map(|o| field(o, &["id"])).collect();
    assert_eq!(listed.len(), 5);
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} listed");
    }
    // The table has a header and a row per order.
    let table = ctl.ok(&["list", "--page-size", "2"]).await.stdout();
    assert_eq!(table.lines().count(), 6, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_status_in_any_spelling() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let kept = ctl.register_id().await;
    let cancelled = ctl.register_id().await;
    ctl.ok(&["cancel", &cancelled]).await;
    for (status, id) in [
        ("cancelled", &cancelled),
        ("CANCELLED", &cancelled),
        ("Pending", &kept),
        ("ORDER_STATUS_PENDING", &kept),
    ] {
        let orders = ctl
            .ok(&["--output", "json", "list", "--status", status])
            .await
            .json_lines();
        assert_eq!(orders.len(), 1, "--status {status}");
        assert_eq!(orders[0]["id"], id.as_str(), "--status {status}");
    }
    let none = ctl
        .ok(&["--output", "json", "list", "--status", "shipped"])
        .await;
    assert_eq!(none.stdout(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_prints_the_cancelled_order_and_a_second_cancel_is_failed_precondition() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let id = ctl.register_id().await;
    let order = ctl.ok(&["--output", "json", "cancel", &id]).await.json();
    assert_eq!(order["status"], "ORDER_STATUS_CANCELLED");
    assert_eq!(order["version"], "2");
    let again = ctl.run(&["cancel", &id]).await;
    assert_eq!(again.code(), 19, "{}", again.stderr());
    assert!(
        again
            .stderr()
            .starts_with("ordersctl: FAILED_PRECONDITION: "),
        "{}",
        again.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advance_by_staff_and_a_stale_expected_version_is_aborted() {
    let server = TestServer::start(Backend::sqlite()).await;
    let id = Ctl::alice(&server).register_id().await;
    let staff = Ctl::staff(&server);
    let order = staff
        .ok(&[
            "--output",
            "json",
            "advance",
            &id,
            "--expected-version",
            "1",
        ])
        .await
        .json();
    assert_eq!(order["status"], "ORDER_STATUS_CONFIRMED");
    assert_eq!(order["version"], "2");

    let stale = staff
        .run(&["advance", &id, "--expected-version", "1"])
        .await;
    assert_eq!(stale.code(), 20, "ABORTED is 10: {}", stale.stderr());
    assert!(stale.stderr().starts_with("ordersctl: ABORTED: "));

    // A customer may not advance: PERMISSION_DENIED (7), naming the scope.
    let denied = Ctl::alice(&server).run(&["advance", &id]).await;
    assert_eq!(denied.code(), 17, "{}", denied.stderr());
    assert!(
        denied.stderr().contains("orders:admin"),
        "{}",
        denied.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_sends_every_address_on_one_stream() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let id = ctl.register_id().await;
    let response = ctl
        .ok(&[
            "--output",
            "json",
            "update",
            &id,
            "--address",
            "Oak Lane|7|Delft|2611 AA",
            "--address",
            "Elm Street | 9 | Leiden | 2311 EZ",
        ])
        .await
        .json();
    assert_eq!(response["updatesApplied"], 2);
    let order = &response["order"];
    assert_eq!(order["version"], "3");
    assert_eq!(order["address"]["street"], "Elm Street");
    assert_eq!(order["address"]["number"], "9");
    assert_eq!(order["address"]["city"], "Leiden");

    let table = ctl
        .ok(&["update", &id, "--address", "Oak Lane|7|Delft|2611 AA"])
        .await
        .stdout();
    assert!(table.contains("Oak Lane 7, Delft"), "{table}");
    assert!(table.contains("updates applied: 1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_every_version_and_exits_when_the_order_is_final() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let id = ctl.register_id().await;
    let (child, mut lines) = ctl.spawn(&["--output", "json", "watch", &id]);
    let first = next_json(&mut lines).await;
    assert_eq!(field(&first, &["order", "id"]), id);
    assert_eq!(field(&first, &["order", "version"]), "1");

    let staff = server.staff().await;
    for (version, status) in [
        ("2", "ORDER_STATUS_CONFIRMED"),
        ("3", "ORDER_STATUS_SHIPPED"),
        ("4", "ORDER_STATUS_DELIVERED"),
    ] {
        staff.advance_order(&id, 0).await.unwrap();
        let event = next_json(&mut lines).await;
        assert_eq!(field(&event, &["order", "version"]), version);
        assert_eq!(field(&event, &["order", "status"]), status);
    }
    assert_eq!(exit_code(child, &mut lines).await, 0);

    // Resuming after version 2 replays 3 and 4, then ends: the order is final.
    let replay = ctl
        .ok(&["--output", "json", "watch", &id, "--after-version", "2"])
        .await
        .json_lines();
    let versions: Vec<&str> = replay
        .iter()
        .map(|e| field(e, &["order", "version"]))
        .collect();
    assert_eq!(versions, ["3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_follows_two_orders_until_both_are_final() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let a = ctl.register_id().await;
    let b = ctl.register_id().await;
    let (child, mut lines) = ctl.spawn(&["--output", "json", "track", &a, &b]);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = next_json(&mut lines).await;
        seen.push((
            field(&e, &["order", "id"]).to_string(),
            field(&e, &["order", "version"]).to_string(),
        ));
    }
    let alice = server.alice().await;
    for id in [&a, &b] {
        alice.cancel_order(id, 0).await.unwrap();
    }
    for _ in 0..2 {
        let e = next_json(&mut lines).await;
        assert_eq!(field(&e, &["order", "status"]), "ORDER_STATUS_CANCELLED");
        seen.push((
            field(&e, &["order", "id"]).to_string(),
            field(&e, &["order", "version"]).to_string(),
        ));
    }
    assert_eq!(exit_code(child, &mut lines).await, 0);
    seen.sort();
    let mut expected = vec![
        (a.clone(), "1".to_string()),
        (a.clone(), "2".to_string()),
        (b.clone(), "1".to_string()),
        (b.clone(), "2".to_string()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_in_table_output_prints_a_row_per_event() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let id = ctl.register_id().await;
    ctl.ok(&["cancel", &id]).await;
    // A final order: its current version, then the stream ends.
    let out = ctl.ok(&["watch", &id]).await.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(
        lines[1].contains(&id) && lines[1].contains("CANCELLED"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_without_a_token() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::new(&server, None);
    assert_eq!(ctl.ok(&["health"]).await.stdout().trim(), "SERVING");
    let json = ctl.ok(&["--output", "json", "health"]).await.json();
    assert_eq!(json, serde_json::json!({ "status": "SERVING" }));
    let named = ctl
        .ok(&["health", "--service", "orders.v1.OrderService"])
        .await;
    assert_eq!(named.stdout().trim(), "SERVING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_is_not_found_exit_15() {
    let server = TestServer::start(Backend::sqlite()).await;
    let run = Ctl::alice(&server)
        .run(&["get", &uuid::Uuid::now_v7().to_string()])
        .await;
    assert_eq!(run.code(), 15, "{}", run.stderr());
    assert!(run.stderr().starts_with("ordersctl: NOT_FOUND: "));
    assert_eq!(run.stdout(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_unauthenticated_exit_26_with_a_hint() {
    let server = TestServer::start(Backend::sqlite()).await;
    let run = Ctl::new(&server, None).run(&["list"]).await;
    assert_eq!(run.code(), 26, "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.starts_with("ordersctl: UNAUTHENTICATED: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("--token") && stderr.contains("ORDERS_TOKEN"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_says_so_and_is_never_printed() {
    let server = TestServer::start(Backend::sqlite()).await;
    let token = server.certs.token_with("alice", READ_WRITE, |c| {
        c.iat -= 7200;
        c.nbf -= 7200;
        c.exp -= 7200;
    });
    let run = Ctl::new(&server, Some(token.clone())).run(&["list"]).await;
    assert_eq!(run.code(), 26, "{}", run.stderr());
    let stderr = run.stderr();
    assert!(stderr.contains("token expired"), "{stderr}");
    assert!(stderr.contains("dev-token"), "{stderr}");
    assert!(!stderr.contains(&token) && !run.stdout().contains(&token));
    // Nor does --help show it, though it comes from ORDERS_TOKEN.
    let help = Ctl::new(&server, Some(token.clone())).ok(&["--help"]).await;
    assert!(!help.stdout().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_item_values_are_invalid_argument_exit_13_with_each_violation() {
    let server = TestServer::start(Backend::sqlite()).await;
    let run = Ctl::alice(&server)
        .run(&[
            "register",
            "--item",
            "APPLE-1:0:100",
            "--street",
            "Main Street",
            "--number",
            "0",
            "--city",
            "Utrecht",
            "--postal-code",
            "3511 AB",
        ])
        .await;
    assert_eq!(run.code(), 13, "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.starts_with("ordersctl: INVALID_ARGUMENT: "),
        "{stderr}"
    );
    assert!(stderr.contains("\n  items[0].quantity: "), "{stderr}");
    assert!(stderr.contains("\n  address.number: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flag_values_are_usage_errors_exit_2() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let address = [
        "--street",
        "S",
        "--number",
        "1",
        "--city",
        "C",
        "--postal-code",
        "1234",
    ];
    let id = uuid::Uuid::now_v7().to_string();
    let cases: Vec<Vec<&str>> = vec![
        [&["register", "--item", "APPLE:x:1"][..], &address].concat(),
        [&["register", "--item", "APPLE:1"][..], &address].concat(),
        // At least one --item.
        [&["register"][..], &address].concat(),
        vec!["update", &id, "--address", "Oak Lane|7|Delft"],
        vec!["update", &id, "--address", "Oak Lane|seven|Delft|2611 AA"],
        vec!["list", "--status", "lost"],
        vec!["list", "--page-size", "-1"],
        vec!["--output", "yaml", "list"],
        vec!["--timeout", "soon", "list"],
        vec!["track"],
        vec!["frobnicate"],
    ];
    for args in cases {
        let run = ctl.run(&args).await;
        assert_eq!(run.code(), 2, "ordersctl {args:?}: {}", run.stderr());
        assert!(!run.stderr().is_empty(), "ordersctl {args:?} says why");
    }
    let run = ctl.run(&["register", "--item", "APPLE:x:1"]).await;
    assert!(run.stderr().contains("APPLE:x:1"), "{}", run.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_unavailable_exit_24_in_one_line() {
    let server = TestServer::start(Backend::sqlite()).await;
    let mut ctl = Ctl::alice(&server);
    ctl.endpoint = "https://127.0.0.1:1".into();
    let run = ctl.run(&["list"]).await;
    assert_eq!(run.code(), 24, "{}", run.stderr());
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ordersctl: UNAVAILABLE: "), "{stderr}");
    assert!(stderr.contains("https://127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("--endpoint"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_suggests_ca_cert() {
    let server = TestServer::start(Backend::sqlite()).await;
    let ctl = Ctl::alice(&server);
    let mut cmd = ctl.command(&["list"]);
    cmd.env_remove("ORDERS_CA_CERT");
    let output = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap()
        .unwrap();
    let run = Run(output);
    assert_eq!(run.code(), 24, "{}", run.stderr());
    let stderr = run.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--ca-cert"), "{stderr}");
}

/// A client CA and a certificate it signed, as PEM files in `dir`.
fn client_pki(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["ordersctl-test".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("client-ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_uses_client_cert_and_client_key() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_pki(dir.path());
    let server =
        TestServer::start_with(std::sync::Arc::new(Certs::new()), Backend::sqlite(), |s| {
            s.tls.client_ca = Some(client_ca)
        })
        .await;
    let ctl = Ctl::alice(&server);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    ctl.ok(&["--client-cert", cert, "--client-key", key, "list"])
        .await;
    let refused = ctl.run(&["list"]).await;
    assert_ne!(refused.code(), 0, "no client certificate, no service");
    assert!(refused.code() > 10, "a gRPC code: {}", refused.stderr());
    assert!(
        refused.stderr().contains("--client-cert"),
        "{}",
        refused.stderr()
    );
    // The certificate without its key is a usage error.
    assert_eq!(ctl.run(&["--client-cert", cert, "list"]).await.code(), 2);
}
