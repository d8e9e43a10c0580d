//! Load shedding: at most `server.concurrency_limit` calls are handled at
//! once; the next one fails at once instead of queueing (a queue only turns
//! overload into timeouts for all). The platform's health and reflection
//! are never shed: probes must answer under load. Every other call is,
//! whatever service it names.
//!
//! A call that finds every slot taken fails with tower's `Overloaded` (the
//! error of tower's load shedding), which the rescue layer
//! (`super::rescue`) answers RESOURCE_EXHAUSTED with `ErrorInfo` (reason
//! `SERVER_OVERLOADED`) and `RetryInfo` ([`SHED_RETRY_DELAY`]): the same
//! call may well succeed a little later.
//!
//! Health and reflection go around the limit ([`Shed`]). A call takes its
//! slot in `call`, once its method is known, with the semaphore's
//! `try_acquire`: a free slot or none, never a wait, which is what tower's
//! load shedding over its concurrency limit decides in `poll_ready`. Not
//! tower's pair itself: it takes the slot before it sees the request, so
//! it cannot spare a call by its method, and a layer that must choose
//! per request would keep a second copy of the stack below for the
//! limited calls and clone it for every call.
//!
//! Outside deadlines and auth: a shed call costs nothing but this check.
//! A streaming call holds its slot until its response starts, not for the
//! stream's life (open streams are bounded by `max_concurrent_streams`).

use super::RpcMethod;
use super::rescue::BoxError;
use futures::future::{Either, Ready, TryFutureExt, ready};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::load_shed::error::Overloaded;
use tower::{Layer, Service};

/// The least a shed client should wait before trying again (`RetryInfo`);
/// clients add their own backoff and jitter on top.
pub(crate) const SHED_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct ConcurrencyLimitLayer {
    /// Shared by every service the layer makes, and their clones.
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `limit` calls at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// The calls to the platform's own services go straight through, the
/// others only with a slot of `permits`.
#[derive(Clone)]
pub(crate) struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        Either<ErrInto<S::Future>, Holding<ErrInto<S::Future>>>,
        Ready<Result<S::Response, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request
            .extensions()
            .get::<RpcMethod>()
            .is_some_and(|method| method.platform)
        {
            return Either::Left(Either::Left(self.inner.call(request).err_into()));
        }
        match self.permits.clone().try_acquire_owned() {
            // Held by the response future until the response starts.
            Ok(permit) => Either::Left(Either::Right(Holding {
                call: self.inner.call(request).err_into(),
                permit: Some(permit),
            })),
            Err(_) => Either::Right(ready(Err(Overloaded::new().into()))),
        }
    }
}

type ErrInto<F> = futures::future::ErrInto<F, BoxError>;

pin_project_lite::pin_project! {
    /// A call's response future holding its slot, which goes back the
    /// moment the response (or the error) is ready.
    pub(crate) struct Holding<F> {
        #[pin]
        call: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future> Future for Holding<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = std::task::ready!(this.call.poll(cx));
        this.permit.take();
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};
    use tonic_types::StatusExt;
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
                Ok::<_, std::convert::Infallible>(Status::ok("").into_http::<tonic::body::Body>())
            }
        });
        let layer = ConcurrencyLimitLayer::new(1);
        let permits = layer.permits.clone();
        let limited = layer.layer(handler);
        let call = || {
            http::Request::builder()
                .uri("/things.v1.ThingService/GetThing")
                .body(())
                .unwrap()
        };
        let holding = tokio::spawn(limited.clone().oneshot(call()));
        // The first call takes its slot when its future is first polled,
        // before it is polled to its end; wait until it has.
        while permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let error = limited.clone().oneshot(call()).await.unwrap_err();
        assert!(error.is::<Overloaded>(), "{error}");

        // What the client gets.
        let status = crate::testing::rescued(&*error, "/things.v1.ThingService/GetThing");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "server overloaded; retry with backoff");
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
        let layer = ConcurrencyLimitLayer::new(1);
        let permits = layer.permits.clone();
        let (mut limited, mut handle) =
            tower_test::mock::spawn_layer::<Request, Response, _>(layer);

        // A call takes the only slot and holds it: the mock answers
        // nothing until told to.
        assert!(limited.poll_ready().is_ready());
        // The slot is taken when the call is made, and held by its future.
        let mut holding = Box::pin(limited.call(call("/things.v1.ThingService/GetThing")));
        assert_eq!(permits.available_permits(), 0);
        assert!(futures::poll!(&mut holding).is_pending());
        let Poll::Ready(Some((_, release))) = handle.poll_request() else {
            panic!("the first call reaches the handler");
        };
        assert_eq!(permits.available_permits(), 0);

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
        let error = limited
            .call(call("/payments.v1.PaymentService/Pay"))
            .await
            .unwrap_err();
        assert!(
            handle.poll_request().is_pending(),
            "a shed call never reaches the handler"
        );
        assert!(error.is::<Overloaded>(), "{error}");
        let status = crate::testing::rescued(&*error, "/payments.v1.PaymentService/Pay");
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
            permits.available_permits(),
            1,
            "the slot is given back when the holding call is answered"
        );
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_gives_its_slot_back() {
        let layer = ConcurrencyLimitLayer::new(1);
        let permits = layer.permits.clone();
        let (mut limited, mut handle) = tower_test::mock::spawn_layer::<
            http::Request<()>,
            http::Response<tonic::body::Body>,
            _,
        >(layer);
        let call = || {
            http::Request::builder()
                .uri("/things.v1.ThingService/GetThing")
                .body(())
                .unwrap()
        };
        assert!(limited.poll_ready().is_ready());
        let cancelled = limited.call(call());
        assert_eq!(permits.available_permits(), 0, "the call holds the slot");
        // The client went away: its future is dropped unanswered.
        drop(cancelled);
        assert_eq!(permits.available_permits(), 1, "the slot is free again");
        let _ = handle.next_request().await;
        // And the next call takes it rather than being shed.
        assert!(limited.poll_ready().is_ready());
        let mut next = Box::pin(limited.call(call()));
        assert!(futures::poll!(&mut next).is_pending());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(Status::ok("").into_http());
        assert!(next.await.is_ok());
    }

    #[tokio::test]
    async fn an_error_of_the_service_below_is_not_a_shed() {
        let (mut limited, mut handle) = tower_test::mock::spawn_layer::<
            http::Request<()>,
            http::Response<tonic::body::Body>,
            _,
        >(ConcurrencyLimitLayer::new(1));
        assert!(limited.poll_ready().is_ready());
        let mut response = Box::pin(
            limited.call(
                http::Request::builder()
                    .uri("/things.v1.ThingService/GetThing")
                    .body(())
                    .unwrap(),
            ),
        );
        // A limited call reaches the service below; its error comes back as is.
        assert!(futures::poll!(&mut response).is_pending());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(Status::unavailable("gone"));
        let error = response.await.unwrap_err();
        assert!(!error.is::<Overloaded>());
        assert_eq!(error.downcast_ref::<Status>().unwrap().message(), "gone");
    }
}
