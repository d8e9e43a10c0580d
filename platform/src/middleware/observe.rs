//! What the service sees of every call, in one layer: the request id
//! ([`super::request_id`]), the call's spans ([`super::trace`]), the
//! metrics ([`super::metrics`]) and the access log ([`super::access_log`]).
//!
//! One layer, not four: the four need the same request id and read the same
//! trailers, so together they make one future and one [`ObservedBody`] per
//! call, where four layers would each box a future and three would wrap the
//! response body. Most of their cost is what they do: the span and the
//! access-log line.
//!
//! Outermost: nothing may log about a call before it has a name, and the
//! outcome of every call, refusals by the layers inside included, is seen.

use super::access_log::Entry;
use super::commit::Standing;
use super::metrics::{GrpcMetrics, Recorder};
use super::trace::SpanEnd;
use super::{FinishOnDrop, MethodTable, ObservedBody, Observer, call_scope, request_id, trace};
use crate::telemetry::CallTelemetry;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Clone)]
pub(crate) struct ObserveLayer {
    shared: Arc<Shared>,
}

/// What every copy of the layer's service reads: one reference count to
/// copy with the stack (hyper copies it for each request), not one for
/// each metric family.
struct Shared {
    metrics: GrpcMetrics,
    methods: Arc<MethodTable>,
    telemetry: CallTelemetry,
}

impl ObserveLayer {
    /// `methods` names each call and tells the layers inside how it streams
    /// and whether the platform serves it; `telemetry` says which spans to
    /// make and where the access log goes.
    pub(crate) fn new(
        metrics: GrpcMetrics,
        methods: Arc<MethodTable>,
        telemetry: CallTelemetry,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                metrics,
                methods,
                telemetry,
            }),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// How a call ends, told to its span, its metrics and its access-log entry.
struct Observed {
    span: SpanEnd,
    metrics: Recorder,
    entry: Entry,
    /// One clock read when the call starts and one when it ends, for the
    /// metrics and the access log alike.
    started: Instant,
}

impl Observer for Observed {
    fn messages_sent(&mut self, count: u64) {
        self.metrics.messages_sent(count);
    }

    fn finished(self: Box<Self>, code: Code) {
        (*self).record(code, false);
    }

    /// The client left: CANCELLED, unless the call had committed a change
    /// (see [`super::commit`]); then OK, for that is what the server did.
    /// While a change is still landing, the record waits for it.
    fn client_gone(self: Box<Self>) {
        let context = self.entry.context().clone();
        match context.commit.abandon() {
            Standing::Nothing => (*self).record(Code::Cancelled, true),
            Standing::Committed => (*self).record(Code::Ok, true),
            Standing::InFlight => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let code = if context.commit.settled().await {
                            Code::Ok
                        } else {
                            Code::Cancelled
                        };
                        (*self).record(code, true);
                    });
                }
                // No runtime to wait on (the process is stopping): the
                // change was handed over and lands without us.
                Err(_) => (*self).record(Code::Ok, true),
            },
        }
    }
}

impl Observed {
    fn record(self, code: Code, client_gone: bool) {
        let Observed {
            span,
            metrics,
            entry,
            started,
        } = self;
        let took = started.elapsed();
        span.finish(code);
        metrics.finish(code, took);
        entry.finish(code, took, client_gone);
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for Observe<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = &*self.shared;
        let (context, method) = request_id::assign(&mut request, &shared.methods);
        let (log_span, span, span_end) =
            trace::spans(&request, &method, &context.request_id, &shared.telemetry);
        let entry = Entry::start(
            &request,
            context.clone(),
            trace::trace_id_of(&span),
            shared.telemetry.access_log.clone(),
        );
        let metrics = shared.metrics.begin(&mut request, &method);
        let observer: Box<dyn Observer> = Box::new(Observed {
            span: span_end,
            metrics,
            entry,
            started: Instant::now(),
        });
        // The readied service makes the call's future here, inside the
        // call's spans and scope as every later poll of it is, so no copy
        // of the stack below goes into the future.
        let call = {
            let _log = log_span.enter();
            let _span = span.enter();
            call_scope::sync_scope(context.clone(), || self.inner.call(request))
        };
        Box::pin(call_scope::scope(
            context.clone(),
            async move {
                // Reports CANCELLED if the call is dropped before it answers
                // (a client cancel during a unary handler).
                let mut guard = FinishOnDrop(Some(observer));
                let mut response = call.await?;
                if let Ok(mut value) = http::HeaderValue::from_str(&context.request_id) {
                    // Unique to this response: sent as a never-indexed
                    // literal (RFC 7541 §6.2.3), or each one would be added
                    // to the connection's header table and push out the
                    // entries every response repeats (content type,
                    // encodings), which then travel whole again.
                    value.set_sensitive(true);
                    response
                        .headers_mut()
                        .insert(super::names::X_REQUEST_ID.clone(), value);
                }
                let observer = guard.0.take().expect("taken once");
                Ok(ObservedBody::wrap(response, observer))
            }
            // Every poll of the call (the inner layers and the handler) runs
            // inside the spans.
            .instrument(span)
            .instrument(log_span),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::rescue::{Rescue, RescueLayer};
    use crate::middleware::{CallContext, grpc_status};
    use prometheus_client::registry::Registry;
    use tower_test::mock;

    type Request = http::Request<tonic::body::Body>;
    type Response = http::Response<tonic::body::Body>;
    type Stack = mock::Spawn<Observe<Rescue<mock::Mock<Request, Response>>>>;

    /// Observe over rescue, as the server stacks them, over a mock for the
    /// layers below; the registry holds the call metrics.
    fn stack() -> (Stack, mock::Handle<Request, Response>, Registry) {
        let mut registry = Registry::default();
        let metrics = GrpcMetrics::register(&mut registry);
        let layer = tower::ServiceBuilder::new()
            .layer(ObserveLayer::new(
                metrics,
                Arc::new(crate::testing::table().clone()),
                CallTelemetry::default(),
            ))
            .layer(RescueLayer::new(crate::testing::FALLBACK));
        let (svc, handle) = mock::spawn_layer(layer);
        (svc, handle, registry)
    }

    fn call(id: &str) -> Request {
        http::Request::builder()
            .uri(crate::testing::GET)
            .header(request_id::HEADER, id)
            .body(tonic::body::Body::default())
            .unwrap()
    }

    #[tokio::test]
    async fn the_call_is_named_before_the_layers_inside_see_it_and_its_id_is_echoed() {
        let (mut svc, mut handle, _) = stack();
        assert!(svc.poll_ready().is_ready());
        let response = tokio::spawn(svc.call(call("req-7")));
        let (inner, reply) = handle.next_request().await.unwrap();
        let context = inner.extensions().get::<Arc<CallContext>>().unwrap();
        assert_eq!(context.request_id, "req-7");
        assert_eq!(
            &*inner
                .extensions()
                .get::<super::super::RpcMethod>()
                .unwrap()
                .name,
            "GetThing"
        );
        reply.send_response(tonic::Status::ok("").into_http());
        let response = response.await.unwrap().unwrap();
        assert_eq!(response.headers()[request_id::HEADER], "req-7");
    }

    #[tokio::test]
    async fn a_refusal_below_is_seen_with_the_code_the_client_gets() {
        let (mut svc, mut handle, registry) = stack();
        assert!(svc.poll_ready().is_ready());
        let response = tokio::spawn(svc.call(call("req-8")));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(tower::load_shed::error::Overloaded::new());
        let response = response.await.unwrap().unwrap();
        assert_eq!(
            grpc_status(response.headers()),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(response.headers()[request_id::HEADER], "req-8");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"grpc_server_handled_total{grpc_type="unary",grpc_service="things.v1.ThingService",grpc_method="GetThing",grpc_code="ResourceExhausted"} 1"#
            ),
            "{text}"
        );
    }
}
