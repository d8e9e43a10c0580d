//! Browsers and plain HTTP reach the same services as gRPC clients, on the
//! same port and through the same stack: gRPC-Web (tonic-web) and the
//! Connect protocol ([`connect`]) are each turned into the gRPC call they
//! mean before anything else sees the call, and CORS ([`cors`]) answers a
//! browser's preflight before authentication, since a preflight carries no
//! token. A gRPC call does not pass through any of them ([`ByProtocol`]).

pub mod connect;

use crate::config::CorsSettings;
use futures::future::{BoxFuture, Either};
use http::{HeaderName, Method};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// The request headers a page may send: the token, the protocols' own, and
/// the trace and request ids a caller may pass.
const ALLOWED_HEADERS: [&str; 11] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "x-request-id",
    "traceparent",
    "tracestate",
    "grpc-accept-encoding",
];

/// The answer's headers a page's script may read: the status and its
/// details (gRPC-Web puts trailers there when it cannot read them), and the
/// request id to quote.
const EXPOSED_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// The CORS policy `settings` describe, for requests that come from a page
/// (an `Origin` header). With no origins, no page of another origin may
/// read an answer (no `Access-Control-Allow-Origin` is sent).
pub fn cors(settings: &CorsSettings) -> BrowserCorsLayer {
    BrowserCorsLayer(cors_layer(settings))
}

fn cors_layer(settings: &CorsSettings) -> CorsLayer {
    let origins = if settings.any() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            settings
                .allowed_origins
                .iter()
                .filter_map(|origin| origin.parse().ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(settings.max_age)
}

/// CORS for requests from pages only: a request without `Origin` (every
/// gRPC client's) goes straight on, its answer without the `Vary` and
/// `Access-Control-Expose-Headers` headers CORS would add to each.
#[derive(Clone)]
pub struct BrowserCorsLayer(CorsLayer);

impl<S> Layer<S> for BrowserCorsLayer {
    type Service = BrowserCors<S>;

    fn layer(&self, inner: S) -> BrowserCors<S> {
        BrowserCors {
            layer: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct BrowserCors<S> {
    layer: CorsLayer,
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for BrowserCors<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, <Cors<S> as Service<http::Request<B>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !request.headers().contains_key(http::header::ORIGIN) {
            return Either::Left(self.inner.call(request));
        }
        // The readied service goes into the policy; a clone stays for the
        // next call, which readies it first.
        let readied = self.inner.clone();
        let readied = std::mem::replace(&mut self.inner, readied);
        Either::Right(self.layer.layer(readied).call(request))
    }
}

/// Sends each request down one of two stacks over the same service: a gRPC
/// call (HTTP/2, an `application/grpc` content type, no `Origin`) straight
/// to it, anything else through the browser layers first (CORS, Connect,
/// gRPC-Web), which turn it into the gRPC call it means or answer it. So
/// serving the browsers' protocols adds one look at two headers to a gRPC
/// call and nothing else; with them off (`web: None`), every request takes
/// the gRPC stack, whose gRPC-only layer refuses what is not gRPC.
///
/// The browser layers are shared, not copied, with each copy of this
/// service (one per request, as hyper asks): a gRPC call never touches
/// them, and a browser's request copies them for itself.
pub struct ByProtocol<G, W> {
    grpc: G,
    web: Option<Arc<W>>,
}

impl<G, W> ByProtocol<G, W> {
    /// `web` must end in (a clone of) `grpc`.
    pub fn new(grpc: G, web: Option<W>) -> Self {
        Self {
            grpc,
            web: web.map(Arc::new),
        }
    }
}

impl<G: Clone, W> Clone for ByProtocol<G, W> {
    fn clone(&self) -> Self {
        Self {
            grpc: self.grpc.clone(),
            web: self.web.clone(),
        }
    }
}

/// A call as every gRPC client makes it: HTTP/2, `application/grpc` or
/// `application/grpc+…` (not `application/grpc-web…`), and not from a page.
fn plain_grpc<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && crate::middleware::grpc_only::is_grpc(request.headers().get(http::header::CONTENT_TYPE))
        && !request.headers().contains_key(http::header::ORIGIN)
}

impl<G, W, B> Service<http::Request<B>> for ByProtocol<G, W>
where
    G: Service<http::Request<B>>,
    W: Service<http::Request<B>, Response = G::Response, Error = G::Error> + Clone + Send + 'static,
    W::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = G::Response;
    type Error = G::Error;
    /// A browser's request is boxed: the future of every request is as large
    /// as its largest variant, and the gRPC call's is small.
    type Future = Either<G::Future, BoxFuture<'static, Result<G::Response, G::Error>>>;

    /// Readiness of the gRPC stack; a request for the browser layers readies
    /// its own copy of them (they end in the same service).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.grpc.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match &self.web {
            Some(web) if !plain_grpc(&request) => {
                Either::Right(Box::pin(tower::ServiceExt::oneshot(W::clone(web), request)))
            }
            _ => Either::Left(self.grpc.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    type Request = http::Request<()>;
    type Response = http::Response<()>;

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    fn preflight(origin: &str) -> Request {
        http::Request::builder()
            .method("OPTIONS")
            .uri("/things.v1.ThingService/GetThing")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(())
            .unwrap()
    }

    fn request(version: http::Version, content_type: &str, origin: Option<&str>) -> Request {
        let mut builder = http::Request::builder()
            .method("POST")
            .version(version)
            .uri("/things.v1.ThingService/GetThing")
            .header("content-type", content_type);
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        builder.body(()).unwrap()
    }

    /// Which of the two stacks `request` went down: "grpc" or "web".
    async fn routed(web_on: bool, request: Request) -> &'static str {
        let (grpc, mut grpc_handle) = mock::pair::<Request, Response>();
        let (web, mut web_handle) = mock::pair::<Request, Response>();
        let mut router = ByProtocol::new(grpc, web_on.then_some(web));
        let answered = tokio::spawn(async move {
            tower::ServiceExt::ready(&mut router).await.unwrap();
            router.call(request).await.unwrap()
        });
        let which = tokio::select! {
            Some((_, reply)) = grpc_handle.next_request() => {
                reply.send_response(Response::default());
                "grpc"
            }
            Some((_, reply)) = web_handle.next_request() => {
                reply.send_response(Response::default());
                "web"
            }
        };
        answered.await.unwrap();
        which
    }

    #[tokio::test]
    async fn grpc_calls_go_straight_to_the_stack_and_the_rest_through_the_browser_layers() {
        use http::Version;
        let h2 = Version::HTTP_2;
        for content_type in ["application/grpc", "application/grpc+proto"] {
            let call = request(h2, content_type, None);
            assert_eq!(routed(true, call).await, "grpc", "{content_type}");
        }
        for (version, content_type, origin) in [
            (h2, "application/grpc-web+proto", None),
            (h2, "application/grpc-web-text", None),
            (h2, "application/json", None),
            (h2, "application/connect+json", None),
            (h2, "application/grpcx", None),
            (h2, "application/grpc", Some("https://shop.example")),
            (Version::HTTP_11, "application/grpc", None),
        ] {
            let call = request(version, content_type, origin);
            assert_eq!(
                routed(true, call).await,
                "web",
                "{version:?} {content_type} {origin:?}"
            );
        }
        // Off: everything takes the gRPC stack, which refuses what is not gRPC.
        let call = request(h2, "application/json", None);
        assert_eq!(routed(false, call).await, "grpc");
    }

    #[tokio::test]
    async fn a_preflight_is_answered_here_and_only_allowed_origins_may_read() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(cors(&settings(&["https://shop.example"])));
        assert!(svc.poll_ready().is_ready());
        let answer = svc.call(preflight("https://shop.example")).await.unwrap();
        assert!(
            matches!(handle.poll_request(), Poll::Pending),
            "a preflight never reaches the stack (nor auth)"
        );
        let headers = answer.headers();
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://shop.example"
        );
        let allowed = headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization"), "{allowed}");

        assert!(svc.poll_ready().is_ready());
        let answer = svc.call(preflight("https://evil.example")).await.unwrap();
        assert!(
            answer
                .headers()
                .get("access-control-allow-origin")
                .is_none()
        );

        // A page's call passes, its answer readable by the allowed origin
        // with the status headers exposed.
        assert!(svc.poll_ready().is_ready());
        let call = svc.call(
            http::Request::builder()
                .method("POST")
                .header("origin", "https://shop.example")
                .body(())
                .unwrap(),
        );
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(http::Response::new(()));
        let answer = call.await.unwrap();
        assert_eq!(
            answer.headers()["access-control-allow-origin"],
            "https://shop.example"
        );
        let exposed = answer.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("grpc-status-details-bin"), "{exposed}");
    }

    #[tokio::test]
    async fn a_call_without_an_origin_passes_untouched() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(cors(&settings(&["*"])));
        assert!(svc.poll_ready().is_ready());
        let call = svc.call(http::Request::builder().method("POST").body(()).unwrap());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(http::Response::new(()));
        let answer = call.await.unwrap();
        assert!(answer.headers().is_empty(), "{:?}", answer.headers());
    }
}
