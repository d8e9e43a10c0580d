//! Scenario 6: slow and hostile clients beside normal ones, on one server
//! process. Normal clients (their own SDK connections) read orders while
//! others hold hundreds of idle connections, open streams they never read,
//! and flood HTTP/2 stream resets; the normal clients' p99 must stay within
//! 5× of what it was without them, and the server must stay up.

use crate::cluster::{Latencies, Replica, ms};
use crate::common::*;
use orders::sdk::{Client, pb};
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;

const NORMAL_CLIENTS: usize = 6;
const PHASE: Duration = Duration::from_secs(4);

/// A TLS connection speaking HTTP/2 (ALPN h2), trusting the test CA.
async fn tls_to(port: u16, certs: &Certs) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_with_ca(port, &certs.ca()).await
}

async fn tls_with_ca(port: u16, ca: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

fn grpc_request(port: u16, method: &str, token: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost:{port}/orders.v1.OrderService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

/// A gRPC message frame (uncompressed) around `message`.
fn frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Normal clients, each reading its customer's orders until `stop`; every
/// call's latency. Any failed call fails the test.
fn normal_load(
    clients: &[(Client, Arc<Vec<String>>)],
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Duration>>> {
    clients
        .iter()
        .cloned()
        .map(|(client, ids)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut took = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if n.is_multiple_of(2) {
                        let id = &ids[n % ids.len()];
                        assert_eq!(&client.get_order(id).await.unwrap().id, id);
                    } else {
                        let request = pb::ListOrdersRequest {
                            page_size: 10,
                            ..Default::default()
                        };
                        client.list_orders(request).await.unwrap();
                    }
                    took.push(t.elapsed());
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                took
            })
        })
        .collect()
}

/// The normal clients' latencies over one phase.
async fn measure(clients: &[(Client, Arc<Vec<String>>)], phase: Duration) -> Latencies {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = normal_load(clients, &stop);
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    Latencies::new(all)
}

/// Opens and at once resets streams on one connection until the server
/// closes it (or 2,000 went through); how many were sent, and whether the
/// server sent GOAWAY.
async fn reset_flood(port: u16, ca: &[u8], token: &str) -> (usize, bool) {
    let tls = tls_with_ca(port, ca).await;
    let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    for i in 0..2_000 {
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
        let step = async {
            let mut ready = send.clone().ready().await?;
            let (response, mut stream) =
                ready.send_request(grpc_request(port, "GetOrder", token), false)?;
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
            Ok::<_, h2::Error>(ready)
        };
        match step.await {
            Ok(ready) => {
                send = ready;
                sent += 1;
            }
            Err(_) => break,
        }
    }
    drop(send);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    let goaway = matches!(&ended, Ok(Ok(Err(e))) if e.is_go_away() || e.is_io());
    (sent, goaway)
}

pub async fn scenario() {
    let certs = Arc::new(Certs::new());
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/orders.db", data.path().display());
    let mut server = Replica::new("hostile", &certs, &url, &[]);
    server.start().await;
    let port = server.port;

    // Normal clients, two customers, each reading its own 20 orders.
    let mut normal = Vec::new();
    let mut ids: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    for c in 0..NORMAL_CLIENTS {
        let client = Client::builder(server.endpoint())
            .ca_certificate(certs.ca())
            .token(certs.token(&format!("normal-{}", c % 2), READ_WRITE))
            .connect()
            .await
            .unwrap();
        normal.push(client);
    }
    for n in 0..40 {
        let order = normal[n % 2]
            .register_order(vec![item("APPLE-1", 1, 100)], address("Main Street"))
            .await
            .unwrap();
        ids[n % 2].push(order.id);
    }
    let ids: Vec<Arc<Vec<String>>> = ids.into_iter().map(Arc::new).collect();
    let clients: Vec<(Client, Arc<Vec<String>>)> = normal
        .iter()
        .enumerate()
        .map(|(c, client)| (client.clone(), ids[c % 2].clone()))
        .collect();
    // Warm up, then the baseline.
    measure(&clients, Duration::from_millis(500)).await;
    let baseline = measure(&clients, PHASE).await;
    figure!(
        "s6",
        "baseline, normal clients alone: {}",
        baseline.summary()
    );

    // The hostile crowd.
    let hostile_token = certs.token("hostile", READ_WRITE);
    // 100 orders of the hostile customer, registered 10 at a time.
    let hostile_client = normal[0].with_token(&hostile_token).unwrap();
    let mut targets = Vec::new();
    for _ in 0..10 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let client = hostile_client.clone();
                tokio::spawn(async move {
                    client
                        .register_order(vec![item("APPLE-1", 1, 100)], address("Main Street"))
                        .await
                        .unwrap()
                        .id
                })
            })
            .collect();
        for t in batch {
            targets.push(t.await.unwrap());
        }
    }
    // 300 TCP connections that never start TLS.
    let mut idle_tcp = Vec::new();
    for _ in 0..300 {
        idle_tcp.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // 100 TLS + HTTP/2 connections that never send a request.
    let mut idle_h2 = Vec::new();
    for _ in 0..100 {
        let (send, conn) = h2::client::handshake(tls_to(port, &certs).await)
            .await
            .unwrap();
        idle_h2.push((send, tokio::spawn(conn)));
    }
    // 10 TrackOrders streams following 100 orders each (an event apiece) on
    // connections that read one kilobyte and then nothing: the server's
    // sends stall on flow control, its per-stream buffer fills, and the
    // stream waits without costing anything.
    let mut never_read = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    let subscribe_all: Vec<u8> = targets
        .iter()
        .flat_map(|id| {
            frame(&pb::TrackOrdersRequest {
                action: Some(pb::track_orders_request::Action::Subscribe(id.clone())),
            })
        })
        .collect();
    for _ in 0..10 {
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, bytes::Bytes>({
                // Counts what the server got through to this client.
                let received = received.clone();
                tokio_util::io::InspectReader::new(tls_to(port, &certs).await, move |read| {
                    received.fetch_add(read.len() as u64, Ordering::Relaxed);
                })
            })
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let (response, mut body) = send
            .send_request(grpc_request(port, "TrackOrders", &hostile_token), false)
            .unwrap();
        body.send_data(subscribe_all.clone().into(), false).unwrap();
        // Kept, never polled: the response and its data are never read.
        never_read.push((send, response, body, conn));
    }
    // The reset flood: a process of its own (this test binary, running the
    // ignored `reset_flood_attacker` test) at the lowest CPU priority. An
    // attacker runs on hardware of its own; here it shares two cores with
    // the server and the normal clients, and niced it takes the CPU they
    // leave instead of timing them out of theirs. The server still has to
    // take every reset it manages to send.
    let attacker = std::process::Command::new("nice")
        .args(["-n", "19"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hostile::reset_flood_attacker",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FAULTS_FLOOD_PORT", port.to_string())
        .env(
            "FAULTS_FLOOD_MS",
            (PHASE + Duration::from_millis(400)).as_millis().to_string(),
        )
        .env("FAULTS_FLOOD_CA", String::from_utf8(certs.ca()).unwrap())
        .env("FAULTS_FLOOD_TOKEN", &hostile_token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the attacker process starts");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hostile = measure(&clients, PHASE).await;
    let output = tokio::task::spawn_blocking(move || attacker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let counts: Vec<usize> = report
        .lines()
        .find_map(|l| Some(l.split_once("FLOOD ")?.1))
        .unwrap_or_else(|| panic!("no report from the attacker: {report}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (floods, resets, goaways) = (counts[0], counts[1], counts[2]);
    figure!(
        "s6",
        "beside 300 idle TCP, 100 idle HTTP/2, 10 never-reading streams (100 orders each) and {floods} reset floods ({resets} resets, {goaways} connections closed by the server): {}",
        hostile.summary()
    );
    let ratio = ms(hostile.quantile(0.99)) / ms(baseline.quantile(0.99));
    figure!("s6", "p99 ratio hostile/baseline = {ratio:.2} (limit 5)");

    // The never-reading streams were held back by flow control, not served
    // into the void: each connection got about its 1 KiB stream window (plus
    // headers and settings), not the events it asked for. What tonic encoded
    // for them is told, not checked: hyper may buffer a stream's messages
    // (up to its send buffer) before flow control stops them.
    let mut owed = 0;
    for id in &targets {
        let order = hostile_client.get_order(id).await.unwrap();
        let event = pb::OrderEvent { order: Some(order) };
        owed += 5 + prost::Message::encoded_len(&event);
    }
    let owed = owed * never_read.len();
    let got = received.load(Ordering::Relaxed) as usize;
    let encoded = server
        .method_metric("grpc_server_msg_sent_total", "TrackOrders", None)
        .await;
    figure!(
        "s6",
        "the never-reading clients received {got} bytes (TLS plaintext) of the {owed} their events take; the server encoded {encoded} of their 1000 events"
    );
    assert!(
        got <= never_read.len() * 4096 && got < owed / 2,
        "the never-reading streams were not held back by flow control: {got} bytes of {owed}"
    );

    // Nothing crashed: the process is up, ready, and a new client is served.
    assert!(
        server.is_running(),
        "the server crashed:\n{}",
        server.log_tail()
    );
    assert_eq!(server.readiness().await, Some(ServingStatus::Serving));
    let fresh = Client::builder(server.endpoint())
        .ca_certificate(certs.ca())
        .token(certs.token("normal-0", READ_WRITE))
        .connect()
        .await
        .unwrap();
    fresh.get_order(&ids[0][0]).await.unwrap();
    let log = server.log_tail();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        resets > 1_000 && goaways > 0,
        "a flood that was one ({resets} resets), cut off by the server ({goaways} times)"
    );
    assert!(
        ratio <= 5.0,
        "normal p99 {:.2}ms vs baseline {:.2}ms",
        ms(hostile.quantile(0.99)),
        ms(baseline.quantile(0.99))
    );
    drop((idle_tcp, idle_h2, never_read));
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(30)).await, Some(0));
}

/// The attacker of scenario 6, run by it as a process of its own (see
/// there): floods one connection after another with stream resets for
/// `FAULTS_FLOOD_MS`, then prints `FLOOD <floods> <resets> <goaways>`. Does
/// nothing when run without its environment.
#[test]
#[ignore = "run by s6_hostile_clients_do_not_hurt_normal_ones as its attacker process"]
fn reset_flood_attacker() {
    let (Ok(port), Ok(duration), Ok(ca), Ok(token)) = (
        std::env::var("FAULTS_FLOOD_PORT"),
        std::env::var("FAULTS_FLOOD_MS"),
        std::env::var("FAULTS_FLOOD_CA"),
        std::env::var("FAULTS_FLOOD_TOKEN"),
    ) else {
        return;
    };
    let port: u16 = port.parse().unwrap();
    let until = Instant::now() + Duration::from_millis(duration.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (floods, resets, goaways) = runtime.block_on(async {
        let (mut floods, mut resets, mut goaways) = (0, 0, 0);
        while Instant::now() < until {
            let (sent, goaway) = reset_flood(port, ca.as_bytes(), &token).await;
            floods += 1;
            resets += sent;
            goaways += goaway as usize;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (floods, resets, goaways)
    });
    println!("FLOOD {floods} {resets} {goaways}");
}
