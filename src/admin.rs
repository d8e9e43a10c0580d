//! The admin port (`admin.addr`, plaintext): `grpc.health.v1.Health` for
//! kubelet's gRPC probes (which cannot speak TLS, hence a port of its own)
//! and `GET /metrics` for Prometheus, on one listener (HTTP/2 for gRPC,
//! HTTP/1.1 for scrapes). Keep it off the public Service.

use crate::health::HealthState;
use crate::store::Store;
use crate::telemetry::Metrics;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;

/// The content type of prometheus-client's text encoding.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(
    listener: TcpListener,
    health: HealthState,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    tls: Option<Arc<crate::tls::CertState>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let router = Routes::new(health.service()).into_axum_router().route(
        "/metrics",
        axum::routing::get(move || {
            // Read at scrape time, so it follows certificate reloads.
            if let Some(tls) = &tls {
                metrics.set_tls_expiry(tls.expiry_unix());
            }
            let text = metrics.render(&*store);
            async move { ([(http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text) }
        }),
    );
    Server::builder()
        .accept_http1(true)
        .add_routes(Routes::from(router))
        .serve_with_incoming_shutdown(crate::tls::plaintext_incoming(listener), shutdown)
        .await
}
