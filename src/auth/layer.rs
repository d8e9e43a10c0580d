//! The tower layer that authenticates OrderService calls.
//!
//! A layer rather than a tonic interceptor because it must see the method
//! path (to pick the required scope) and must leave health and reflection
//! alone, which share the port but need no token.

use super::{AuthError, SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, Verifier, require};
use crate::middleware::CallContext;
use futures::future::{Either, Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service};

/// The path prefix of the methods that need a token.
const PROTECTED_PREFIX: &str = "/orders.v1.OrderService/";

/// The scope a method needs (CONTRACT.md section 3), by method name.
pub fn required_scope(method: &str) -> Option<&'static str> {
    Some(match method {
        "GetOrder" | "ListOrders" | "WatchOrder" | "TrackOrders" => SCOPE_READ,
        "RegisterOrder" | "CancelOrder" | "UpdateOrder" => SCOPE_WRITE,
        "AdvanceOrder" => SCOPE_ADMIN,
        _ => return None,
    })
}

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Verifier,
}

impl AuthLayer {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: Verifier,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if let Some(method) = request.uri().path().strip_prefix(PROTECTED_PREFIX) {
            let checked = self
                .verifier
                .authenticate(request.headers())
                .and_then(|principal| {
                    if let Some(scope) = required_scope(method) {
                        require(&principal, scope)?;
                    }
                    Ok::<_, AuthError>(principal)
                });
            match checked {
                Ok(principal) => {
                    if let Some(call) = request.extensions().get::<Arc<CallContext>>() {
                        let _ = call.subject.set(principal.subject().as_str().to_owned());
                    }
                    request.extensions_mut().insert(principal);
                }
                Err(err) => {
                    tracing::debug!(reason = err.reason(), "call refused");
                    return Either::Left(ready(Ok(Status::from(err).into_http())));
                }
            }
        }
        Either::Right(self.inner.call(request))
    }
}
