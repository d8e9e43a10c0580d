//! Load shedding: at most `server.concurrency_limit` OrderService calls are
//! handled at once; the next one is answered RESOURCE_EXHAUSTED at once
//! instead of queueing (a queue only turns overload into timeouts for all).
//! Health and reflection are never shed: probes must answer under load.
//!
//! Outside deadlines and auth: a shed call costs nothing but this check.
//! A streaming call holds its slot until its response starts, not for the
//! stream's life (open streams are bounded by `max_concurrent_streams`).

use futures::future::{BoxFuture, FutureExt};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
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
        if !request.uri().path().starts_with("/orders.v1.OrderService/") {
            return self.inner.call(request).boxed();
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let status = Status::resource_exhausted("server overloaded; retry with backoff");
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
