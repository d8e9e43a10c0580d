//! Abuse limits: a client that misbehaves at the transport level
//! gets a closed connection or an error code, and everyone else is served.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// Reads until the server closes the connection; how long that took.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server kept the connection open for {within:?}"));
    start.elapsed()
}

/// A valid call still works.
async fn still_serving(server: &TestServer) {
    let alice = tokio::time::timeout(Duration::from_secs(5), server.alice())
        .await
        .expect("a normal client connects promptly");
    tokio::time::timeout(Duration::from_secs(5), alice.register(register_request("")))
        .await
        .expect("a normal call is answered promptly")
        .expect("and succeeds");
}

/// A TLS connection to the server speaking HTTP/2 (ALPN h2), trusting the dev CA.
async fn tls_to(server: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&server.certs.ca()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

fn grpc_request(server: &TestServer, token: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{}/orders.v1.OrderService/GetOrder",
            server.addr.port()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn plaintext_http2_to_the_tls_port_is_closed_and_the_server_keeps_serving() {
    let server = TestServer::start(Backend::sqlite()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The HTTP/2 connection preface and an empty SETTINGS frame, in the clear.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    until_closed(&mut tcp, Duration::from_secs(5)).await;
    // And through a real HTTP/2 client: no call gets through.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let refused = async {
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        let mut send = send.ready().await?;
        let (response, _) = send.send_request(grpc_request(&server, "x"), true)?;
        response.await
    };
    let result = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("refused promptly");
    assert!(
        result.is_err(),
        "plaintext HTTP/2 got a response: {result:?}"
    );
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped_after_the_handshake_timeout() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let start = Instant::now();
    // Silent after connecting.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Half a TLS record header, then nothing (slowloris on the handshake).
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
    for (what, tcp) in [("silent", &mut silent), ("partial", &mut partial)] {
        until_closed(tcp, Duration::from_secs(5)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(500),
            "{what}: closed too early ({took:?}): the timeout is not what closed it"
        );
    }
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn many_idle_tcp_connections_do_not_block_a_normal_client() {
    let server = TestServer::start(Backend::sqlite()).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    still_serving(&server).await;
    drop(idle);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_on_which_nothing_moves_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.idle_timeout = Some(Duration::from_secs(1));
        // Keepalive PINGs count as traffic; without them the connection is idle.
        s.server.keepalive_interval = None;
    })
    .await;
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle connection was closed");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed after {took:?}, before the idle timeout ({ended:?})"
    );
    drop(send);
    still_serving(&server).await;
    server.stop().await;
}

/// Opens and at once resets up to 2,000 streams; `Some(error)` when the
/// server closed the connection before the flood was over, `None` when the
/// connection still serves a normal request afterwards.
async fn rapid_reset_flood(server: &TestServer) -> (usize, Option<h2::Error>) {
    let token = server.certs.token("alice", READ_WRITE);
    let tls = tls_to(server).await;
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    let mut conn = tokio::spawn(conn);
    let mut sent = 0;
    for i in 0..2_000 {
        if i % 100 == 99 {
            // Let the connection task read what the server sent (a GOAWAY).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let step = async {
            let mut ready = send.clone().ready().await?;
            let (response, mut stream) = ready.send_request(grpc_request(server, &token), false)?;
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
            Ok::<_, h2::Error>(ready)
        };
        match step.await {
            Ok(ready) => {
                send = ready;
                sent += 1;
            }
            Err(e) => {
                // The connection's own error says more (GOAWAY or reset).
                let ended = tokio::time::timeout(Duration::from_secs(10), &mut conn)
                    .await
                    .expect("the connection ends")
                    .unwrap();
                return (sent, Some(ended.err().unwrap_or(e)));
            }
        }
    }
    // Not closed by now? Give the server a moment, then try a real request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if conn.is_finished() {
        let ended = conn.await.unwrap();
        return (sent, ended.err());
    }
    let normal = async {
        let mut ready = send.ready().await?;
        let (response, _) = ready.send_request(grpc_request(server, &token), true)?;
        response.await
    };
    match tokio::time::timeout(Duration::from_secs(5), normal).await {
        Ok(Ok(_)) => (sent, None),
        Ok(Err(e)) => (sent, Some(e)),
        Err(_) => panic!("the connection hangs after the flood"),
    }
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_gets_the_connection_closed_and_other_clients_are_unaffected() {
    let server = TestServer::start(Backend::sqlite()).await;
    let bystander = server.alice().await;
    let (sent, error) = rapid_reset_flood(&server).await;
    let error =
        error.unwrap_or_else(|| panic!("{sent} rapid resets and the connection still serves"));
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes; the client may
    // see the close (a reset socket) before it reads the GOAWAY.
    if error.is_go_away() {
        assert_eq!(
            error.reason(),
            Some(h2::Reason::ENHANCE_YOUR_CALM),
            "{error:?}"
        );
    } else {
        assert!(error.is_io(), "unexpected end: {error:?}");
    }
    assert!(sent < 2_000, "{error:?} only after {sent} resets");
    // The connection that existed all along, and a new one, are served.
    bystander.register(register_request("")).await.unwrap();
    still_serving(&server).await;
    server.stop().await;

    // Control: with the limit raised, the same flood is tolerated, so it is
    // `server.http2_max_pending_accept_reset_streams` that closed it above.
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.http2_max_pending_accept_reset_streams = 1_000_000;
    })
    .await;
    let (sent, error) = rapid_reset_flood(&server).await;
    assert!(
        error.is_none(),
        "closed after {sent} resets even with the limit raised: {error:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_still_answers() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.max_message_bytes = 64 * 1024;
    })
    .await;
    let alice = server.alice().await;
    let mut big = register_request("");
    big.address.as_mut().unwrap().street = "x".repeat(100 * 1024);
    let err = alice.register(big).await.unwrap_err();
    // docs/reference.md "Errors": RESOURCE_EXHAUSTED (tonic's OUT_OF_RANGE, translated).
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    alice.register(register_request("")).await.unwrap();
    still_serving(&server).await;
    server.stop().await;
}

/// Metadata over `server.max_header_list_bytes` gets a gRPC answer that
/// says what happened (RESOURCE_EXHAUSTED, naming the limit), not HTTP 431,
/// which gRPC clients report as UNKNOWN; far past it HTTP/2 itself refuses
/// the stream. Either way the handler never runs and others are served.
#[tokio::test]
async fn metadata_over_the_limit_is_resource_exhausted_and_far_over_it_refused_by_http2() {
    let server = TestServer::start(Backend::sqlite()).await;
    let token = server.certs.token("alice", READ_WRITE);
    // Through the raw HTTP/2 client, so it is the server that refuses, not
    // a client-side check.
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let padded = |bytes: usize| {
        let mut request = grpc_request(&server, &token);
        request.headers_mut().insert(
            "x-padding",
            http::HeaderValue::from_str(&"a".repeat(bytes)).unwrap(),
        );
        request
    };
    let send_one = |request| {
        let send = send.clone();
        async move {
            let mut send = send.ready().await?;
            let (response, _) = send.send_request(request, true)?;
            response.await
        }
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), send_one(padded(20 * 1024)))
        .await
        .expect("answered promptly")
        .expect("answered, not reset");
    assert_eq!(answered.status(), http::StatusCode::OK);
    let status = tonic::Status::from_header_map(answered.headers()).expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("over the limit of 16384 bytes"),
        "{status:?}"
    );

    let refused = tokio::time::timeout(Duration::from_secs(5), send_one(padded(80 * 1024)))
        .await
        .expect("answered promptly");
    match refused {
        Err(e) => eprintln!("refused by HTTP/2: {e}"),
        Ok(response) => assert_eq!(
            response.status(),
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "a header block far over the limit was accepted"
        ),
    }

    // Through the SDK: the same answer, and normal calls go on.
    let alice = server.alice().await;
    let mut raw = orders::sdk::pb::order_service_client::OrderServiceClient::new(alice.channel());
    let mut request = tonic::Request::new(orders::sdk::pb::GetOrderRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-padding", "a".repeat(20 * 1024).parse().unwrap());
    let err = raw.get_order(request).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    still_serving(&server).await;
    server.stop().await;
}

/// Only gRPC (and gRPC-Web and Connect, which become gRPC) is served:
/// another method is HTTP 405, another content type HTTP 415, before
/// authentication or any handler, and neither is counted as a call.
#[tokio::test]
async fn what_is_not_a_grpc_request_is_refused_with_405_or_415() {
    let server = TestServer::start(Backend::sqlite()).await;
    let token = server.certs.token("alice", READ_WRITE);
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let cases = [
        ("GET", "application/grpc", 405),
        ("GET", "application/json", 405),
        ("POST", "application/xml", 415),
        ("POST", "text/plain", 415),
    ];
    for (method, content_type, status) in cases {
        let mut request = grpc_request(&server, &token);
        *request.method_mut() = method.parse().unwrap();
        request
            .headers_mut()
            .insert("content-type", content_type.parse().unwrap());
        let mut send = send.clone().ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = response.await.expect("an answer");
        assert_eq!(
            response.status().as_u16(),
            status,
            "{method} {content_type}"
        );
        assert!(
            response.headers().get("grpc-status").is_none(),
            "not a gRPC answer"
        );
    }
    let (_, metrics) = server.admin_get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "grpc_server_started_total",
            &[("grpc_method", "GetOrder")]
        )
        .is_none(),
        "counted as calls:\n{metrics}"
    );
    still_serving(&server).await;
    server.stop().await;
}

/// One caller holding calls open (unary calls whose body never arrives)
/// gets its quota of them and no more, answered RESOURCE_EXHAUSTED with a
/// QuotaFailure naming it; another caller's calls all succeed meanwhile.
#[tokio::test]
async fn one_caller_at_its_quota_cannot_lock_out_another() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.concurrency_limit = 20;
        s.server.max_calls_per_caller = 5;
    })
    .await;
    let mallory = server.certs.token("mallory", READ_WRITE);
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    // Eight calls whose request body never comes: the first five are
    // admitted and wait for it; the other three are refused at once.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..8 {
        let mut send = send.clone().ready().await.unwrap();
        let (response, body) = send
            .send_request(grpc_request(&server, &mallory), false)
            .unwrap();
        held.push(body);
        let answered = tokio::time::timeout(Duration::from_millis(500), response).await;
        if let Ok(response) = answered {
            refused.push(response.expect("a response"));
        }
    }
    assert_eq!(refused.len(), 3, "all but the quota's five are refused");
    for response in &refused {
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let failure = details.quota_failure().expect("QuotaFailure");
        assert_eq!(failure.violations[0].subject, "caller:mallory");
        assert!(details.retry_info().is_some(), "{status:?}");
    }
    // Another caller is served in full meanwhile, as many calls at once as
    // her own quota allows, round after round.
    let alice = server.alice().await;
    for _ in 0..3 {
        let calls = (0..5).map(|_| alice.register(register_request("")));
        for result in futures::future::join_all(calls).await {
            result.expect("alice's calls succeed while mallory is at her quota");
        }
    }
    // The replica stays in rotation: it still serves every caller but the
    // one at its quota, so readiness must stay SERVING. Were it to turn
    // NOT_SERVING, one caller holding its calls open would take the replica
    // away from everyone, the lockout the quota exists to prevent.
    assert_eq!(readiness(&server).await, SERVING);
    // Mallory's held calls end (the client gives up): her quota comes back.
    drop(held);
    drop(send);
    let mallory_client = server.client_with_token(&mallory).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match mallory_client.register(register_request("")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("mallory's quota did not come back: {e:?}"),
        }
    }
    server.stop().await;
}

/// The readiness the admin port reports (`readiness`, what Kubernetes'
/// readiness probe asks).
async fn readiness(server: &TestServer) -> i32 {
    let request = tonic_health::pb::HealthCheckRequest {
        service: "readiness".into(),
    };
    server
        .admin_health()
        .await
        .check(request)
        .await
        .expect("the admin port answers")
        .into_inner()
        .status
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// The `google.rpc.QuotaFailure` subject and `RetryInfo` delay of a
/// RESOURCE_EXHAUSTED answer, whose `ErrorInfo.reason` is `reason`.
fn quota_refusal(status: &tonic::Status, reason: &str) -> (String, Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(status);
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some(reason),
        "{status:?}"
    );
    let failure = details.quota_failure().expect("QuotaFailure");
    assert!(!failure.violations[0].description.is_empty(), "{status:?}");
    let delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    (failure.violations[0].subject.clone(), delay)
}

/// One caller calling faster than its rate gets RESOURCE_EXHAUSTED with a
/// QuotaFailure naming it and, as RetryInfo, the wait until its next call
/// is due (and that call is served); another caller is served in full
/// meanwhile, and the replica stays ready.
#[tokio::test]
async fn one_caller_over_its_rate_is_refused_with_the_wait_while_another_is_served() {
    // Five calls a second with bursts of five: a call every 200 ms once the
    // burst is spent.
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.max_call_rate_per_caller = 5;
        s.server.call_burst_per_caller = 5;
    })
    .await;
    let mallory = server.client("mallory", READ_WRITE).await;
    let alice = server.alice().await;
    let missing = uuid::Uuid::now_v7().to_string();
    let start = Instant::now();
    let mut admitted = 0;
    let mut refusals = Vec::new();
    for _ in 0..20 {
        match mallory.get_order(&missing).await {
            Err(e) if e.code() == Code::ResourceExhausted => {
                refusals.push(e.status().expect("a gRPC status").clone())
            }
            // Admitted: the order does not exist.
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                admitted += 1;
            }
            Ok(order) => panic!("no such order, yet {order:?}"),
        }
    }
    // Her burst, and what her rate refilled while the calls ran.
    let allowed = 5 + (start.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=allowed).contains(&admitted),
        "{admitted} of 20 admitted, at most {allowed} allowed"
    );
    assert_eq!(admitted + refusals.len(), 20);
    for status in &refusals {
        let (subject, wait) = quota_refusal(status, "CALLER_RATE_EXCEEDED");
        assert_eq!(subject, "caller:mallory");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "the next call is due within one interval: {wait:?}"
        );
    }
    // Alice has a rate of her own: a burst of calls at once, all served.
    let calls = (0..5).map(|_| alice.register(register_request("")));
    for result in futures::future::join_all(calls).await {
        result.expect("alice's calls succeed while mallory is over her rate");
    }
    assert_eq!(readiness(&server).await, SERVING);
    // Waiting what the last RetryInfo said is enough for mallory's next
    // call (the time since it was sent counts too).
    let last = refusals.last().expect("mallory was refused");
    let (_, wait) = quota_refusal(last, "CALLER_RATE_EXCEEDED");
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let err = mallory.get_order(&missing).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "admitted after the wait: {err:?}"
    );
    server.stop().await;
}

/// A gRPC request to `path` on the raw HTTP/2 client, with a bearer token
/// or none.
fn request_to(server: &TestServer, path: &str, token: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{}{path}", server.addr.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(()).unwrap()
}

/// One gRPC message, length-prefixed, uncompressed.
fn grpc_message(message: &impl prost::Message) -> bytes::Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    framed.into()
}

/// A call on `send`'s connection: the request to `path`, its one message,
/// and the response's headers, or `None` when none came within a second.
async fn open(
    send: &h2::client::SendRequest<bytes::Bytes>,
    request: http::Request<()>,
    message: bytes::Bytes,
) -> (
    h2::SendStream<bytes::Bytes>,
    Option<http::Response<h2::RecvStream>>,
) {
    let mut send = send.clone().ready().await.unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    body.send_data(message, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(1), response)
        .await
        .ok()
        .map(|r| r.expect("a response, not a reset"));
    (body, response)
}

/// Calls without a token (health watches held open) are bounded per
/// connection: past the bound, RESOURCE_EXHAUSTED with a QuotaFailure on
/// `connection`, while an authenticated call on the same connection,
/// another connection's health check and another caller are all served;
/// a watch that ends gives its place back.
#[tokio::test]
async fn calls_without_a_token_are_bounded_per_connection_and_others_are_served() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.max_anonymous_calls_per_connection = 4;
    })
    .await;
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let watch = || request_to(&server, "/grpc.health.v1.Health/Watch", None);
    let everything = grpc_message(&tonic_health::pb::HealthCheckRequest::default());
    // Ten watches on one connection: four are admitted and stay open (their
    // headers carry no status), the other six are refused at once.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..10 {
        let (body, response) = open(&send, watch(), everything.clone()).await;
        let response = response.expect("the server answers the watch's headers at once");
        match tonic::Status::from_header_map(response.headers()) {
            Some(status) => refused.push(status),
            None => held.push((body, response)),
        }
    }
    assert_eq!(held.len(), 4, "the connection's quota of watches is open");
    assert_eq!(refused.len(), 6);
    for status in &refused {
        let (subject, wait) = quota_refusal(status, "CONNECTION_QUOTA_EXCEEDED");
        assert_eq!(subject, "connection");
        assert!(wait > Duration::ZERO, "{wait:?}");
    }

    // An authenticated call on the same connection counts against its
    // caller, not the connection: it reaches the handler (no such order).
    let token = server.certs.token("alice", READ_WRITE);
    let get = orders::sdk::pb::GetOrderRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
    };
    let path = "/orders.v1.OrderService/GetOrder";
    let (_body, response) = open(
        &send,
        request_to(&server, path, Some(&token)),
        grpc_message(&get),
    )
    .await;
    let mut response = response.expect("answered promptly");
    let status = match tonic::Status::from_header_map(response.headers()) {
        Some(status) => status,
        None => {
            let trailers = response
                .body_mut()
                .trailers()
                .await
                .unwrap()
                .expect("trailers");
            tonic::Status::from_header_map(&trailers).expect("a gRPC status")
        }
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Another connection's health check, and another caller, are served.
    let anonymous = server.anonymous().await;
    let serving = anonymous
        .health("")
        .await
        .expect("another connection's health check");
    assert_eq!(serving as i32, SERVING);
    server
        .bob()
        .await
        .register(register_request(""))
        .await
        .expect("another caller is served");
    assert_eq!(readiness(&server).await, SERVING);

    // The watches end (the client resets them): their places come back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_body, response) = open(&send, watch(), everything.clone()).await;
        let response = response.expect("answered promptly");
        match tonic::Status::from_header_map(response.headers()) {
            None => break,
            Some(status) if Instant::now() < deadline => {
                quota_refusal(&status, "CONNECTION_QUOTA_EXCEEDED");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(status) => panic!("the connection's places did not come back: {status:?}"),
        }
    }
    server.stop().await;
}

/// Paths any client can send, without a token, that would break the
/// Prometheus exposition if written into a label: quotes, braces and
/// backslashes, and as many different ones as it likes.
#[tokio::test]
async fn made_up_paths_cannot_break_or_grow_the_metrics() {
    let server = TestServer::start(Backend::sqlite()).await;
    let python = grpc_platform::test_support::Python::new(&repo());
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let hostile = [
        r#"/x.Y/M""#,
        r#"/a{b="c"}/d"#,
        r"/x\y/z\",
        r#"/orders.v1.OrderService/GetOrder"}"#,
    ];
    let made_up = (0..100).map(|i| format!("/x.Y/Method{i}"));
    let paths: Vec<String> = hostile
        .iter()
        .map(|p| p.to_string())
        .chain(made_up)
        .collect();
    for path in &paths {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost:{}{path}", server.addr.port()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = response.await.expect("an answer");
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            status.as_deref(),
            Some("16"),
            "{path}: UNAUTHENTICATED without a token"
        );
    }

    let (status, text) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    // Parsed as Prometheus parses it: the Python client library's parsers
    // for the OpenMetrics text the server serves, and for the classic text.
    let exposition = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(exposition.path(), &text).unwrap();
    let parse = r##"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = open(sys.argv[1]).read()
unknown = 0
for family in openmetrics(text):
    for sample in family.samples:
        if sample.name == "grpc_server_started_total" and sample.labels.get("grpc_service") == "unknown":
            unknown += sample.value
classic_text = "\n".join(l for l in text.splitlines() if l != "# EOF") + "\n"
sum(1 for _ in classic(classic_text))
print(int(unknown))
"##;
    let mut command = python.python();
    command.arg("-c").arg(parse).arg(exposition.path());
    let (out, _) = grpc_platform::test_support::run(&mut command, true);
    assert_eq!(
        out.trim(),
        paths.len().to_string(),
        "every made-up path counted as unknown"
    );
    for planted in [r#"M""#, "a{b", r"x\\y", r#"GetOrder"}"#, "x.Y"] {
        assert!(
            !text.contains(planted),
            "{planted:?} reached the exposition:\n{text}"
        );
    }
    still_serving(&server).await;
    server.stop().await;
}

/// Raw HTTP/2 for the GOAWAY test: frames written and read by hand, so the
/// client can do what gRPC's C core does (h2's own client cannot).
mod raw_h2 {
    use tokio::io::{AsyncRead, AsyncReadExt};

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A header block of literal fields without indexing (RFC 7541 §6.2.2),
    /// names and values shorter than 127 bytes, no Huffman coding.
    pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        block
    }

    /// A gRPC health Watch of the whole server: an empty request, a stream
    /// that stays open.
    pub fn health_watch(stream: u32) -> Vec<u8> {
        let block = header_block(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/grpc.health.v1.Health/Watch"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]);
        let mut f = frame(HEADERS, END_HEADERS, stream, &block);
        f.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        f
    }

    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    pub async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Frame> {
        let mut h = [0u8; 9];
        io.read_exact(&mut h).await?;
        let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await?;
        Ok(Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload,
        })
    }
}

/// At its age a connection goes away in two steps: GOAWAY with the largest
/// stream id and a PING, then, once the PING is answered, GOAWAY with the
/// last stream processed. gRPC's C core answers the PING and, in the same
/// write, sends the streams it had already started, each with a
/// WINDOW_UPDATE. Those streams are ignored (the client sends them again
/// elsewhere), and the calls in flight on the connection must go on: the
/// connection must not end in a PROTOCOL_ERROR.
#[tokio::test]
async fn streams_sent_after_the_shutdown_ping_are_ignored_and_calls_in_flight_go_on() {
    use raw_h2::*;
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.max_connection_age = Some(Duration::from_secs(1));
        s.server.max_connection_age_grace = Duration::from_secs(30);
    })
    .await;
    let mut tls = tls_to(&server).await;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(health_watch(1));
    tls.write_all(&hello).await.unwrap();

    let mut goaways: Vec<(u32, u32)> = Vec::new();
    let mut answered_shutdown_ping = false;
    let mut stream_1_data = 0;
    let mut stream_1_reset = false;
    let mut ended = None;
    let mut deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, read_frame(&mut tls)).await {
            Err(_) => break,
            Ok(Err(e)) => {
                ended = Some(e);
                break;
            }
            Ok(Ok(frame)) => frame,
        };
        match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => {
                tls.write_all(&raw_h2::frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .unwrap();
            }
            GOAWAY => {
                let p = &frame.payload;
                let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                goaways.push((last, code));
                if answered_shutdown_ping && last != 0x7fff_ffff {
                    // The final GOAWAY: read on a moment to see that nothing
                    // else follows (an error GOAWAY, a reset, a close).
                    deadline = deadline.min(Instant::now() + Duration::from_millis(1500));
                }
            }
            PING if frame.flags & ACK == 0 => {
                let mut answer = raw_h2::frame(PING, ACK, 0, &frame.payload);
                if goaways.iter().any(|(last, _)| *last == 0x7fff_ffff) && !answered_shutdown_ping {
                    // What the C core writes after reading GOAWAY and PING:
                    // the ACK, then a stream it had started, with a window.
                    answer.extend(health_watch(3));
                    answer.extend(raw_h2::frame(
                        WINDOW_UPDATE,
                        0,
                        3,
                        &1_000_000u32.to_be_bytes(),
                    ));
                    answered_shutdown_ping = true;
                }
                tls.write_all(&answer).await.unwrap();
            }
            DATA if frame.stream == 1 => stream_1_data += 1,
            RST_STREAM if frame.stream == 1 => stream_1_reset = true,
            _ => {}
        }
    }
    assert!(
        answered_shutdown_ping,
        "the server sent no GOAWAY and PING at its age: {goaways:?}"
    );
    assert!(
        goaways.iter().all(|(_, code)| *code == 0),
        "the server ended the connection with an error: GOAWAYs (last stream, code) {goaways:?}"
    );
    assert_eq!(
        goaways.last(),
        Some(&(1, 0)),
        "the last GOAWAY names stream 1 as the last processed, with NO_ERROR"
    );
    assert!(ended.is_none(), "the connection ended: {ended:?}");
    assert!(!stream_1_reset, "the call in flight was reset");
    assert!(stream_1_data > 0, "the call in flight got its answer");
    // The call in flight still runs on the connection: nothing closed it.
    tls.write_all(&raw_h2::frame(PING, 0, 0, b"stillup!"))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let f = read_frame(&mut tls)
                .await
                .expect("the connection is still open");
            if f.kind == PING && f.flags & ACK != 0 {
                return f.payload;
            }
            assert!(
                f.kind != GOAWAY || f.payload[4..8] == [0, 0, 0, 0],
                "an error GOAWAY"
            );
        }
    })
    .await
    .expect("the server answers a PING");
    assert_eq!(pong, b"stillup!");
    still_serving(&server).await;
}

/// One request on an HTTP/2 connection: `path` with `headers` and `body`;
/// the answer's status, headers, body and trailers.
async fn h2_call(
    send: &h2::client::SendRequest<bytes::Bytes>,
    server: &TestServer,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (
    http::StatusCode,
    http::HeaderMap,
    Vec<u8>,
    Option<http::HeaderMap>,
) {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{}{path}", server.addr.port()));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let mut send = send.clone().ready().await.unwrap();
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    stream.send_data(body.into(), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered in time")
        .expect("an answer");
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    (parts.status, parts.headers, data, trailers)
}

/// A gRPC frame of `message`.
fn frame_of(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The `grpc-status` in a gRPC-Web body's trailer frame (flag 0x80).
fn grpc_web_status(body: &[u8]) -> Option<String> {
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest[0] & 0x80 != 0 {
            let text = String::from_utf8_lossy(&rest[5..5 + len]).to_lowercase();
            return text
                .lines()
                .find_map(|l| l.strip_prefix("grpc-status:"))
                .map(|s| s.trim().to_owned());
        }
        rest = &rest[5 + len..];
    }
    None
}

/// gRPC-Web and Connect calls meet the same authentication, load shedding
/// and deadlines as gRPC calls: they are turned into gRPC calls before
/// any of those layers.
#[tokio::test]
async fn grpc_web_and_connect_calls_meet_authentication_load_shedding_and_deadlines() {
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.server.concurrency_limit = 1;
    })
    .await;
    let token = server.certs.token("alice", READ_WRITE);
    let bearer = format!("Bearer {token}");
    let order = server
        .alice()
        .await
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let get = "/orders.v1.OrderService/GetOrder";
    let watch = "/orders.v1.OrderService/WatchOrder";
    let json = |id: &str| format!(r#"{{"orderId":"{id}"}}"#).into_bytes();
    // `orders.v1.GetOrderRequest { order_id }` in protobuf.
    let proto = |id: &str| {
        let mut out = vec![0x0a, id.len() as u8];
        out.extend_from_slice(id.as_bytes());
        out
    };
    let connect = |auth: Option<&str>, extra: &[(&'static str, &str)]| {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(auth) = auth {
            headers.push(("authorization", auth.to_owned()));
        }
        headers.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
        headers
    };
    let grpc_web = |auth: Option<&str>, extra: &[(&'static str, &str)]| {
        let mut headers = vec![
            ("content-type", "application/grpc-web+proto".to_owned()),
            ("x-grpc-web", "1".to_owned()),
        ];
        if let Some(auth) = auth {
            headers.push(("authorization", auth.to_owned()));
        }
        headers.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
        headers
    };
    let tls = tls_to(&server).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);

    // Served, with a token.
    let (status, _, body, _) = h2_call(
        &send,
        &server,
        get,
        &connect(Some(&bearer), &[]),
        json(&order.id),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, body, _) = h2_call(
        &send,
        &server,
        get,
        &grpc_web(Some(&bearer), &[]),
        frame_of(&proto(&order.id)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(grpc_web_status(&body).as_deref(), Some("0"));

    // Authentication: no token, no call.
    let (status, _, body, _) =
        h2_call(&send, &server, get, &connect(None, &[]), json(&order.id)).await;
    assert_eq!(status, 401);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["code"], "unauthenticated");
    let (_, headers, body, _) = h2_call(
        &send,
        &server,
        get,
        &grpc_web(None, &[]),
        frame_of(&proto(&order.id)),
    )
    .await;
    let status = headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .or_else(|| grpc_web_status(&body));
    assert_eq!(status.as_deref(), Some("16"), "UNAUTHENTICATED");

    // Deadlines: a stream that would run for ever ends at the caller's.
    let envelope = frame_of(&json(&order.id));
    let mut headers = connect(Some(&bearer), &[("connect-timeout-ms", "300")]);
    headers[0].1 = "application/connect+json".into();
    let started = Instant::now();
    let (status, _, body, _) = h2_call(&send, &server, watch, &headers, envelope).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(r#""code":"deadline_exceeded""#), "{text}");
    let started = Instant::now();
    let (_, _, body, _) = h2_call(
        &send,
        &server,
        watch,
        &grpc_web(Some(&bearer), &[("grpc-timeout", "300m")]),
        frame_of(&proto(&order.id)),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        grpc_web_status(&body).as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED"
    );

    // Load shedding: with the one slot held by a gRPC call whose body
    // never ends, a Connect call and a gRPC-Web call are shed.
    let mut holder = send.clone().ready().await.unwrap();
    let (held, mut held_body) = holder
        .send_request(grpc_request(&server, &token), false)
        .unwrap();
    held_body
        .send_data(frame_of(&proto(&order.id)).into(), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body, _) = h2_call(
        &send,
        &server,
        get,
        &connect(Some(&bearer), &[]),
        json(&order.id),
    )
    .await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["code"], "resource_exhausted");
    let (_, headers, body, _) = h2_call(
        &send,
        &server,
        get,
        &grpc_web(Some(&bearer), &[]),
        frame_of(&proto(&order.id)),
    )
    .await;
    let status = headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .or_else(|| grpc_web_status(&body));
    assert_eq!(status.as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    drop(held_body);
    drop(held);
    server.stop().await;
}
