//! A handler that panics answers INTERNAL (the cause goes to the log) and the
//! server keeps serving; without this the panic would tear down the client's
//! whole HTTP/2 connection, failing its other calls too.
//!
//! tower-http's `CatchPanic` catches the panic, while the handler's future
//! is made or polled. Its handler for a panic is given the panic alone, not
//! the call, and must return a response; but the answer needs the call (the
//! `ErrorInfo.domain` is the service called, the `RequestInfo` its request
//! id), which the rescue layer has. So the handler (`on_panic`) returns
//! an empty response marked with [`Panicked`], which [`PanicGuard`] turns
//! into that error, and the rescue layer (`super::rescue`) answers it as it
//! does every layer's error: INTERNAL "internal error", `ErrorInfo` reason
//! `INTERNAL`, and the cause in an error log naming the method.
//!
//! Innermost, around the handlers, so every layer outside sees the error.
//! Cost on OK responses: `CatchPanic` boxes the response body (its own
//! body type), which is boxed again as a `tonic::body::Body`; its future is
//! not boxed.

use super::rescue::BoxError;
use bytes::Bytes;
use futures::future::{FutureExt, Map};
use std::any::Any;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tower_http::catch_panic::{self, CatchPanic};

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
}

/// `CatchPanic`'s handler: the panic as an empty response marked
/// [`Panicked`], for [`PanicGuard`] to turn into that error.
type OnPanic = fn(Box<dyn Any + Send + 'static>) -> http::Response<tonic::body::Body>;

fn on_panic(panic: Box<dyn Any + Send + 'static>) -> http::Response<tonic::body::Body> {
    let cause = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let mut response = http::Response::new(tonic::body::Body::default());
    response.extensions_mut().insert(Panicked::new(cause));
    response
}

#[derive(Clone, Default)]
pub(crate) struct PanicGuardLayer;

impl<S> Layer<S> for PanicGuardLayer {
    type Service = PanicGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PanicGuard {
            inner: CatchPanic::custom(inner, on_panic as OnPanic),
        }
    }
}

#[derive(Clone)]
pub(crate) struct PanicGuard<S> {
    inner: CatchPanic<S, OnPanic>,
}

/// What `CatchPanic` answers with: the response, its body boxed.
type Caught<E> = Result<http::Response<tower_http::body::UnsyncBoxBody<Bytes, BoxError>>, E>;

type Settle<E> = fn(Caught<E>) -> Result<http::Response<tonic::body::Body>, BoxError>;

/// A response marked [`Panicked`] becomes that error; any other goes on, its
/// body a `tonic::body::Body` again.
fn settle<E: Into<BoxError>>(
    caught: Caught<E>,
) -> Result<http::Response<tonic::body::Body>, BoxError> {
    let mut response = caught.map_err(Into::into)?;
    if let Some(panicked) = response.extensions_mut().remove::<Panicked>() {
        return Err(panicked.into());
    }
    Ok(response.map(tonic::body::Body::new))
}

impl<S, B> Service<http::Request<B>> for PanicGuard<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Map<catch_panic::ResponseFuture<S::Future, OnPanic>, Settle<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.inner.call(request).map(settle as Settle<_>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            Ok::<_, std::convert::Infallible>(Status::ok("").into_http())
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
