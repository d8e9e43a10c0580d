//! The admin port (`admin.addr`, plaintext): `grpc.health.v1.Health` for
//! kubelet's gRPC probes (which cannot speak TLS, hence a port of its own),
//! with reflection for it so grpcurl needs no proto files, and
//! `GET /metrics` for Prometheus, on one listener (HTTP/2 for gRPC,
//! HTTP/1.1 for scrapes). Keep it off the public Service.

use crate::health::HealthState;
use crate::middleware::rescue::RescueLayer;
use crate::telemetry::Metrics;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;

/// The content type of prometheus-client's text encoding.
pub(crate) const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn serve(
    listener: TcpListener,
    health: HealthState,
    metrics: Arc<Metrics>,
    tls: Option<Arc<crate::tls::CertState>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Reflection for health alone, so `grpcurl -plaintext … Health/Check`
    // works here without proto files (grpcurl 1.8 asks v1alpha, newer
    // tools v1).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("health's descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("health's descriptors are valid");
    let router = Routes::new(health.service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(move || {
                // Read at scrape time, so it follows certificate reloads.
                if let Some(tls) = &tls {
                    metrics.set_tls_expiry(tls.expiry_unix());
                }
                let text = metrics.render();
                async move { ([(http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text) }
            }),
        );
    Server::builder()
        .accept_http1(true)
        // Health errors (an unknown service name: NOT_FOUND) carry a
        // google.rpc.Status too, as on the main port.
        .layer(RescueLayer::new(
            <tonic_health::pb::health_server::HealthServer<()> as tonic::server::NamedService>::NAME,
        ))
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(crate::tls::plaintext_incoming(listener), shutdown)
        .await
}
