//! Only gRPC enters the stack. A request that is not `POST` is answered
//! HTTP 405 (with `Allow: POST`), and one whose `content-type` is not
//! `application/grpc` or `application/grpc+…` HTTP 415, as the gRPC over
//! HTTP/2 protocol asks of servers. Without this, any method and any
//! content type were served as gRPC, so a `GET` with a made-up body type
//! reached authentication and the handlers' decoders, and a protocol a
//! proxy would route differently (a browser's, say) was taken for gRPC.
//! The answers are plain HTTP: neither is a gRPC call, so neither is
//! counted, logged as one, or given a gRPC status.
//!
//! Outermost: nothing below sees a request that is not gRPC.

use futures::future::{Either, Ready, ready};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Whether `content-type` names gRPC: `application/grpc`, optionally
/// followed by `+format` or `;parameters`, case-insensitively.
pub(crate) fn is_grpc(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let value = value.trim();
    let prefix = "application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.as_bytes().get(prefix.len()), None | Some(b'+' | b';'))
}

fn refusal(status: http::StatusCode) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    *response.status_mut() = status;
    if status == http::StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    }
    response
}

#[derive(Clone, Copy, Default)]
pub(crate) struct GrpcOnlyLayer;

impl<S> Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;

    fn layer(&self, inner: S) -> GrpcOnly<S> {
        GrpcOnly { inner }
    }
}

#[derive(Clone)]
pub(crate) struct GrpcOnly<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for GrpcOnly<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refused = if request.method() != http::Method::POST {
            Some(http::StatusCode::METHOD_NOT_ALLOWED)
        } else if !is_grpc(request.headers().get(http::header::CONTENT_TYPE)) {
            Some(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)
        } else {
            None
        };
        match refused {
            Some(status) => Either::Left(ready(Ok(refusal(status)))),
            None => Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    type Request = http::Request<()>;
    type Response = http::Response<tonic::body::Body>;

    fn request(method: &str, content_type: Option<&str>) -> Request {
        let mut builder = http::Request::builder()
            .method(method)
            .uri("/things.v1.ThingService/GetThing");
        if let Some(content_type) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        builder.body(()).unwrap()
    }

    #[tokio::test]
    async fn grpc_posts_pass_and_nothing_else_reaches_the_service() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(GrpcOnlyLayer);
        for content_type in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(svc.poll_ready().is_ready());
            let response = svc.call(request("POST", Some(content_type)));
            let (_, reply) = handle.next_request().await.expect("{content_type} passes");
            reply.send_response(Response::default());
            assert_eq!(response.await.unwrap().status(), http::StatusCode::OK);
        }
        let refused = [
            (request("GET", Some("application/grpc")), 405),
            (request("PUT", Some("application/grpc")), 405),
            (request("POST", None), 415),
            (request("POST", Some("application/json")), 415),
            (request("POST", Some("application/grpcx")), 415),
            (request("POST", Some("text/plain")), 415),
        ];
        for (request, status) in refused {
            assert!(svc.poll_ready().is_ready());
            let response = svc.call(request).await.unwrap();
            assert_eq!(response.status().as_u16(), status);
            if status == 405 {
                assert_eq!(response.headers()[http::header::ALLOW], "POST");
            }
            assert!(
                matches!(handle.poll_request(), Poll::Pending),
                "the service never saw it"
            );
        }
    }
}
