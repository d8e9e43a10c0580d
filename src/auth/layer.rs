//! The tower layer that authenticates OrderService calls.
//!
//! A layer rather than a tonic interceptor because it must see the method
//! path (to pick the required scope) and must leave health and reflection
//! alone, which share the port but need no token.

use super::{AuthError, Principal, SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, Verifier, require};
use crate::middleware::CallContext;
use crate::middleware::rescue::error_domain;
use futures::future::{BoxFuture, Either, Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The path prefix of the methods that need a token.
const PROTECTED_PREFIX: &str = "/orders.v1.OrderService/";

/// The scope a method needs (README "Authentication and authorization"), by method name.
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

/// Ready refusal | the inner call (fast path: known key or cached token) |
/// a refresh of the keys, then the check again (slow path: unknown `kid`).
type AuthFuture<S, R, E> = Either<Either<Ready<Result<R, E>>, S>, BoxFuture<'static, Result<R, E>>>;

impl<S, ReqBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let Some(method) = request.uri().path().strip_prefix(PROTECTED_PREFIX) else {
            return Either::Left(Either::Right(self.inner.call(request)));
        };
        let scope = required_scope(method);
        match check(&self.verifier, request.headers(), scope) {
            Ok(principal) => {
                admit(&mut request, principal);
                Either::Left(Either::Right(self.inner.call(request)))
            }
            Err(AuthError::UnknownKey) if self.verifier.refreshes() => {
                // The key may have been published since we last read the
                // sources. The readied inner service goes into the future
                // (tower's contract); a clone stays here for the next call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let verifier = self.verifier.clone();
                Either::Right(Box::pin(async move {
                    verifier.refresh_for_unknown_key().await;
                    match check(&verifier, request.headers(), scope) {
                        Ok(principal) => {
                            admit(&mut request, principal);
                            inner.call(request).await
                        }
                        Err(err) => Ok(refuse(err, request.uri().path())),
                    }
                }))
            }
            Err(err) => Either::Left(Either::Left(ready(Ok(refuse(err, request.uri().path()))))),
        }
    }
}

fn check(
    verifier: &Verifier,
    headers: &http::HeaderMap,
    scope: Option<&'static str>,
) -> Result<Principal, AuthError> {
    let principal = verifier.authenticate(headers)?;
    if let Some(scope) = scope {
        require(&principal, scope)?;
    }
    Ok(principal)
}

/// The refusal of a call to `path`; its `ErrorInfo` names the service called.
fn refuse(err: AuthError, path: &str) -> http::Response<tonic::body::Body> {
    tracing::debug!(reason = err.reason(), "call refused");
    let path = path.trim_start_matches('/');
    let service = path.split_once('/').map_or(path, |(service, _)| service);
    err.status(error_domain(service, super::ERROR_DOMAIN))
        .into_http()
}

/// Hands the verified principal to the handlers, and its subject to the
/// access log (which sits outside this layer and reads the call context).
fn admit<B>(request: &mut http::Request<B>, principal: Principal) {
    if let Some(call) = request.extensions().get::<Arc<CallContext>>() {
        let _ = call.subject.set(principal.subject().as_str().to_owned());
    }
    request.extensions_mut().insert(principal);
}
