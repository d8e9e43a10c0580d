//! Browsers and plain HTTP reach the same services as gRPC clients, on the
//! same port and through the same stack: gRPC-Web (tonic-web) and the
//! Connect protocol ([`connect`]) are each turned into the gRPC call they
//! mean before anything else sees the call, and CORS ([`cors`]) answers a
//! browser's preflight before authentication, since a preflight carries no
//! token.

pub mod connect;

use crate::config::CorsSettings;
use http::{HeaderName, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

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

/// The CORS policy `settings` describe. With no origins, no page of another
/// origin may read an answer (no `Access-Control-Allow-Origin` is sent).
pub fn cors(settings: &CorsSettings) -> CorsLayer {
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
