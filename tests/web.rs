//! Browsers and plain HTTP on the gRPC port, against a real TLS server with
//! real tokens:
//! - the Connect protocol from `curl`, JSON as a person or a script writes
//!   it: answers in the proto3 JSON mapping, errors as Connect's JSON with
//!   their `google.rpc` details and the HTTP status Connect gives the code;
//! - CORS: a preflight is answered before any token is asked for, with
//!   `access-control-allow-origin` for an allowed origin only;
//! - the order-tracking page of `web/` in headless Chromium, served from
//!   another origin than the service's: it registers an order, shows the
//!   change staff make at once, and shows refusals readably.
//!
//! Needs `curl` with HTTP/2, Node.js and Debian's `chromium` (`.ci/run`
//! installs it; `CHROMIUM` names another binary); the page is built by
//! `scripts/web-env` (idempotent; `.ci/run` calls it too). These tests fail,
//! never skip, when a tool is missing: browsers and plain HTTP are part of
//! the contract. HTTP/2 throughout: curl is told to use it, and Chromium
//! prefers it by ALPN.

mod common;

use base64::Engine;
use common::*;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

// --- curl ----------------------------------------------------------------------

/// One answer, as curl received it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Names in lower case (HTTP/2 sends them so).
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }
}

/// curl must be there, and speak HTTP/2: the test fails otherwise.
fn require_curl() {
    let version = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("curl does not run ({e}): install it (Debian: apt-get install -y curl)")
        });
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success() && text.contains("HTTP2"),
        "this curl cannot speak HTTP/2, which these tests use:\n{text}"
    );
}

/// Runs curl against the test server, trusting its CA, over HTTP/2.
async fn curl(server: &TestServer, ca: &Path, args: &[&str]) -> Answer {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http2", "--max-time", "20"])
        .arg("--cacert")
        .arg(ca)
        // Headers, then the body, on stdout.
        .arg("--include")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} against {} failed: {}{stdout}",
        server.endpoint(),
        String::from_utf8_lossy(&output.stderr)
    );
    let (head, body) = stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in curl's output: {stdout}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/2 "),
        "not answered over HTTP/2: {status_line}"
    );
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A Connect unary call in JSON: POST to the method's path.
async fn connect_json(
    server: &TestServer,
    ca: &Path,
    method: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let url = format!("{}/orders.v1.OrderService/{method}", server.endpoint());
    let authorization = token.map(|t| format!("authorization: Bearer {t}"));
    let mut args = vec![
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    if let Some(header) = &authorization {
        args.extend(["-H", header.as_str()]);
    }
    args.push(&url);
    curl(server, ca, &args).await
}

fn ca_file(server: &TestServer) -> tempfile::NamedTempFile {
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), server.certs.ca()).unwrap();
    ca
}

/// The details of a Connect error's JSON with this type, each decoded.
fn details<M: Message + Default>(error: &serde_json::Value, type_name: &str) -> Vec<M> {
    error["details"]
        .as_array()
        .unwrap_or_else(|| panic!("the error has no details: {error}"))
        .iter()
        .filter(|d| d["type"] == type_name)
        .map(|d| {
            let value = d["value"].as_str().expect("a detail's value is a string");
            // Connect writes base64 without padding; accept either.
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(value.trim_end_matches('='))
                .unwrap_or_else(|e| panic!("{type_name} value is not base64 ({e}): {value}"));
            M::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{type_name} decodes: {e}"))
        })
        .collect()
}

/// The one `google.rpc.ErrorInfo` of a Connect error's JSON.
fn error_info(error: &serde_json::Value) -> tonic_types::pb::ErrorInfo {
    let mut infos = details::<tonic_types::pb::ErrorInfo>(error, "google.rpc.ErrorInfo");
    assert_eq!(infos.len(), 1, "one ErrorInfo: {error}");
    infos.remove(0)
}

/// The Connect error an answer carries: its JSON, after checking the HTTP
/// status, the content type and the code.
fn connect_error(answer: &Answer, http_status: u16, code: &str) -> serde_json::Value {
    assert_eq!(answer.status, http_status, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{answer:?}"
    );
    let error = answer.json();
    assert_eq!(error["code"], code, "{error}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "the error has a message: {error}"
    );
    error
}

#[tokio::test]
async fn connect_json_from_curl_is_answered_in_the_proto3_json_mapping() {
    require_curl();
    let server = TestServer::start(Backend::sqlite()).await;
    let ca = ca_file(&server);
    let token = server.certs.token("alice", READ_WRITE);

    // Field names in lowerCamelCase, int64 either as a string or a number.
    let request = r#"{
        "items": [
            {"sku": "CURL-1", "quantity": 3, "unitPriceCents": "250"},
            {"sku": "CURL-2", "quantity": 2, "unitPriceCents": 99}
        ],
        "address": {"street": "Main Street", "number": 12, "city": "Utrecht", "postalCode": "3511 AB"}
    }"#;
    let answer = connect_json(&server, ca.path(), "RegisterOrder", Some(&token), request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(answer.header("x-request-id").is_some(), "{answer:?}");
    let registered = answer.json();
    let order = &registered["order"];
    let id = registered["orderId"].as_str().expect("orderId, camelCase");
    assert_eq!(order["id"], id);
    assert_eq!(order["customerId"], "alice");
    assert_eq!(order["status"], "ORDER_STATUS_PENDING", "enums by name");
    // int64 as strings; int32 as numbers.
    assert_eq!(order["version"], "1");
    assert_eq!(order["totalCents"], "948");
    assert_eq!(order["items"][0]["unitPriceCents"], "250");
    assert_eq!(order["items"][0]["quantity"], 3);
    assert_eq!(order["address"]["postalCode"], "3511 AB");
    assert_eq!(order["address"]["number"], "12");
    // Timestamps in RFC 3339, UTC.
    let created = order["createTime"].as_str().expect("createTime");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok() && created.ends_with('Z'),
        "{created}"
    );
    assert!(order.get("order_id").is_none() && order.get("customer_id").is_none());

    // The proto's own field names are accepted too; the answer is the same
    // order, as the SDK reads it over gRPC.
    let request = format!(r#"{{"order_id": "{id}"}}"#);
    let answer = connect_json(&server, ca.path(), "GetOrder", Some(&token), &request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), *order);
    let over_grpc = server.alice().await.get_order(id).await.unwrap();
    assert_eq!(over_grpc.total_cents, 948);
    assert_eq!(over_grpc.version, 1);
    server.stop().await;
}

#[tokio::test]
async fn with_web_protocols_off_only_grpc_over_http2_is_served() {
    require_curl();
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.web_protocols = false;
        // Even an allowed origin gets no grant: CORS is for the protocols
        // that are off.
        s.cors.allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    let ca = ca_file(&server);
    let token = server.certs.token("alice", READ_WRITE);

    // gRPC is served as ever.
    let id = server
        .alice()
        .await
        .register_order(vec![item("WEB-OFF", 1, 100)], address("Main Street"))
        .await
        .unwrap()
        .id;

    // What is not gRPC is 415, on the headers alone, before any token
    // is looked at. (Sent without a body: the answer comes before the body
    // would be read, and HTTP/2 then resets the rest of the upload, which
    // curl reports as an error of its own when the reset overtakes it.)
    let url = format!("{}/orders.v1.OrderService/GetOrder", server.endpoint());
    let authorization = format!("authorization: Bearer {token}");
    // Connect JSON, and gRPC-Web neither.
    for content_type in ["application/json", "application/grpc-web+proto"] {
        let content_type = format!("content-type: {content_type}");
        let answer = curl(
            &server,
            ca.path(),
            &[
                "-H",
                &content_type,
                "-H",
                &authorization,
                "--data-binary",
                "",
                &url,
            ],
        )
        .await;
        assert_eq!(answer.status, 415, "{answer:?}");
    }
    // A preflight gets no permission.
    let answer = curl(
        &server,
        ca.path(),
        &preflight("origin: https://shop.example", &url),
    )
    .await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{answer:?}"
    );

    // A connection that negotiates HTTP/1.1 is closed without an answer.
    let request = format!(r#"{{"orderId": "{id}"}}"#);
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--http1.1", "--max-time", "20"])
        .arg("--cacert")
        .arg(ca.path())
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &request,
        ])
        .args(["-H", &authorization, &url])
        .output()
        .await
        .expect("curl runs");
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "HTTP/1.1 was answered: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

#[tokio::test]
async fn connect_errors_from_curl_carry_code_message_details_and_http_status() {
    require_curl();
    let server = TestServer::start(Backend::sqlite()).await;
    let ca = ca_file(&server);
    let token = server.certs.token("alice", READ_WRITE);
    let unknown = r#"{"orderId": "0190a6b4-0000-7000-8000-000000000000"}"#;

    // NOT_FOUND: 404, with ErrorInfo and the rest of the details.
    let answer = connect_json(&server, ca.path(), "GetOrder", Some(&token), unknown).await;
    let error = connect_error(&answer, 404, "not_found");
    let info = error_info(&error);
    assert_eq!(info.reason, "ORDER_NOT_FOUND");
    assert_eq!(info.domain, "orders.v1.OrderService");
    let resource = details::<tonic_types::pb::ResourceInfo>(&error, "google.rpc.ResourceInfo");
    assert_eq!(resource.len(), 1, "{error}");
    assert_eq!(
        resource[0].resource_name,
        "0190a6b4-0000-7000-8000-000000000000"
    );
    let request_info = details::<tonic_types::pb::RequestInfo>(&error, "google.rpc.RequestInfo");
    assert_eq!(
        Some(request_info[0].request_id.as_str()),
        answer.header("x-request-id"),
        "the request id in the details is the one in the header"
    );

    // No token: 401, before anything else.
    let answer = connect_json(&server, ca.path(), "GetOrder", None, unknown).await;
    let error = connect_error(&answer, 401, "unauthenticated");
    assert_eq!(error_info(&error).reason, "MISSING_TOKEN");

    // A body that is not JSON: 400.
    let answer = connect_json(
        &server,
        ca.path(),
        "GetOrder",
        Some(&token),
        "order 1, please",
    )
    .await;
    let error = connect_error(&answer, 400, "invalid_argument");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("orders.v1.GetOrderRequest"),
        "the message names what the body should be: {error}"
    );

    // A field out of its limits: 400 with a BadRequest naming it.
    let request = r#"{"items": [{"sku": "CURL-1", "quantity": 1}],
        "address": {"street": "Main Street", "number": 1, "city": " ", "postalCode": "1"}}"#;
    let answer = connect_json(&server, ca.path(), "RegisterOrder", Some(&token), request).await;
    let error = connect_error(&answer, 400, "invalid_argument");
    assert_eq!(error_info(&error).reason, "INVALID_REQUEST");
    let bad = details::<tonic_types::pb::BadRequest>(&error, "google.rpc.BadRequest");
    let fields: Vec<&str> = bad[0]
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["address.city"], "{error}");

    // A missing scope: 403, naming it.
    let readonly = server.certs.token("alice", "orders:read");
    let answer = connect_json(
        &server,
        ca.path(),
        "RegisterOrder",
        Some(&readonly),
        request,
    )
    .await;
    let error = connect_error(&answer, 403, "permission_denied");
    let info = error_info(&error);
    assert_eq!(info.reason, "MISSING_SCOPE");
    assert_eq!(info.metadata["required_scope"], "orders:write");
    server.stop().await;
}

/// A preflight's request headers, as a browser sends them before a Connect
/// call with a token.
fn preflight<'a>(origin: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "-X",
        "OPTIONS",
        "-H",
        origin,
        "-H",
        "access-control-request-method: POST",
        "-H",
        "access-control-request-headers: authorization,content-type",
        url,
    ]
}

#[tokio::test]
async fn cors_preflights_are_answered_before_any_token_for_allowed_origins_only() {
    require_curl();
    const ALLOWED: &str = "https://shop.example";
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.cors.allowed_origins = vec![ALLOWED.into()];
    })
    .await;
    let ca = ca_file(&server);
    let url = format!("{}/orders.v1.OrderService/GetOrder", server.endpoint());

    // The allowed origin: permission, the method, the headers, how long to
    // keep it; no token asked for.
    let answer = curl(
        &server,
        ca.path(),
        &preflight(&format!("origin: {ALLOWED}"), &url),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(ALLOWED),
        "{answer:?}"
    );
    let allowed_headers = answer
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "connect-protocol-version"] {
        assert!(
            allowed_headers.split(',').any(|h| h.trim() == header),
            "{header} not allowed: {answer:?}"
        );
    }
    assert!(
        answer
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{answer:?}"
    );
    assert_eq!(answer.header("access-control-max-age"), Some("600"));
    assert!(answer.header("grpc-status").is_none(), "{answer:?}");

    // Another origin: answered, without permission.
    let answer = curl(
        &server,
        ca.path(),
        &preflight("origin: https://elsewhere.example", &url),
    )
    .await;
    assert!(answer.status < 400, "{answer:?}");
    assert_eq!(
        answer.header("access-control-allow-origin"),
        None,
        "{answer:?}"
    );

    // The call itself from the allowed origin: permission to read the
    // answer, and the headers the page's script may see.
    let token = server.certs.token("alice", READ_WRITE);
    let call_from = |origin: &str| {
        let origin = format!("origin: {origin}");
        let authorization = format!("authorization: Bearer {token}");
        let url = url.clone();
        let ca = ca.path().to_owned();
        let server = &server;
        async move {
            let body = r#"{"orderId": "0190a6b4-0000-7000-8000-000000000000"}"#;
            let args = [
                "-H",
                &origin,
                "-H",
                "content-type: application/json",
                "-H",
                &authorization,
                "--data-binary",
                body,
                &url,
            ];
            curl(server, &ca, &args).await
        }
    };
    let answer = call_from(ALLOWED).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    let exposed = answer
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(exposed.contains("x-request-id"), "{answer:?}");
    // From another origin the server answers too (CORS is the browser's to
    // enforce), without the permission a browser needs to show it.
    let answer = call_from("https://elsewhere.example").await;
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), None);
    server.stop().await;
}

// --- the page in Chromium -------------------------------------------------------

/// Serves the files of `root` (no folders) over plain HTTP/1.1: the page's
/// own origin, another than the service's.
async fn serve_files(listener: tokio::net::TcpListener, root: PathBuf) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let root = root.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                match conn.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split(' ').nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or("/");
            let name = match path.trim_start_matches('/') {
                "" => "index.html",
                name => name,
            };
            let content_type = match name.rsplit('.').next() {
                Some("html") => Some("text/html; charset=utf-8"),
                Some("js") => Some("text/javascript; charset=utf-8"),
                Some("map") => Some("application/json"),
                _ => None,
            };
            let safe = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && !name.starts_with('.');
            let file = match content_type {
                Some(content_type) if safe => tokio::fs::read(root.join(name))
                    .await
                    .ok()
                    .map(|body| (content_type, body)),
                _ => None,
            };
            let (status, content_type, body) = match file {
                Some((content_type, body)) => ("200 OK", content_type, body),
                None => ("404 Not Found", "text/plain", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&body).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Debian's chromium, or the binary `CHROMIUM` names: the test fails
/// without it.
fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    assert!(
        path.is_file(),
        "no Chromium at {}: install Debian's (apt-get install -y chromium; .ci/run does) or set CHROMIUM",
        path.display()
    );
    path
}

/// Where the test leaves its screenshots: `target/web-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("web-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_order_tracking_page_tracks_an_order_live_in_chromium() {
    let chromium = chromium();
    let repo = repo();
    let setup = std::process::Command::new(repo.join("scripts/web-env"))
        .status()
        .expect("scripts/web-env runs");
    assert!(
        setup.success(),
        "scripts/web-env failed: cannot build the page"
    );
    let artifacts = artifacts_dir();

    // The page's origin first, so the service can be told to allow it.
    let files = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://127.0.0.1:{}", files.local_addr().unwrap().port());
    let serving = tokio::spawn(serve_files(files, repo.join("web/dist")));
    // The same page from an origin the service is not told to allow.
    let foreign_files = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign_origin = format!(
        "http://127.0.0.1:{}",
        foreign_files.local_addr().unwrap().port()
    );
    let foreign_serving = tokio::spawn(serve_files(foreign_files, repo.join("web/dist")));
    let origin = page_origin.clone();
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), move |s| {
        s.cors.allowed_origins = vec![origin];
    })
    .await;
    let certs = server.certs.clone();

    let mut node = tokio::process::Command::new("node");
    node.current_dir(repo.join("web"))
        .arg("e2e.mjs")
        .env("PAGE_URL", format!("{page_origin}/"))
        .env("FOREIGN_PAGE_URL", format!("{foreign_origin}/"))
        .env("ORDERS_API", server.endpoint())
        .env(
            "ORDERS_SERVER_CERT",
            certs.dev.path(grpc_platform::dev::SERVER_CERT),
        )
        .env("ORDERS_TOKEN", certs.token("alice", READ_WRITE))
        .env("ORDERS_TOKEN_READONLY", certs.token("alice", "orders:read"))
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS_DIR", &artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = node.spawn().expect("node runs");
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let staff = server.staff().await;
    let mut output = Vec::new();
    let mut advanced = Vec::new();
    let reading = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("e2e: {line}");
            // The page shows the order PENDING and follows it: staff move it
            // on, and the page must show that without being asked.
            if let Some(rest) = line.strip_prefix("REGISTERED ") {
                let (protocol, id) = rest.split_once(' ').expect("REGISTERED protocol id");
                let order = staff.advance_order(id, 1).await.unwrap();
                assert_eq!(order.status(), orders::sdk::pb::OrderStatus::Confirmed);
                advanced.push(protocol.to_owned());
            }
            output.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(240), reading)
        .await
        .expect("the page test ends within 240 s");
    let status = child.wait().await.unwrap();
    let errors = errors.await.unwrap();
    eprintln!("{errors}");
    assert!(
        status.success(),
        "the page test failed (screenshots in {}):\n{}\n{errors}",
        artifacts.display(),
        output.join("\n")
    );
    assert_eq!(output.last().map(String::as_str), Some("DONE"));
    assert_eq!(advanced, ["connect", "grpc-web"]);
    for protocol in ["connect", "grpc-web"] {
        let shot = artifacts.join(format!("order-tracking-{protocol}.png"));
        let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());
    }
    let shot = artifacts.join("order-tracking-origin-not-allowed.png");
    assert!(shot.exists(), "{} is missing", shot.display());
    serving.abort();
    foreign_serving.abort();
    server.stop().await;
}
