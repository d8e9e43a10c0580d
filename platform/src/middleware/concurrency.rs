//! Load shedding: at most `server.concurrency_limit` calls are handled at
//! once; the next one is answered RESOURCE_EXHAUSTED at once instead of
//! queueing (a queue only turns overload into timeouts for all). The
//! platform's health and reflection are never shed: probes must answer
//! under load. Every other call is, whatever service it names.
//!
//! Outside deadlines and auth: a shed call costs nothing but this check.
//! A streaming call holds its slot until its response starts, not for the
//! stream's life (open streams are bounded by `max_concurrent_streams`).
//!
//! The refusal carries `ErrorInfo` (reason `SERVER_OVERLOADED`) and
//! `RetryInfo`: the same call may well succeed a little later.

use super::RpcMethod;
use super::rescue::{error_domain, service_of};
use futures::future::{BoxFuture, FutureExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

/// The least a shed client should wait before trying again (`RetryInfo`);
/// clients add their own backoff and jitter on top.
pub const SHED_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
    fallback: Arc<str>,
}

impl ConcurrencyLimitLayer {
    /// At most `limit` calls at once; `fallback` is the error domain of a
    /// shed call whose path names no well-formed service.
    pub fn new(limit: usize, fallback: Arc<str>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            fallback,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    fallback: Arc<str>,
}

impl<S, B> Service<http::Request<B>> for ConcurrencyLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request
            .extensions()
            .get::<RpcMethod>()
            .is_some_and(|method| method.platform)
        {
            return self.inner.call(request).boxed();
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let service = service_of(&request);
            let status = shed(error_domain(&service, &self.fallback));
            return futures::future::ready(Ok(status.into_http())).boxed();
        };
        let future = self.inner.call(request);
        async move {
            let response = future.await;
            drop(permit);
            response
        }
        .boxed()
    }
}

/// The answer to a shed call to `domain` (the service called).
fn shed(domain: &str) -> Status {
    let mut details = ErrorDetails::with_error_info("SERVER_OVERLOADED", domain, HashMap::new());
    details.set_retry_info(Some(SHED_RETRY_DELAY));
    Status::with_error_details(
        Code::ResourceExhausted,
        "server overloaded; retry with backoff",
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_call_over_the_limit_is_shed_with_retry_info() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let handler = tower::service_fn(move |_: http::Request<()>| {
            let released = released.clone();
            async move {
                // The first call holds its slot until released.
                if let Some(released) = released.lock().await.take() {
                    let _ = released.await;
                }
                Ok::<_, std::convert::Infallible>(Status::ok("").into_http())
            }
        });
        let limited = ConcurrencyLimitLayer::new(1, "things.v1.ThingService".into()).layer(handler);
        let call = || {
            http::Request::builder()
                .uri("/things.v1.ThingService/GetThing")
                .body(())
                .unwrap()
        };
        let holding = tokio::spawn(limited.clone().oneshot(call()));
        // The first call takes its slot when it is made, before it is polled
        // to its end; wait until it has.
        while limited.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let response = limited.clone().oneshot(call()).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "SERVER_OVERLOADED");
        assert_eq!(info.domain, "things.v1.ThingService");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(SHED_RETRY_DELAY)
        );
        release.send(()).unwrap();
        holding.await.unwrap().unwrap();
        let response = limited.oneshot(call()).await.unwrap();
        assert_eq!(
            crate::middleware::grpc_status(response.headers()),
            Some(Code::Ok),
            "a slot freed is taken again"
        );
    }

    #[tokio::test]
    async fn with_the_limit_taken_platform_calls_pass_and_other_services_are_shed() {
        type Request = http::Request<()>;
        type Response = http::Response<tonic::body::Body>;
        let table = crate::testing::table().clone();
        // As the observe layer, above this one, marks every call.
        let call = |path: &str| {
            let mut request = http::Request::builder().uri(path).body(()).unwrap();
            request
                .extensions_mut()
                .insert(RpcMethod::resolve(&table, path));
            request
        };
        let (mut limited, mut handle) = tower_test::mock::spawn_layer::<Request, Response, _>(
            ConcurrencyLimitLayer::new(1, "things.v1.ThingService".into()),
        );

        // A call takes the only slot and holds it: the mock answers
        // nothing until told to.
        assert!(limited.poll_ready().is_ready());
        let holding = limited.call(call("/things.v1.ThingService/GetThing"));
        let Poll::Ready(Some((_, release))) = handle.poll_request() else {
            panic!("the first call reaches the handler");
        };
        assert_eq!(limited.get_ref().permits.available_permits(), 0);

        // Health and reflection still get through.
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(limited.poll_ready().is_ready());
            let response = limited.call(call(path));
            let Poll::Ready(Some((request, reply))) = handle.poll_request() else {
                panic!("{path} is not shed");
            };
            assert_eq!(request.uri().path(), path);
            reply.send_response(Status::ok("").into_http());
            let response = response.await.unwrap();
            assert_eq!(
                crate::middleware::grpc_status(response.headers()),
                Some(Code::Ok),
                "{path}"
            );
        }

        // A path no service serves is shed like any call: only the
        // platform's own methods are spared.
        assert!(limited.poll_ready().is_ready());
        let response = limited
            .call(call("/payments.v1.PaymentService/Pay"))
            .await
            .unwrap();
        assert!(
            handle.poll_request().is_pending(),
            "a shed call never reaches the handler"
        );
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.reason, "SERVER_OVERLOADED");
        assert_eq!(info.domain, "payments.v1.PaymentService");

        release.send_response(Status::ok("").into_http());
        holding.await.unwrap();
        assert_eq!(
            limited.get_ref().permits.available_permits(),
            1,
            "the slot is given back when the holding call is answered"
        );
    }
}
