//! Prometheus metrics with the names and labels of go-grpc-prometheus, so
//! existing dashboards work: `grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`,
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`.
//!
//! `grpc_code` is read from the response trailers (or the headers of a
//! trailers-only response), never guessed from the HTTP status, which is 200
//! for every gRPC outcome. Sits outside the layers that refuse calls (load
//! shedding, deadlines, auth) so their refusals are counted too.

use super::{MessageCounter, Observer, RpcMethod, code_name};
use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_type: String,
    pub grpc_service: String,
    pub grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub grpc_type: String,
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn handling_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's gRPC metrics.
#[derive(Clone)]
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<CodeLabels, Counter>,
    handling: HistogramFamily,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
}

impl GrpcMetrics {
    /// Creates the metrics and registers them (prometheus-client appends
    /// `_total` to counters).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(handling_histogram),
            received: Family::default(),
            sent: Family::default(),
        };
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            m.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            m.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            m.handling.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            m.received.clone(),
        );
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            m.sent.clone(),
        );
        m
    }
}

fn labels(method: &RpcMethod) -> MethodLabels {
    MethodLabels {
        grpc_type: method.kind.label().to_owned(),
        grpc_service: method.service.to_string(),
        grpc_method: method.method.to_string(),
    }
}

struct Recorder {
    metrics: GrpcMetrics,
    labels: MethodLabels,
    started: Instant,
}

impl Observer for Recorder {
    fn messages_sent(&mut self, count: u64) {
        self.metrics.sent.get_or_create(&self.labels).inc_by(count);
    }

    fn finished(self: Box<Self>, code: Code) {
        let Recorder {
            metrics,
            labels,
            started,
        } = *self;
        metrics
            .handling
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let code_labels = CodeLabels {
            grpc_type: labels.grpc_type,
            grpc_service: labels.grpc_service,
            grpc_method: labels.grpc_method,
            grpc_code: code_name(code).to_owned(),
        };
        metrics.handled.get_or_create(&code_labels).inc();
    }
}

/// Counts the messages of a request body as they are read.
struct CountedRequest {
    inner: tonic::body::Body,
    counter: MessageCounter,
    received: Counter,
}

impl Body for CountedRequest {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = this.counter.feed(data.chunk());
            if n > 0 {
                this.received.inc_by(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone)]
pub struct MetricsLayer {
    metrics: GrpcMetrics,
}

impl MetricsLayer {
    pub fn new(metrics: GrpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S> Service<http::Request<tonic::body::Body>> for MetricsService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let method = request
            .extensions()
            .get::<RpcMethod>()
            .cloned()
            .unwrap_or_else(|| RpcMethod::from_path(request.uri().path()));
        let labels = labels(&method);
        self.metrics.started.get_or_create(&labels).inc();
        let received = self.metrics.received.get_or_create(&labels).clone();
        let request = request.map(|inner| {
            tonic::body::Body::new(CountedRequest {
                inner,
                counter: MessageCounter::default(),
                received,
            })
        });
        let recorder = Box::new(Recorder {
            metrics: self.metrics.clone(),
            labels,
            started: Instant::now(),
        });
        super::call_observed(&mut self.inner, request, recorder)
    }
}
