//! What every call carries: the bearer token and the caller's trace context.

use super::TokenProvider;
use std::sync::Arc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

/// Adds the token (and the current trace context) to every call: an
/// `authorization: Bearer …` from the connection's [`TokenProvider`], asked
/// again for each call (no header when it answers `None`), and the W3C
/// `traceparent` of the current span when OpenTelemetry is recording it (with
/// the `server` feature, which links OpenTelemetry). A token with characters
/// not allowed in metadata fails the call with UNAUTHENTICATED before it is
/// sent. Every [`Connection`](super::Connection) has one; it is set up with
/// [`ConnectionBuilder::token`](super::ConnectionBuilder::token) or
/// [`ConnectionBuilder::token_provider`](super::ConnectionBuilder::token_provider).
///
/// ```no_run
/// # async fn demo() -> Result<(), grpc_platform::client::Error> {
/// use grpc_platform::client::{Connection, FnToken};
/// let connection = Connection::builder("https://things.example.com:50051", "things.v1.ThingService")
///     .token_provider(FnToken::new(|| std::env::var("THINGS_TOKEN").ok()))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CallMetadata {
    token: Option<Arc<dyn TokenProvider>>,
}

impl CallMetadata {
    /// An interceptor sending `token`'s answer on every call (no token with
    /// `None`), for a channel made elsewhere.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// use grpc_platform::client::{CallMetadata, StaticToken};
    /// use std::sync::Arc;
    /// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let metadata = CallMetadata::new(Some(Arc::new(StaticToken::new("eyJ..."))));
    /// let service = tonic::service::interceptor::InterceptedService::new(channel, metadata);
    /// # }
    /// ```
    pub fn new(token: Option<Arc<dyn TokenProvider>>) -> Self {
        Self { token }
    }
}

impl Interceptor for CallMetadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.token.as_ref().and_then(|t| t.token()) {
            let value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::unauthenticated("the token has characters not allowed in metadata")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(traceparent) = current_traceparent()
            && let Ok(value) = traceparent.parse()
        {
            request.metadata_mut().insert("traceparent", value);
        }
        Ok(request)
    }
}

/// The W3C `traceparent` of the current tracing span, when OpenTelemetry is
/// recording it (with the `server` feature, which links OpenTelemetry).
#[cfg(feature = "server")]
fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(not(feature = "server"))]
fn current_traceparent() -> Option<String> {
    None
}
