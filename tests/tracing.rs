//! Traces: a call carrying a W3C `traceparent` yields a server span in the
//! caller's trace, exported over the real OTLP/gRPC protocol to a receiver
//! run inside this test.

mod common;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A span with its resource's attributes.
type Received = (Span, Vec<(String, String)>);

/// Collects every span exported to it.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let resource: Vec<(String, String)> = resource_spans
                .resource
                .map(|r| {
                    r.attributes
                        .into_iter()
                        .map(|kv| (kv.key, value(kv.value)))
                        .collect()
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    self.spans.lock().unwrap().push((span, resource.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn value(v: Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value) {
        Some(Value::StringValue(s)) => s,
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| value(kv.value.clone()))
}

#[tokio::test]
async fn a_call_with_a_traceparent_joins_the_callers_trace_over_otlp() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let receiver_task = tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_orders-server");
    let mut child = Command::new(binary)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORDERS_CONFIG_DIR", common::repo().join("config"))
        .env("ORDERS__SERVER__ADDR", "127.0.0.1:0")
        .env("ORDERS__ADMIN__ADDR", "127.0.0.1:0")
        .env("ORDERS__TELEMETRY__LOG_FORMAT", "json")
        .env("ORDERS__TELEMETRY__OTLP_ENDPOINT", format!("http://{otlp}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
    let token = Command::new(binary)
        .current_dir(dir.path())
        .env("ORDERS_CONFIG_DIR", common::repo().join("config"))
        .args(["dev-token", "--sub", "alice"])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let client = orders::sdk::Client::builder(format!("https://localhost:{port}"))
        .ca_certificate(std::fs::read(dir.path().join("certs/dev/ca.pem")).unwrap())
        .connect()
        .await
        .unwrap();
    let mut raw = orders::sdk::pb::order_service_client::OrderServiceClient::new(client.channel());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(orders::sdk::pb::GetOrderRequest {
        order_id: "missing".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_span}-01").parse().unwrap(),
    );
    let status = raw.get_order(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    drop(raw);
    drop(client);

    // Stopping the server flushes the spans it still holds.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server exits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = receiver.spans.lock().unwrap().clone();
    let (span, resource) = spans
        .iter()
        .find(|(s, _)| s.name == "orders.v1.OrderService/GetOrder")
        .unwrap_or_else(|| {
            panic!(
                "a GetOrder span among {:?}",
                spans.iter().map(|s| &s.0.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&span.trace_id), trace_id, "the caller's trace");
    assert_eq!(
        hex(&span.parent_span_id),
        parent_span,
        "a child of the caller's span"
    );
    assert_eq!(
        span.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(span, "rpc.service").as_deref(),
        Some("orders.v1.OrderService")
    );
    assert_eq!(attribute(span, "rpc.method").as_deref(), Some("GetOrder"));
    assert_eq!(
        attribute(span, "rpc.grpc.status_code").as_deref(),
        Some("5"),
        "NOT_FOUND"
    );
    assert!(
        resource
            .iter()
            .any(|(k, v)| k == "service.name" && v == "orders")
    );
    receiver_task.abort();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
