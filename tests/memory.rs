//! What a caller can make the server hold, measured on the real binary
//! (production settings, TLS, tokens) from `/proc`: compressed bombs are
//! refused at the method's limit, messages held open cost what the limit
//! allows and no more, a request that never finishes is let go after the
//! read timeout, and other callers are served throughout.

use futures::StreamExt;
use grpc_platform::test_support::{RunningServer, ServerUnderTest};
use orders::sdk::{Client, pb};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const MIB: u64 = 1024 * 1024;
/// Calls an attacker holds at once: more than one connection's streams.
const CALLS: usize = 250;
/// What the server's peak resident memory may grow by while it refuses
/// CALLS compressed bombs and then holds CALLS messages at UpdateOrder's
/// limit: per call a few copies of the message (h2's buffer, tonic's, the
/// decoded one), the stream's state in h2, hyper and tonic, and its task,
/// all well under 256 KiB, with room for the allocator. Before the limits,
/// each bomb alone was decoded to 4 MiB, and the same calls took gigabytes.
const GROWTH_BOUND: u64 = 64 * MIB;
/// UpdateOrder's own limit, as the proto declares it.
const UPDATE_ORDER_LIMIT: usize = 4096;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn start() -> RunningServer {
    let config = repo().join("config");
    RunningServer::start_with(
        ServerUnderTest {
            binary: Path::new(env!("CARGO_BIN_EXE_orders-server")),
            env_prefix: "ORDERS",
            config_dir: &config,
            name: "orders",
        },
        &[
            // One attacker may hold all these calls: what is measured here
            // is what each call can cost, not the per-caller quota.
            ("SERVER__MAX_CALLS_PER_CALLER", "1000"),
            ("SERVER__REQUEST_READ_TIMEOUT_MS", "3000"),
        ],
    )
}

async fn client(server: &RunningServer, sub: &str, scope: &str) -> Client {
    Client::builder(format!("https://{}", server.target()))
        .ca_certificate(std::fs::read_to_string(server.ca_file()).unwrap())
        .token(server.token(sub, scope))
        .connect()
        .await
        .expect("client connects")
}

/// The raw generated client on a connection of its own, sending zstd.
async fn raw(server: &RunningServer) -> pb::order_service_client::OrderServiceClient<Channel> {
    let channel = client(server, "mallory", "orders:read orders:write")
        .await
        .channel();
    pb::order_service_client::OrderServiceClient::new(channel)
        .send_compressed(CompressionEncoding::Zstd)
        .max_encoding_message_size(usize::MAX)
}

fn authorized<T>(server: &RunningServer, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let token = server.token("mallory", "orders:read orders:write");
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn address(street_bytes: usize) -> pb::Address {
    pb::Address {
        street: "a".repeat(street_bytes),
        number: 1,
        city: "Utrecht".into(),
        postal_code: "3511 AB".into(),
    }
}

/// An UpdateOrder stream that sends `message` and then nothing, never
/// half-closing.
fn held_open(
    message: pb::UpdateOrderRequest,
) -> impl futures::Stream<Item = pb::UpdateOrderRequest> + Send + 'static {
    futures::stream::once(async move { message }).chain(futures::stream::pending())
}

/// Another customer registers and reads an order, each within a second.
async fn others_are_served(alice: &Client) {
    let started = Instant::now();
    let item = pb::LineItem {
        sku: "APPLE-1".into(),
        quantity: 1,
        unit_price_cents: 250,
    };
    let order = alice
        .register_order(vec![item], address(10))
        .await
        .expect("another customer's order is registered");
    alice.get_order(&order.id).await.expect("and read back");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served slowly: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_and_held_messages_leave_the_server_small_and_serving_others() {
    let server = start();
    let alice = client(&server, "alice", "orders:read orders:write").await;
    others_are_served(&alice).await;
    let (baseline, _) = server.memory();
    let connections = futures::future::join_all((0..3).map(|_| raw(&server))).await;

    // 1. Bombs: each message is 4 MiB of one letter, a few hundred bytes
    //    once compressed. Each is refused at the method's limit at once.
    let bombs = (0..CALLS).map(|i| {
        let mut raw = connections[i % connections.len()].clone();
        let request = authorized(
            &server,
            held_open(pb::UpdateOrderRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
                address: Some(address(4 << 20)),
                expected_version: 0,
            }),
        );
        async move { raw.update_order(request).await }
    });
    let answers = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(bombs))
        .await
        .expect("every bomb is answered, none held");
    for answer in answers {
        let status = answer.expect_err("a bomb is refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
        assert_eq!(
            info.metadata["max_message_bytes"],
            UPDATE_ORDER_LIMIT.to_string()
        );
    }
    others_are_served(&alice).await;
    let (after_bombs, peak) = server.memory();
    eprintln!(
        "bombs: RSS {} MiB before, {} MiB after, peak {} MiB",
        baseline / MIB,
        after_bombs / MIB,
        peak / MIB
    );
    assert!(
        peak < baseline + GROWTH_BOUND,
        "the server grew from {baseline} to a peak of {peak} bytes"
    );

    // 2. Messages just under the limit, compressed, held open: the server
    //    keeps each until the stream goes quiet for the read timeout. Twice:
    //    what the first round's calls held is reused by the second's (the
    //    allocator keeps freed memory for the process), not added to it.
    let first = hold_messages_open(&server, &connections, &alice).await;
    assert!(
        first < baseline + GROWTH_BOUND,
        "the server grew from {baseline} to a peak of {first} bytes"
    );
    let second = hold_messages_open(&server, &connections, &alice).await;
    assert!(
        second < first + 16 * MIB,
        "a second round grew the peak from {first} to {second} bytes"
    );
    server.stop();
}

/// CALLS UpdateOrder streams, each sending one compressed message just
/// under the method's limit and then nothing, until the read timeout lets
/// go of them; another customer is served meanwhile. Returns the server's
/// peak resident memory.
async fn hold_messages_open(
    server: &RunningServer,
    connections: &[pb::order_service_client::OrderServiceClient<Channel>],
    alice: &Client,
) -> u64 {
    let held: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut raw = connections[i % connections.len()].clone();
            let request = authorized(
                server,
                held_open(pb::UpdateOrderRequest {
                    order_id: uuid::Uuid::now_v7().to_string(),
                    address: Some(address(UPDATE_ORDER_LIMIT - 200)),
                    expected_version: 0,
                }),
            );
            tokio::spawn(async move { raw.update_order(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    others_are_served(alice).await;
    let (holding, _) = server.memory();
    for call in held {
        let status = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("let go after the read timeout")
            .unwrap()
            .expect_err("a stream that went quiet is refused");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    }
    others_are_served(alice).await;
    let (after, peak) = server.memory();
    eprintln!(
        "{CALLS} messages held: RSS {} MiB while held, {} MiB after, peak {} MiB",
        holding / MIB,
        after / MIB,
        peak / MIB
    );
    peak
}

/// A GetOrder whose message arrives but whose body never ends (no
/// half-close) is answered DEADLINE_EXCEEDED after the read timeout, with
/// the reason and the timeout, rather than holding its slot until the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_never_ends_is_let_go_after_the_read_timeout() {
    let server = start();
    let channel = client(&server, "mallory", "orders:read").await.channel();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let never_ends = futures::stream::once(async {
        pb::GetOrderRequest {
            order_id: uuid::Uuid::now_v7().to_string(),
        }
    })
    .chain(futures::stream::pending());
    let mut request = tonic::Request::new(never_ends);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", server.token("mallory", "orders:read"))
            .parse()
            .unwrap(),
    );
    let started = Instant::now();
    let answer: Result<tonic::Response<pb::Order>, _> = grpc
        .client_streaming(
            request,
            http::uri::PathAndQuery::from_static("/orders.v1.OrderService/GetOrder"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = answer.expect_err("refused");
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "REQUEST_READ_TIMEOUT");
    assert_eq!(info.metadata["request_read_timeout_ms"], "3000");
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    server.stop();
}
