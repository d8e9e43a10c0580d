//! The tower layer that authenticates and authorizes every call.
//!
//! Closed by default: each call needs a valid token carrying the scopes its
//! method declares in the proto (the `grpc_platform.v1.access` option, read
//! into the [`MethodTable`] at start-up). Only methods the table holds as
//! public pass without one: the platform's health and reflection, and
//! methods whose proto says `public`. A path the table does not know needs a
//! valid token too.
//!
//! A refused call fails with its [`AuthError`], which the rescue layer
//! (`crate::middleware::rescue`) answers UNAUTHENTICATED, or
//! PERMISSION_DENIED naming the missing scope, with the error's reason.
//!
//! A layer rather than a tonic interceptor because it must see the method
//! path, and must let the public methods through untouched.

use super::{AuthError, Principal, Verifier};
use crate::methods::Access;
use crate::middleware::rescue::BoxError;
use crate::middleware::{CallContext, MethodTable, RpcMethod};
use futures::future::{BoxFuture, Either, ErrInto, Ready, TryFutureExt, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct AuthLayer {
    verifier: Verifier,
    methods: Arc<MethodTable>,
}

impl AuthLayer {
    /// Calls are checked against the access each method in `methods`
    /// declares.
    pub fn new(verifier: Verifier, methods: Arc<MethodTable>) -> Self {
        Self { verifier, methods }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            verifier: self.verifier.clone(),
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    verifier: Verifier,
    methods: Arc<MethodTable>,
}

/// Ready refusal | the inner call (fast path: known key or cached token) |
/// a refresh of the keys, then the check again (slow path: unknown `kid`).
type AuthFuture<S, R> = Either<
    Either<Ready<Result<R, BoxError>>, ErrInto<S, BoxError>>,
    BoxFuture<'static, Result<R, BoxError>>,
>;

impl<S, ReqBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AuthFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The method the observe layer resolved from this same table, when
        // it ran (no second lookup of the path); else the table's own
        // answer. Either way a path nobody mounted needs a valid token.
        let access = match request.extensions().get::<RpcMethod>() {
            Some(method) => method.access.clone(),
            None => match self.methods.get(request.uri().path()) {
                Some(method) => method.access.clone(),
                None => Access::any_token(),
            },
        };
        if access == Access::Public {
            return Either::Left(Either::Right(self.inner.call(request).err_into()));
        }
        match check(&self.verifier, request.headers(), &access) {
            Ok(principal) => {
                admit(&mut request, principal);
                Either::Left(Either::Right(self.inner.call(request).err_into()))
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
                    match check(&verifier, request.headers(), &access) {
                        Ok(principal) => {
                            admit(&mut request, principal);
                            inner.call(request).await.map_err(Into::into)
                        }
                        Err(err) => Err(refuse(err)),
                    }
                }))
            }
            Err(err) => Either::Left(Either::Left(ready(Err(refuse(err))))),
        }
    }
}

/// A principal holding every scope `access` names.
fn check(
    verifier: &Verifier,
    headers: &http::HeaderMap,
    access: &Access,
) -> Result<Principal, AuthError> {
    let principal = verifier.authenticate(headers)?;
    if let Some(missing) = access.scopes().iter().find(|s| !principal.has_scope(s)) {
        return Err(AuthError::MissingScope(missing.clone()));
    }
    Ok(principal)
}

/// The refusal of a call: its error, for the rescue layer to answer. The
/// log line names the check that failed (the message tells apart checks
/// that share a reason) and nothing of the token.
fn refuse(err: AuthError) -> BoxError {
    tracing::debug!(reason = err.reason(), check = %err, "call refused");
    err.into()
}

/// Hands the verified principal to the handlers, and its subject to the
/// access log (which sits outside this layer and reads the call context).
fn admit<B>(request: &mut http::Request<B>, principal: Principal) {
    if let Some(call) = request.extensions().get::<Arc<CallContext>>() {
        let _ = call.subject.set(principal.subject().to_owned());
    }
    request.extensions_mut().insert(principal);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeySet, KeySource, TokenRules};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::collections::HashSet;
    use std::task::Poll;
    use tonic::{Code, Status};
    use tonic_types::StatusExt;
    use tower_test::mock;

    const ISSUER: &str = "layer-test";
    const AUDIENCE: &str = "things";
    /// The PEM file's stem, which is the key's `kid`.
    const KID: &str = "layer-key";

    type Request = http::Request<()>;
    type Response = http::Response<tonic::body::Body>;
    /// The layer under test, over the mock that stands for the handlers.
    type Stack = mock::Spawn<Auth<mock::Mock<Request, Response>>>;
    type Handle = mock::Handle<Request, Response>;

    /// A verifier holding one ES256 key made for the test, and the means to
    /// sign tokens with it.
    struct Keys {
        verifier: Verifier,
        signing: EncodingKey,
        // The public key's file; kept until the test ends.
        _dir: tempfile::TempDir,
    }

    impl Keys {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let public = dir.path().join(format!("{KID}.pem"));
            std::fs::write(&public, key.public_key_pem()).unwrap();
            let rules = TokenRules {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                algorithms: vec![Algorithm::ES256],
                leeway_secs: 0,
                token_types: Default::default(),
                max_lifetime_secs: Some(86_400),
            };
            let keys = KeySet::load(&[KeySource::PemFile(public)]).unwrap();
            Self {
                verifier: Verifier::new(rules, keys),
                signing: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
                _dir: dir,
            }
        }

        /// A valid token for `sub` carrying `scope` (space-separated).
        fn token(&self, sub: &str, scope: &str) -> String {
            self.token_with(sub, scope, |_| {})
        }

        /// The same with its claims changed by `edit`.
        fn token_with(
            &self,
            sub: &str,
            scope: &str,
            edit: impl FnOnce(&mut serde_json::Value),
        ) -> String {
            let now = crate::auth::unix_now();
            let mut claims = serde_json::json!({
                "sub": sub, "scope": scope, "iss": ISSUER, "aud": AUDIENCE,
                "iat": now, "nbf": now, "exp": now + 600,
            });
            edit(&mut claims);
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(KID.into());
            jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
        }
    }

    /// The auth layer over a mock inner service, with the method table of a
    /// server mounting the test service; the handle sees every call that
    /// gets through.
    fn stack(keys: &Keys) -> (Stack, Handle) {
        let methods = Arc::new(crate::testing::table().clone());
        mock::spawn_layer(AuthLayer::new(keys.verifier.clone(), methods))
    }

    fn call(path: &str, token: Option<&str>) -> Request {
        let mut request = http::Request::builder().uri(path);
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(()).unwrap()
    }

    fn status(response: &Response) -> Status {
        Status::from_header_map(response.headers()).expect("a trailers-only gRPC response")
    }

    /// Sends `request` through the layer and expects the layer to refuse it
    /// with an [`AuthError`]: the inner service never sees the call. Returns
    /// the status the rescue layer answers that error with.
    async fn refused(svc: &mut Stack, handle: &mut Handle, request: Request) -> Status {
        let path = request.uri().path().to_owned();
        assert!(svc.poll_ready().is_ready());
        let error = svc.call(request).await.unwrap_err();
        // The mock hands a call to the handle when it is made, so a call that
        // got through would be waiting here already.
        assert!(
            handle.poll_request().is_pending(),
            "a refused call never reaches the inner service"
        );
        let refusal = error.downcast_ref::<AuthError>().expect("an AuthError");
        let status = crate::testing::rescued(&*error, &path);
        assert_eq!(status.code(), refusal.code());
        assert_eq!(status.message(), refusal.to_string());
        status
    }

    /// Sends `request` through the layer, expects the inner service to get
    /// it, answers OK, and returns what the inner service was handed.
    async fn passed(svc: &mut Stack, handle: &mut Handle, request: Request) -> Request {
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request);
        let Poll::Ready(Some((inner, reply))) = handle.poll_request() else {
            panic!("the call never reached the inner service");
        };
        reply.send_response(Status::ok("").into_http());
        let response = response.await.unwrap();
        assert_eq!(status(&response).code(), Code::Ok);
        inner
    }

    #[tokio::test]
    async fn a_health_call_without_a_token_passes_untouched() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let inner = passed(
            &mut svc,
            &mut handle,
            call("/grpc.health.v1.Health/Check", None),
        )
        .await;
        assert!(inner.extensions().get::<Principal>().is_none());
        // Public means not checked at all: a token that would be refused
        // elsewhere does not stop it either, and adds no principal.
        let inner = passed(
            &mut svc,
            &mut handle,
            call("/grpc.health.v1.Health/Watch", Some("not.a.token")),
        )
        .await;
        assert!(inner.extensions().get::<Principal>().is_none());
    }

    #[tokio::test]
    async fn a_method_its_proto_declares_public_needs_no_token() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let inner = passed(&mut svc, &mut handle, call(crate::testing::PING, None)).await;
        assert!(inner.extensions().get::<Principal>().is_none());
    }

    #[tokio::test]
    async fn a_call_without_a_token_is_unauthenticated_and_never_reaches_the_service() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let status = refused(
            &mut svc,
            &mut handle,
            call("/things.v1.ThingService/GetThing", None),
        )
        .await;
        assert_eq!(status.code(), Code::Unauthenticated);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "MISSING_TOKEN");
        assert_eq!(info.domain, "things.v1.ThingService");
    }

    #[tokio::test]
    async fn two_authorization_headers_are_refused_even_when_one_is_valid() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let valid = format!("Bearer {}", keys.token("alice", "things:read"));
        for second in [valid.as_str(), "Bearer not.a.token"] {
            let mut request = call("/things.v1.ThingService/GetThing", None);
            let headers = request.headers_mut();
            headers.append(http::header::AUTHORIZATION, valid.parse().unwrap());
            headers.append(http::header::AUTHORIZATION, second.parse().unwrap());
            let status = refused(&mut svc, &mut handle, request).await;
            assert_eq!(status.code(), Code::Unauthenticated);
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, "AMBIGUOUS_CREDENTIALS");
        }
        // One of them alone passes.
        let mut request = call("/things.v1.ThingService/GetThing", None);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, valid.parse().unwrap());
        passed(&mut svc, &mut handle, request).await;
    }

    #[tokio::test]
    async fn a_token_without_the_declared_scope_is_denied_naming_it() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        // GetThing declares `things:read` in the proto.
        let token = keys.token("alice", "things:write things:admin");
        let status = refused(
            &mut svc,
            &mut handle,
            call("/things.v1.ThingService/GetThing", Some(&token)),
        )
        .await;
        assert_eq!(status.code(), Code::PermissionDenied);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "MISSING_SCOPE");
        assert_eq!(info.domain, "things.v1.ThingService");
        assert_eq!(info.metadata["required_scope"], "things:read");
    }

    #[tokio::test]
    async fn a_token_with_the_declared_scope_reaches_the_service_with_its_principal() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let token = keys.token("alice", "things:read");
        let mut request = call("/things.v1.ThingService/GetThing", Some(&token));
        let context = Arc::new(CallContext::default());
        request.extensions_mut().insert(context.clone());
        let inner = passed(&mut svc, &mut handle, request).await;
        let principal = inner
            .extensions()
            .get::<Principal>()
            .expect("the principal is handed to the handler");
        assert_eq!(principal.subject(), "alice");
        assert!(principal.has_scope("things:read"));
        // The access log, outside this layer, learns the subject too.
        assert_eq!(context.subject.get().map(String::as_str), Some("alice"));
    }

    #[tokio::test]
    async fn every_scope_a_method_declares_is_required() {
        let keys = Keys::new();
        let methods = crate::testing::table().clone();
        let (mut svc, mut handle) = stack(&keys);
        let all: HashSet<&str> = methods
            .methods()
            .flat_map(|m| m.access.scopes().iter().map(|s| &**s))
            .collect();
        let mut checked = 0;
        for method in methods
            .methods()
            .filter(|m| !m.platform && m.access != Access::Public)
        {
            let path = format!("/{}/{}", method.service, method.name);
            let declared: Vec<&str> = method.access.scopes().iter().map(|s| &**s).collect();
            assert!(!declared.is_empty(), "{path} declares a scope");
            for scope in &declared {
                let others: Vec<&str> = all.iter().copied().filter(|s| s != scope).collect();
                let token = keys.token("alice", &others.join(" "));
                let status = refused(&mut svc, &mut handle, call(&path, Some(&token))).await;
                assert_eq!(status.code(), Code::PermissionDenied, "{path}");
                let info = status.get_details_error_info().expect("ErrorInfo");
                assert_eq!(info.metadata["required_scope"], *scope, "{path}");
            }
            let token = keys.token("alice", &declared.join(" "));
            passed(&mut svc, &mut handle, call(&path, Some(&token))).await;
            checked += 1;
        }
        assert!(checked > 0, "the test service's methods were checked");
    }

    /// Under the observe layer the method arrives resolved in the request's
    /// extensions; the layer decides from it exactly as from the table.
    #[tokio::test]
    async fn a_method_resolved_by_the_observe_layer_is_decided_the_same() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let resolved = |path: &str, token: Option<&str>| {
            let mut request = call(path, token);
            let method = RpcMethod::resolve(crate::testing::table(), path);
            request.extensions_mut().insert(method);
            request
        };
        let denied = refused(&mut svc, &mut handle, resolved(crate::testing::GET, None)).await;
        assert_eq!(denied.code(), Code::Unauthenticated);
        let unrelated = keys.token("alice", "other:read");
        let denied = refused(
            &mut svc,
            &mut handle,
            resolved(crate::testing::GET, Some(&unrelated)),
        )
        .await;
        assert_eq!(denied.code(), Code::PermissionDenied);
        let unknown = refused(&mut svc, &mut handle, resolved("/nobody.v1.X/Y", None)).await;
        assert_eq!(unknown.code(), Code::Unauthenticated);
        passed(&mut svc, &mut handle, resolved(crate::testing::PING, None)).await;
        let read = keys.token("alice", "things:read");
        passed(
            &mut svc,
            &mut handle,
            resolved(crate::testing::GET, Some(&read)),
        )
        .await;
    }

    /// Everything logged at any level while the returned guard lives, as
    /// text.
    fn capture_logs() -> (
        tracing::subscriber::DefaultGuard,
        Arc<std::sync::Mutex<Vec<u8>>>,
    ) {
        use tracing_subscriber::layer::SubscriberExt;
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        let guard = tracing::subscriber::set_default(subscriber);
        // Whether a callsite is enabled is cached for the whole process; a
        // test on another thread, with no subscriber, may have cached
        // "never" for the refusal's line. Recomputed with this one in place.
        tracing::callsite::rebuild_interest_cache();
        (guard, out)
    }

    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_refusal_is_logged_saying_which_check_failed_and_never_the_token() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let (_logging, logged) = capture_logs();
        // Two checks that share a reason: the line tells them apart.
        let id_token = keys.token_with("alice", "things:read", |c| {
            c["at_hash"] = "77QmUPtjPfzWtF2AnpK9RQ".into();
        });
        let now = crate::auth::unix_now();
        let ahead = keys.token_with("alice", "things:read", |c| {
            c["iat"] = (now + 3600).into();
            c["exp"] = (now + 7200).into();
        });
        for (token, reason, check) in [
            (
                &id_token,
                "WRONG_TOKEN_TYPE",
                "ID token where an access token is required",
            ),
            (
                &ahead,
                "TOKEN_ISSUED_IN_FUTURE",
                "token issued in the future",
            ),
        ] {
            logged.lock().unwrap().clear();
            let status = refused(
                &mut svc,
                &mut handle,
                call(crate::testing::GET, Some(token)),
            )
            .await;
            assert_eq!(status.code(), Code::Unauthenticated);
            let text = String::from_utf8(logged.lock().unwrap().clone()).unwrap();
            assert!(text.contains("call refused"), "{text}");
            assert!(text.contains(reason), "{text}");
            assert!(text.contains(check), "{text}");
            for part in token.split('.') {
                assert!(!text.contains(part), "the token is not logged: {text}");
            }
        }
    }

    #[tokio::test]
    async fn a_path_no_service_serves_needs_a_token() {
        let keys = Keys::new();
        let (mut svc, mut handle) = stack(&keys);
        let status = refused(
            &mut svc,
            &mut handle,
            call("/payments.v1.PaymentService/Pay", None),
        )
        .await;
        assert_eq!(status.code(), Code::Unauthenticated);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.domain, "payments.v1.PaymentService");
        // With any valid token it goes on (to the router, which answers
        // UNIMPLEMENTED).
        let token = keys.token("alice", "");
        let inner = passed(
            &mut svc,
            &mut handle,
            call("/payments.v1.PaymentService/Pay", Some(&token)),
        )
        .await;
        assert!(inner.extensions().get::<Principal>().is_some());
    }
}
