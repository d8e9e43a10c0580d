//! A handler that panics answers INTERNAL (the cause goes to the log) and the
//! server keeps serving; without this the panic would tear down the client's
//! whole HTTP/2 connection, failing its other calls too.
//!
//! The guard catches the panic while the handler's future is made or
//! polled, and fails the call with [`Panicked`]; the rescue layer
//! (`super::rescue`) answers it as it does every layer's error: INTERNAL
//! "internal error", `ErrorInfo` reason `INTERNAL` with the service called
//! as its domain, and the cause in an error log naming the method.
//!
//! Innermost, around the handlers, so every layer outside sees the error.
//! Written over `futures`' `catch_unwind` rather than tower-http's
//! `CatchPanic`: that layer boxes every response body into its own body
//! type (which tonic's body type then boxes again), two allocations on every
//! call to guard against a bug. Here the OK
//! path costs nothing but the unwind guard: the future is not boxed and the
//! response is passed through as it is.

use super::rescue::BoxError;
use futures::FutureExt;
use futures::future::{CatchUnwind, Either, Map, Ready, ready};
use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A handler panicked; `cause` is the panic's message, for the log only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("handler panicked: {cause}")]
pub(crate) struct Panicked {
    cause: String,
}

impl Panicked {
    pub(crate) fn new(cause: impl Into<String>) -> Self {
        Self {
            cause: cause.into(),
        }
    }

    /// The panic's message (`panic!`'s text), for the log.
    pub(crate) fn cause(&self) -> &str {
        &self.cause
    }

    fn of(panic: Box<dyn Any + Send + 'static>) -> Self {
        let cause = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Self::new(cause)
    }
}

#[derive(Clone, Default)]
pub(crate) struct PanicGuardLayer;

impl<S> Layer<S> for PanicGuardLayer {
    type Service = PanicGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PanicGuard { inner }
    }
}

#[derive(Clone)]
pub(crate) struct PanicGuard<S> {
    inner: S,
}

type Outcome<R, E> = Result<Result<R, E>, Box<dyn Any + Send + 'static>>;
type Settle<R, E> = fn(Outcome<R, E>) -> Result<R, BoxError>;

/// The handler's outcome, a panic becoming [`Panicked`].
fn settle<R, E: Into<BoxError>>(outcome: Outcome<R, E>) -> Result<R, BoxError> {
    match outcome {
        Ok(result) => result.map_err(Into::into),
        Err(panic) => Err(Panicked::of(panic).into()),
    }
}

impl<S, B> Service<http::Request<B>> for PanicGuard<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        Ready<Result<S::Response, BoxError>>,
        Map<CatchUnwind<AssertUnwindSafe<S::Future>>, Settle<S::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A panic may also happen while the handler's future is made.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => Either::Right(
                AssertUnwindSafe(future)
                    .catch_unwind()
                    .map(settle as Settle<_, _>),
            ),
            Err(panic) => Either::Left(ready(Err(Panicked::of(panic).into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tonic::{Code, Status};
    use tonic_types::StatusExt;
    use tower::ServiceExt;
    use tower_test::mock;

    type Request = http::Request<()>;
    type Response = http::Response<tonic::body::Body>;

    fn call(path: &'static str) -> Request {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_service_keeps_serving() {
        let handler = tower::service_fn(|request: Request| async move {
            if request.uri().path() == "/things.v1.ThingService/Boom" {
                panic!("handler bug");
            }
            Ok::<Response, std::convert::Infallible>(Status::ok("").into_http())
        });
        let mut guarded = PanicGuardLayer.layer(handler);
        let error = guarded
            .ready()
            .await
            .unwrap()
            .call(call("/things.v1.ThingService/Boom"))
            .await
            .unwrap_err();
        let panicked = error.downcast_ref::<Panicked>().expect("typed");
        assert_eq!(panicked.cause(), "handler bug");

        // What the client gets.
        let status = crate::testing::rescued(&*error, "/things.v1.ThingService/Boom");
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.message(),
            "internal error",
            "the cause stays in the log"
        );
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "INTERNAL");
        assert_eq!(info.domain, "things.v1.ThingService");

        let response = guarded
            .ready()
            .await
            .unwrap()
            .call(call("/things.v1.ThingService/Fine"))
            .await
            .unwrap();
        assert_eq!(
            crate::middleware::grpc_status(response.headers()),
            Some(Code::Ok)
        );
    }

    #[tokio::test]
    async fn a_panic_while_the_handlers_future_is_made_is_caught_too() {
        #[derive(Clone)]
        struct PanicsOnCall;
        impl Service<Request> for PanicsOnCall {
            type Response = Response;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Response, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request) -> Self::Future {
                panic!("{}", String::from("bug in call"));
            }
        }
        let error = PanicGuardLayer
            .layer(PanicsOnCall)
            .oneshot(call("/things.v1.ThingService/Boom"))
            .await
            .unwrap_err();
        assert_eq!(
            error.downcast_ref::<Panicked>().map(Panicked::cause),
            Some("bug in call")
        );
    }

    #[tokio::test]
    async fn answers_and_errors_of_the_handler_pass_as_they_are() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(PanicGuardLayer);

        // A streaming answer: its body, trailers included, goes through.
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(call("/things.v1.ThingService/WatchThing"));
        let (_, reply) = handle.next_request().await.unwrap();
        let mut trailers = http::HeaderMap::new();
        Status::ok("").add_header(&mut trailers).unwrap();
        let frames = vec![
            Ok::<_, Status>(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(http_body::Frame::trailers(trailers.clone())),
        ];
        reply.send_response(http::Response::new(tonic::body::Body::new(
            http_body_util::StreamBody::new(futures::stream::iter(frames)),
        )));
        let collected = response.await.unwrap().into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\0"));

        // An error of the handler's service is not a panic.
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(call("/things.v1.ThingService/GetThing"));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(Status::unavailable("gone"));
        let error = response.await.unwrap_err();
        assert!(!error.is::<Panicked>());
        assert_eq!(error.downcast_ref::<Status>().unwrap().message(), "gone");
    }
}
