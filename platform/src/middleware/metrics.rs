//! Prometheus metrics with the names and labels of go-grpc-prometheus, so
//! existing dashboards work: `grpc_server_started_total`,
//! `grpc_server_handled_total`, `grpc_server_handling_seconds`,
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`.
//!
//! `grpc_code` is read from the response trailers (or the headers of a
//! trailers-only response), never guessed from the HTTP status, which is 200
//! for every gRPC outcome. Recorded by [`super::observe`], outside the
//! layers that refuse calls (load shedding, deadlines, auth), so their
//! refusals are counted too.

use super::{MessageCounter, RpcMethod, code_name};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Code;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub grpc_type: String,
    pub grpc_service: String,
    pub grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabels {
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
    /// Each mounted method's handles, by request path (see
    /// [`MethodHandles`]).
    methods: Arc<RwLock<HashMap<String, Arc<MethodHandles>>>>,
    /// Shared by every path no mounted service serves, made on first use.
    other: Arc<OnceLock<Arc<MethodHandles>>>,
}

/// One method's metrics, looked up once per method rather than four times
/// per call: a lookup in a family allocates, hashes and compares the label
/// strings under the family's lock, which would otherwise be paid on every
/// call.
struct MethodHandles {
    labels: MethodLabels,
    started: Counter,
    received: Counter,
    sent: Counter,
    handling: Histogram,
    /// By gRPC code, made on first use (most codes never happen).
    handled: [OnceLock<Counter>; 17],
    family: Family<CodeLabels, Counter>,
}

impl MethodHandles {
    fn new(metrics: &GrpcMetrics, labels: MethodLabels) -> Self {
        Self {
            started: metrics.started.get_or_create(&labels).clone(),
            received: metrics.received.get_or_create(&labels).clone(),
            sent: metrics.sent.get_or_create(&labels).clone(),
            handling: metrics.handling.get_or_create(&labels).clone(),
            handled: Default::default(),
            family: metrics.handled.clone(),
            labels,
        }
    }

    fn handled(&self, code: Code) -> &Counter {
        self.handled[code as usize].get_or_init(|| {
            let labels = CodeLabels {
                grpc_type: self.labels.grpc_type.clone(),
                grpc_service: self.labels.grpc_service.clone(),
                grpc_method: self.labels.grpc_method.clone(),
                grpc_code: code_name(code).to_owned(),
            };
            self.family.get_or_create(&labels).clone()
        })
    }
}

impl GrpcMetrics {
    /// Creates the metrics and registers them (prometheus-client appends
    /// `_total` to counters).
    pub fn register(registry: &mut Registry) -> Self {
        let started = Family::default();
        let handled = Family::default();
        let handling: HistogramFamily = Family::new_with_constructor(handling_histogram);
        let received = Family::default();
        let sent = Family::default();
        let m = Self {
            started,
            handled,
            handling,
            received,
            sent,
            methods: Arc::default(),
            other: Arc::default(),
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

    /// The handles of the method at `path` (labelled as `method`), made on
    /// its first call. Labels come only from the mounted services' methods:
    /// a path nobody serves, which any client can make up (with quotes,
    /// braces or backslashes, and without a token), is counted as
    /// `unknown`, so it can neither break the exposition nor grow it.
    fn handles(&self, path: &str, method: &RpcMethod) -> Arc<MethodHandles> {
        if !method.mounted {
            return self
                .other
                .get_or_init(|| {
                    let unknown = RpcMethod::from_path("/unknown/unknown");
                    Arc::new(MethodHandles::new(self, labels(&unknown)))
                })
                .clone();
        }
        if let Some(found) = self.methods.read().expect("metrics lock").get(path) {
            return found.clone();
        }
        let mut methods = self.methods.write().expect("metrics lock");
        if let Some(found) = methods.get(path) {
            return found.clone();
        }
        let handles = Arc::new(MethodHandles::new(self, labels(method)));
        methods.insert(path.to_owned(), handles.clone());
        handles
    }
}

fn labels(method: &RpcMethod) -> MethodLabels {
    MethodLabels {
        grpc_type: method.kind.label().to_owned(),
        grpc_service: method.service.to_string(),
        grpc_method: method.name.to_string(),
    }
}

pub(super) struct Recorder {
    handles: Arc<MethodHandles>,
}

impl Recorder {
    pub(super) fn messages_sent(&self, count: u64) {
        self.handles.sent.inc_by(count);
    }

    /// The call ended with `code`, `took` after it started.
    pub(super) fn finish(self, code: Code, took: Duration) {
        self.handles.handling.observe(took.as_secs_f64());
        self.handles.handled(code).inc();
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

impl GrpcMetrics {
    /// Counts the call as started and its request messages as they are
    /// read; the [`Recorder`] counts what it sends and how it ends.
    pub(super) fn begin(
        &self,
        request: &mut http::Request<tonic::body::Body>,
        method: &RpcMethod,
    ) -> Recorder {
        let handles = self.handles(request.uri().path(), method);
        handles.started.inc();
        let received = handles.received.clone();
        let body = std::mem::replace(request.body_mut(), tonic::body::Body::empty());
        *request.body_mut() = tonic::body::Body::new(CountedRequest {
            inner: body,
            counter: MessageCounter::default(),
            received,
        });
        Recorder { handles }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(path: &str) -> RpcMethod {
        let (service, name) = crate::methods::split_path(path);
        RpcMethod(Arc::new(crate::methods::Method {
            service: service.into(),
            name: name.into(),
            kind: crate::methods::RpcKind::Unary,
            access: crate::methods::Access::any_token(),
            platform: false,
            mounted: true,
            max_request_bytes: None,
        }))
    }

    #[test]
    fn only_mounted_methods_label_metrics_and_made_up_paths_count_as_unknown() {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(&mut registry);
        const GET: &str = "/things.v1.ThingService/GetThing";
        let get = metrics.handles(GET, &mounted(GET));
        get.started.inc();
        get.handled(Code::Ok).inc();
        assert!(
            Arc::ptr_eq(&get, &metrics.handles(GET, &mounted(GET))),
            "a method's handles are made once"
        );
        // What any client can put in a path, without a token: quotes,
        // braces, backslashes, new lines, and as many as it likes.
        let hostile = ["/x.Y/M\"", "/a{b=\"c\"}/d", "/x\\y/z", "/x.Y/a\nb 1"];
        let made_up = (0..200).map(|i| format!("/x.Y/Method{i}"));
        for path in hostile.iter().map(|p| p.to_string()).chain(made_up) {
            let junk = metrics.handles(&path, &RpcMethod::from_path(&path));
            junk.started.inc();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_started_total{"))
            .collect();
        assert_eq!(series.len(), 2, "{text}");
        assert!(text.contains(
            r#"grpc_server_started_total{grpc_type="unary",grpc_service="unknown",grpc_method="unknown"} 204"#
        ), "{text}");
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="things.v1.ThingService",grpc_method="GetThing",grpc_code="OK"} 1"#
        ), "{text}");
        assert!(!text.contains("x.Y") && !text.contains('\\'), "{text}");
    }
}
