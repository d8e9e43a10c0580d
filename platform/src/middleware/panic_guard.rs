//! A handler that panics answers INTERNAL (the cause goes to the log) and the
//! server keeps serving; without this the panic would tear down the client's
//! whole HTTP/2 connection, failing its other calls too.
//!
//! Innermost, around the handlers, so every layer outside sees an ordinary
//! gRPC response. Hand-written over `catch_unwind` because tower-http's
//! `CatchPanic` answers with a plain HTTP body, not a gRPC status.

use super::RpcMethod;
use futures::future::{BoxFuture, FutureExt};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

#[derive(Clone, Default)]
pub struct PanicGuardLayer;

impl<S> Layer<S> for PanicGuardLayer {
    type Service = PanicGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PanicGuard { inner }
    }
}

#[derive(Clone)]
pub struct PanicGuard<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for PanicGuard<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Reference counts, not a copy of the path.
        let method = match request.extensions().get::<RpcMethod>() {
            Some(method) => method.clone(),
            None => RpcMethod::from_path(request.uri().path()),
        };
        // A panic may also happen while the handler's future is created.
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => future,
            Err(panic) => return futures::future::ready(Ok(internal(&method, panic))).boxed(),
        };
        AssertUnwindSafe(future)
            .catch_unwind()
            .map(move |result| match result {
                Ok(response) => response,
                Err(panic) => Ok(internal(&method, panic)),
            })
            .boxed()
    }
}

/// INTERNAL, opaque (the cause goes to the log), with an `ErrorInfo` whose
/// domain is the service called.
fn internal(
    method: &RpcMethod,
    panic: Box<dyn std::any::Any + Send>,
) -> http::Response<tonic::body::Body> {
    let cause = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(
        method = format_args!("/{}/{}", method.service, method.name),
        cause,
        "handler panicked"
    );
    Status::with_error_details(
        Code::Internal,
        "internal error",
        ErrorDetails::with_error_info("INTERNAL", &*method.service, HashMap::new()),
    )
    .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_service_keeps_serving() {
        let handler = tower::service_fn(|request: http::Request<()>| async move {
            if request.uri().path() == "/boom" {
                panic!("handler bug");
            }
            Ok::<_, std::convert::Infallible>(Status::ok("").into_http())
        });
        let mut guarded = PanicGuardLayer.layer(handler);
        let call = |path: &'static str| http::Request::builder().uri(path).body(()).unwrap();
        let response = guarded
            .ready()
            .await
            .unwrap()
            .call(call("/boom"))
            .await
            .unwrap();
        assert_eq!(
            crate::middleware::grpc_status(response.headers()),
            Some(tonic::Code::Internal)
        );
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(
            status.message(),
            "internal error",
            "the cause stays in the log"
        );
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "INTERNAL"
        );
        let response = guarded
            .ready()
            .await
            .unwrap()
            .call(call("/fine"))
            .await
            .unwrap();
        assert_eq!(
            crate::middleware::grpc_status(response.headers()),
            Some(tonic::Code::Ok)
        );
    }
}
