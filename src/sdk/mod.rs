//! The client SDK: a typed client for `orders.v1.OrderService` over TLS with
//! a bearer token on every call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), orders::sdk::Error> {
//! use orders::sdk::{Client, pb};
//! let client = Client::builder("https://localhost:50051")
//!     .ca_certificate(std::fs::read("certs/dev/ca.pem").unwrap())
//!     .token("eyJ...")
//!     .connect()
//!     .await?;
//! let order = client
//!     .register_order(
//!         vec![pb::LineItem { sku: "APPLE-1".into(), quantity: 3, unit_price_cents: 250 }],
//!         pb::Address { street: "Main St".into(), number: 1, city: "Delft".into(), postal_code: "2611 AA".into() },
//!     )
//!     .await?;
//! println!("registered {}", order.id);
//! # Ok(()) }
//! ```
//!
//! Usable without the server: `orders = { default-features = false }`.

mod balance;
mod discovery;
mod error;
mod retry;
mod streams;
mod token;

pub use crate::pb;
pub use error::{Error, code_name};
pub use retry::{RetryPolicy, TRANSPARENT_RETRIES, never_sent};
pub use streams::{OrderWatch, RESUME_ATTEMPTS, Tracker};
pub use token::{FileToken, FnToken, StaticToken, TokenProvider};

use pb::order_service_client::OrderServiceClient;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Adds the token (and the current trace context) to every call: an
/// `authorization: Bearer …` from the client's [`TokenProvider`], asked again
/// for each call (no header when it answers `None`), and the W3C
/// `traceparent` of the current span when OpenTelemetry is recording it (with
/// the `server` feature). A token with characters not allowed in metadata
/// fails the call with UNAUTHENTICATED before it is sent. Every [`Client`]
/// has one; it is set up with [`ClientBuilder::token`] or
/// [`ClientBuilder::token_provider`].
///
/// ```no_run
/// # async fn demo() -> Result<(), orders::sdk::Error> {
/// use orders::sdk::{Client, FnToken};
/// let client = Client::builder("https://orders.example.com:50051")
///     .token_provider(FnToken::new(|| std::env::var("ORDERS_TOKEN").ok()))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CallMetadata {
    token: Option<Arc<dyn TokenProvider>>,
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
/// recording it (feature `otel`, on with `server`).
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

type Inner = OrderServiceClient<InterceptedService<Channel, CallMetadata>>;

/// The name of the service this client calls, as its proto declares it: the
/// health name a balancing client watches on each endpoint, which a server
/// reports for every service it mounts.
const SERVICE_NAME: &str = pb::order_service_server::SERVICE_NAME;

/// Where the servers are.
#[derive(Debug, Clone)]
enum Target {
    /// One or more endpoints (`https://host:port`), calls balanced across them.
    Endpoints(Vec<String>),
    /// A DNS name whose addresses are re-resolved periodically and balanced
    /// across (a Kubernetes headless Service).
    Dns {
        host: String,
        port: u16,
        every: Duration,
    },
}

/// Configures a [`Client`].
///
/// ```no_run
/// # async fn demo() -> Result<(), orders::sdk::Error> {
/// use orders::sdk::{Client, FileToken, RetryPolicy};
/// use std::time::Duration;
/// let client = Client::builder("https://orders.example.com:50051")
///     .ca_certificate(std::fs::read("ca.pem").unwrap())
///     .token_provider(FileToken::new("/var/run/secrets/tokens/orders"))
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::default().max_attempts(4))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    target: Target,
    ca: Option<Vec<u8>>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    token: Option<Arc<dyn TokenProvider>>,
    timeout: Duration,
    connect_timeout: Duration,
    keepalive: Option<Duration>,
    gzip: bool,
    retry: RetryPolicy,
    health_checks: bool,
}

impl ClientBuilder {
    /// Verify the server with this CA (PEM) instead of the system roots.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .ca_certificate(std::fs::read("certs/dev/ca.pem").expect("the CA file"))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// The name to expect in the server's certificate (default: the host of
    /// the endpoint), for example when connecting by IP address.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://10.0.4.17:50051")
    ///     .tls_domain("orders.example.com")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// A client certificate and key (PEM) for mutual TLS.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .client_identity(
    ///         std::fs::read("client.pem").expect("the certificate"),
    ///         std::fs::read("client-key.pem").expect("the key"),
    ///     )
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// A fixed bearer token for every call (a [`StaticToken`]). Replaces any
    /// earlier [`token_provider`](Self::token_provider).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let token = std::env::var("ORDERS_TOKEN").expect("a token");
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .token(token)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token(self, token: impl Into<String>) -> Self {
        self.token_provider(StaticToken::new(token))
    }

    /// Where each call's token comes from (a file, a closure, …). The
    /// provider is asked once per call, so a rotated token is used from the
    /// next call on. Replaces any earlier [`token`](Self::token).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::{Client, FileToken};
    /// let client = Client::builder("https://orders.example.com:50051")
    ///     .token_provider(FileToken::new("/var/run/secrets/tokens/orders"))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token = Some(Arc::new(provider));
        self
    }

    /// The deadline of every unary call, retries included (sent as
    /// `grpc-timeout`). Default 10 s. [`Client::with_timeout`] overrides it.
    /// `UpdateOrder` and [`Client::health`] get it too; the watch and track
    /// streams have no deadline.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .timeout(std::time::Duration::from_secs(3))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long establishing a connection may take. Default 5 s.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .connect_timeout(std::time::Duration::from_secs(1))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive pings at this interval (default 30 s), idle
    /// connections included, so a dead connection is noticed before a call
    /// needs it. `None` stops pinging idle connections (busy ones are then
    /// pinged hourly).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .keepalive(Some(std::time::Duration::from_secs(10)))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// Compress requests with gzip and accept gzip responses (default off).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .gzip(true)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// How safe calls are retried (default: [`RetryPolicy::default`]). The
    /// resuming streams take their backoff from it too.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::{Client, RetryPolicy};
    /// let client = Client::builder("https://orders.example.com:50051")
    ///     .retry(RetryPolicy::default().max_attempts(3))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether a client balancing over several endpoints (or a DNS name)
    /// watches each one's health (`grpc.health.v1.Health/Watch` for
    /// `orders.v1.OrderService`, on a connection of its own) and sends calls
    /// only to those SERVING (default on). A replica that drains, restarts or
    /// loses its database then leaves rotation at once and returns when it
    /// is ready again, so calls do not fail (or spend retries) on it. When
    /// none is healthy, calls go to all of them and fail fast with the
    /// servers' UNAVAILABLE. Off: every endpoint gets calls whatever its
    /// state. A single endpoint is never checked: there is nowhere else to go.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders-a.example.com:50051")
    ///     .endpoint("https://orders-b.example.com:50051")
    ///     .health_checks(false)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn health_checks(mut self, on: bool) -> Self {
        self.health_checks = on;
        self
    }

    /// Add another endpoint; calls are balanced across all of them (those
    /// that report SERVING, see [`health_checks`](Self::health_checks)). On a
    /// [`Client::builder_dns`] builder it replaces the DNS name instead.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders-a.example.com:50051")
    ///     .endpoint("https://orders-b.example.com:50051")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        match &mut self.target {
            Target::Endpoints(list) => list.push(endpoint.into()),
            Target::Dns { .. } => self.target = Target::Endpoints(vec![endpoint.into()]),
        }
        self
    }

    fn with_scheme(endpoint: &str) -> String {
        if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("https://{endpoint}")
        }
    }

    /// An `Endpoint` with this builder's TLS and connection settings.
    fn endpoint_for(&self, uri: &str, default_domain: Option<&str>) -> Result<Endpoint, Error> {
        let mut endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| Error::config(format!("invalid endpoint {uri:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive.unwrap_or(Duration::from_secs(3600)))
            .keep_alive_while_idle(self.keepalive.is_some());
        if uri.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_enabled_roots(),
            };
            if let Some(domain) = self.domain.as_deref().or(default_domain) {
                tls = tls.domain_name(domain.to_owned());
            }
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::config(format!("TLS configuration: {e}")))?;
        }
        Ok(endpoint)
    }

    /// Connects. With one endpoint the connection is made now, so a wrong
    /// address or CA fails here ([`Error::Connect`]); with several, or a DNS
    /// name, connections are made as calls need them. An invalid endpoint or
    /// TLS setting is an [`Error::Config`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
    ///     .token("eyJ...")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Client, Error> {
        let channel = match &self.target {
            Target::Endpoints(list) if list.len() == 1 => {
                let uri = Self::with_scheme(&list[0]);
                self.endpoint_for(&uri, None)?
                    .connect()
                    .await
                    .map_err(Error::connect)?
            }
            Target::Endpoints(list) => {
                let endpoints = list
                    .iter()
                    .map(|e| {
                        let uri = Self::with_scheme(e);
                        Ok((uri.clone(), self.endpoint_for(&uri, None)?))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let (channel, members) = balance::balanced::<String>(
                    SERVICE_NAME,
                    self.health_checks,
                    self.retry.clone(),
                );
                for (uri, endpoint) in endpoints {
                    members.insert(uri, endpoint);
                }
                channel
            }
            Target::Dns { host, port, every } => discovery::balanced(&self, host, *port, *every)?,
        };
        let mut client = Client::from_channel(channel, None, self.timeout)?;
        client.metadata = CallMetadata {
            token: self.token.clone(),
        };
        client.retry = self.retry.clone();
        client.gzip = self.gzip;
        client.inner = client.make_inner();
        Ok(client)
    }
}

/// A connection to the orders service. Cheap to clone; clones share it.
///
/// Reads and registrations are retried on UNAVAILABLE (see [`RetryPolicy`]);
/// changes are not. Every unary call has the client's deadline, retries
/// included.
///
/// ```no_run
/// # async fn demo() -> Result<(), orders::sdk::Error> {
/// let client = orders::sdk::Client::builder("https://orders.example.com:50051")
///     .token("eyJ...")
///     .connect()
///     .await?;
/// let order = client.get_order("0193…").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    metadata: CallMetadata,
    inner: Inner,
    timeout: Duration,
    retry: RetryPolicy,
    gzip: bool,
}

impl Client {
    /// A builder for one endpoint (`https://host:port`, or `host:port`, which
    /// means `https://`). An `http://` endpoint is plaintext: the TLS settings
    /// do not apply to it. Defaults: no token, a 10 s deadline, the default
    /// [`RetryPolicy`], no gzip.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// let client = orders::sdk::Client::builder("orders.example.com:50051")
    ///     .token("eyJ...")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: Target::Endpoints(vec![endpoint.into()]),
            ca: None,
            domain: None,
            identity: None,
            token: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(30)),
            gzip: false,
            retry: RetryPolicy::default(),
            health_checks: true,
        }
    }

    /// A builder that balances calls across every address of `host`,
    /// resolved again every `every` (a Kubernetes headless Service). The
    /// server certificate must be valid for `host`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// use std::time::Duration;
    /// let client = orders::sdk::Client::builder_dns("orders-headless.shop.svc", 50051, Duration::from_secs(30))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder_dns(host: impl Into<String>, port: u16, every: Duration) -> ClientBuilder {
        ClientBuilder {
            target: Target::Dns {
                host: host.into(),
                port,
                every,
            },
            ..Self::builder("")
        }
    }

    /// A client over an existing channel, with a fixed token (or none) and
    /// `timeout` as the deadline of its calls; the default [`RetryPolicy`],
    /// no gzip. Fails with [`Error::Config`] when the token has characters
    /// not allowed in metadata.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), orders::sdk::Error> {
    /// use std::time::Duration;
    /// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let client = orders::sdk::Client::from_channel(channel, Some("eyJ..."), Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    pub fn from_channel(
        channel: Channel,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        if let Some(t) = token {
            format!("Bearer {t}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| Error::config("the token has characters not allowed in metadata"))?;
        }
        let metadata = CallMetadata {
            token: token.map(|t| Arc::new(StaticToken::new(t)) as Arc<dyn TokenProvider>),
        };
        let mut client = Self {
            inner: OrderServiceClient::with_interceptor(channel.clone(), metadata.clone()),
            channel,
            metadata,
            timeout,
            retry: RetryPolicy::default(),
            gzip: false,
        };
        client.inner = client.make_inner();
        Ok(client)
    }

    fn make_inner(&self) -> Inner {
        let client =
            OrderServiceClient::with_interceptor(self.channel.clone(), self.metadata.clone());
        if self.gzip {
            use tonic::codec::CompressionEncoding::Gzip;
            client.send_compressed(Gzip).accept_compressed(Gzip)
        } else {
            client
        }
    }

    /// The same connection (deadline, retry policy and gzip included) with
    /// another, fixed token, for example to act for someone else. Fails with
    /// [`Error::Config`] when the token has characters not allowed in
    /// metadata.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// let staff = client.with_token("eyJ...staff")?;
    /// let order = staff.advance_order("0193…", 2).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_token(&self, token: &str) -> Result<Self, Error> {
        let mut client = Self::from_channel(self.channel.clone(), Some(token), self.timeout)?;
        client.retry = self.retry.clone();
        client.gzip = self.gzip;
        client.inner = client.make_inner();
        Ok(client)
    }

    /// The same connection with another deadline for its calls.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// let order = client.with_timeout(std::time::Duration::from_millis(200)).get_order("id").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The same connection with another retry policy.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::RetryPolicy;
    /// let order = client.with_retry(RetryPolicy::none()).get_order("0193…").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_retry(&self, policy: RetryPolicy) -> Self {
        Self {
            retry: policy,
            ..self.clone()
        }
    }

    /// The underlying channel, for other services on the same port. Calls
    /// made on it directly carry no token and no deadline.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    /// let mut health = HealthClient::new(client.channel());
    /// let request = HealthCheckRequest { service: "readiness".into() };
    /// let reply = health.check(request).await?.into_inner();
    /// # Ok(()) }
    /// ```
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs a unary call within this client's deadline (retries included),
    /// retrying on UNAVAILABLE when `safe`; a call that never left the client
    /// is sent again whatever it is ([`never_sent`]).
    async fn unary<T, R, F, Fut>(&self, safe: bool, message: T, mut call: F) -> Result<R, Error>
    where
        T: Clone,
        F: FnMut(Inner, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        self.retry.record_call();
        let mut attempt = 1;
        let mut resent = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(tonic::Status::deadline_exceeded(
                    "deadline exceeded before the call could be made",
                )
                .into());
            }
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(left);
            match call(self.inner.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if resent < TRANSPARENT_RETRIES && never_sent(&status) => {
                    tracing::debug!(resent, "call never sent (connection closed): sending again");
                    resent += 1;
                }
                Err(status) if safe && self.retry.may_retry(&status, attempt) => {
                    let pause = self
                        .retry
                        .backoff(attempt)
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tracing::debug!(attempt, code = ?status.code(), "retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Registers an order and returns it. A `request_id` is generated for it,
    /// so retries (on UNAVAILABLE) can never register it twice. Invalid items
    /// or an invalid address fail with INVALID_ARGUMENT; see
    /// [`Error::violations`].
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb;
    /// let items = vec![pb::LineItem { sku: "APPLE-1".into(), quantity: 3, unit_price_cents: 250 }];
    /// let address = pb::Address { street: "Main St".into(), number: 1, city: "Delft".into(), postal_code: "2611 AA".into() };
    /// let order = client.register_order(items, address).await?;
    /// println!("registered {} for {} cents", order.id, order.total_cents);
    /// # Ok(()) }
    /// ```
    pub async fn register_order(
        &self,
        items: Vec<pb::LineItem>,
        address: pb::Address,
    ) -> Result<pb::Order, Error> {
        let response = self
            .register(pb::RegisterOrderRequest {
                items,
                address: Some(address),
                request_id: String::new(),
            })
            .await?;
        response
            .order
            .ok_or_else(|| Error::protocol("RegisterOrder answered without an order"))
    }

    /// Sends a `RegisterOrderRequest`; an empty `request_id` is filled with a
    /// new UUID first, so the call is retried safely. Set your own UUID, kept
    /// with the cart, to make a resend after your process restarts return the
    /// first order too; the same `request_id` with other contents fails with
    /// ALREADY_EXISTS.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client, items: Vec<orders::sdk::pb::LineItem>, address: orders::sdk::pb::Address) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb;
    /// let request_id = uuid::Uuid::now_v7().to_string();
    /// let request = pb::RegisterOrderRequest { items, address: Some(address), request_id };
    /// let response = client.register(request).await?;
    /// println!("registered {}", response.order_id);
    /// # Ok(()) }
    /// ```
    pub async fn register(
        &self,
        mut request: pb::RegisterOrderRequest,
    ) -> Result<pb::RegisterOrderResponse, Error> {
        if request.request_id.is_empty() {
            request.request_id = uuid::Uuid::new_v4().to_string();
        }
        self.unary(true, request, |mut c, r| async move {
            c.register_order(r).await
        })
        .await
    }

    /// One order (retried on UNAVAILABLE). NOT_FOUND when there is none with
    /// this id, or it is another customer's.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// let order = client.get_order("0193…").await?;
    /// println!("{} is {:?} at version {}", order.id, order.status(), order.version);
    /// # Ok(()) }
    /// ```
    pub async fn get_order(&self, order_id: &str) -> Result<pb::Order, Error> {
        let req = pb::GetOrderRequest {
            order_id: order_id.into(),
        };
        self.unary(true, req, |mut c, r| async move { c.get_order(r).await })
            .await
    }

    /// One page (retried on UNAVAILABLE). Pass the response's
    /// `next_page_token` as `page_token` for the next page; it is empty after
    /// the last one. `page_size` 0 lets the server choose; `status`
    /// `Unspecified` lists every status.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb;
    /// let request = pb::ListOrdersRequest { page_size: 50, page_token: String::new(), status: pb::OrderStatus::Pending as i32 };
    /// let page = client.list_orders(request).await?;
    /// for order in &page.orders {
    ///     println!("{} {}", order.id, order.total_cents);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_orders(
        &self,
        request: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, Error> {
        self.unary(
            true,
            request,
            |mut c, r| async move { c.list_orders(r).await },
        )
        .await
    }

    /// Every page, following `next_page_token`. Each page is its own
    /// [`list_orders`](Self::list_orders) call, with its own deadline and
    /// retries; an error on any page fails the whole listing.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb;
    /// let pending = client.list_all(pb::OrderStatus::Pending, 100).await?;
    /// println!("{} orders are pending", pending.len());
    /// # Ok(()) }
    /// ```
    pub async fn list_all(
        &self,
        status: pb::OrderStatus,
        page_size: i32,
    ) -> Result<Vec<pb::Order>, Error> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .list_orders(pb::ListOrdersRequest {
                    page_size,
                    page_token,
                    status: status as i32,
                })
                .await?;
            all.extend(page.orders);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// Cancels an order. Not retried: a repeat after a lost reply would fail.
    /// `expected_version` 0 means any version; another version than the
    /// order's current one fails with ABORTED (read it again), a status that
    /// can no longer be cancelled with FAILED_PRECONDITION.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// let order = client.get_order("0193…").await?;
    /// let cancelled = client.cancel_order(&order.id, order.version).await?;
    /// # Ok(()) }
    /// ```
    pub async fn cancel_order(
        &self,
        order_id: &str,
        expected_version: i64,
    ) -> Result<pb::Order, Error> {
        let req = pb::CancelOrderRequest {
            order_id: order_id.into(),
            expected_version,
        };
        self.unary(
            false,
            req,
            |mut c, r| async move { c.cancel_order(r).await },
        )
        .await
    }

    /// Moves an order one step (staff). Not retried: a repeat would advance twice.
    /// `expected_version` 0 means any version; another version than the
    /// order's current one fails with ABORTED, a final order with
    /// FAILED_PRECONDITION.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// let order = client.get_order("0193…").await?;
    /// let next = client.advance_order(&order.id, order.version).await?;
    /// println!("now {:?}", next.status());
    /// # Ok(()) }
    /// ```
    pub async fn advance_order(
        &self,
        order_id: &str,
        expected_version: i64,
    ) -> Result<pb::Order, Error> {
        let req = pb::AdvanceOrderRequest {
            order_id: order_id.into(),
            expected_version,
        };
        self.unary(
            false,
            req,
            |mut c, r| async move { c.advance_order(r).await },
        )
        .await
    }

    /// Streams the addresses as one `UpdateOrder` call (applied all or none).
    /// Not retried; the client's deadline covers the whole stream.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb;
    /// let new_home = pb::Address { street: "Oude Delft".into(), number: 7, city: "Delft".into(), postal_code: "2611 BA".into() };
    /// let response = client.update_order("0193…", vec![new_home]).await?;
    /// println!("{} update(s) applied", response.updates_applied);
    /// # Ok(()) }
    /// ```
    pub async fn update_order(
        &self,
        order_id: &str,
        addresses: Vec<pb::Address>,
    ) -> Result<pb::UpdateOrderResponse, Error> {
        self.update_stream(tokio_stream::iter(update_messages(order_id, 0, addresses)))
            .await
    }

    /// As [`Client::update_order`], applied only if the order is still at
    /// `expected_version`, and therefore retried like the other calls: an
    /// attempt that was applied although its answer was lost (a connection
    /// cut after the commit, a cancel that came too late) makes the retry
    /// ABORTED, never a second application. An ABORTED answer means: read
    /// the order to see whether these addresses are on it.
    pub async fn update_order_at(
        &self,
        order_id: &str,
        expected_version: i64,
        addresses: Vec<pb::Address>,
    ) -> Result<pb::UpdateOrderResponse, Error> {
        let messages = update_messages(order_id, expected_version, addresses);
        self.unary(true, messages, |mut c, r| async move {
            c.update_order(r.map(tokio_stream::iter)).await
        })
        .await
    }

    /// `UpdateOrder` with any stream of messages (each naming the same
    /// order), for addresses that become known over time. Not retried; the
    /// client's deadline covers the whole stream.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client, address: orders::sdk::pb::Address) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb;
    /// let (tx, rx) = tokio::sync::mpsc::channel(8);
    /// tx.send(pb::UpdateOrderRequest { order_id: "0193…".into(), address: Some(address), ..Default::default() }).await.ok();
    /// drop(tx); // ends the stream
    /// let response = client.update_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_stream(
        &self,
        messages: impl tokio_stream::Stream<Item = pb::UpdateOrderRequest> + Send + 'static,
    ) -> Result<pb::UpdateOrderResponse, Error> {
        let mut request = tonic::Request::new(messages);
        request.set_timeout(self.timeout);
        Ok(self.inner.clone().update_order(request).await?.into_inner())
    }

    /// Follows an order across server restarts and failovers: the current
    /// version (or every version after `after_version`), then each change,
    /// ending when the order is final. A broken stream is reopened after the
    /// last version seen, so no version is lost or repeated. Errors the
    /// server answers at once (NOT_FOUND, …) are returned here; later ones
    /// end the stream as its last item. Reconnects back off as the client's
    /// [`RetryPolicy`] says, and give up after [`RESUME_ATTEMPTS`] (10) failed
    /// reconnects in a row. There is no deadline.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use tokio_stream::StreamExt;
    /// let mut watch = client.watch_order("0193…", 3).await?; // versions after 3
    /// while let Some(order) = watch.next().await {
    ///     let order = order?;
    ///     println!("version {}: {:?}", order.version, order.status());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_order(
        &self,
        order_id: &str,
        after_version: i64,
    ) -> Result<OrderWatch, Error> {
        OrderWatch::start(self.clone(), order_id.to_owned(), after_version).await
    }

    /// One `WatchOrder` stream, as the server sends it (no resumption, no
    /// deadline): if the connection breaks, the stream ends with an error and
    /// reopening it after the last version seen is up to the caller.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use tokio_stream::StreamExt;
    /// let mut events = client.watch_order_stream("0193…", 0).await?;
    /// while let Some(event) = events.next().await {
    ///     if let Some(order) = event?.order {
    ///         println!("version {}", order.version);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_order_stream(
        &self,
        order_id: &str,
        after_version: i64,
    ) -> Result<tonic::Streaming<pb::OrderEvent>, Error> {
        let req = pb::WatchOrderRequest {
            order_id: order_id.into(),
            after_version,
        };
        Ok(self
            .inner
            .clone()
            .watch_order(tonic::Request::new(req))
            .await?
            .into_inner())
    }

    /// Follows many orders on one stream that survives reconnects: on a new
    /// connection every followed order is subscribed again and only versions
    /// not yet seen are passed on. The stream is opened in the background
    /// (a task on the current Tokio runtime, which must exist); errors arrive
    /// as items of the [`Tracker`].
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use tokio_stream::StreamExt;
    /// let mut tracker = client.track_orders();
    /// tracker.subscribe("0193…").await;
    /// while let Some(order) = tracker.next().await {
    ///     let order = order?;
    ///     println!("{} is {:?}", order.id, order.status());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn track_orders(&self) -> Tracker {
        Tracker::start(self.clone())
    }

    /// One `TrackOrders` stream, as the server sends it (no resumption, no
    /// deadline). Ending the request stream half-closes it: the server ends
    /// its side once every subscribed order is final.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use orders::sdk::pb::{self, track_orders_request::Action};
    /// use tokio_stream::StreamExt;
    /// let subscribe = pb::TrackOrdersRequest { action: Some(Action::Subscribe("0193…".into())) };
    /// let mut events = client.track_orders_stream(tokio_stream::iter(vec![subscribe])).await?;
    /// while let Some(event) = events.next().await {
    ///     println!("{:?}", event?.order);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn track_orders_stream(
        &self,
        requests: impl tokio_stream::Stream<Item = pb::TrackOrdersRequest> + Send + 'static,
    ) -> Result<tonic::Streaming<pb::OrderEvent>, Error> {
        Ok(self
            .inner
            .clone()
            .track_orders(tonic::Request::new(requests))
            .await?
            .into_inner())
    }

    /// `grpc.health.v1.Health/Check` on the same connection (no token needed),
    /// within the client's deadline and not retried. `service` is `""` for
    /// the server as a whole, or a service name such as
    /// `orders.v1.OrderService`; an unknown status reads as `Unknown`.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use tonic_health::pb::health_check_response::ServingStatus;
    /// let ready = client.health("orders.v1.OrderService").await? == ServingStatus::Serving;
    /// # Ok(()) }
    /// ```
    pub async fn health(&self, service: &str) -> Result<ServingStatus, Error> {
        let mut client = HealthClient::new(self.channel.clone());
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        request.set_timeout(self.timeout);
        let status = client.check(request).await?.into_inner().status;
        Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
    }
}

/// One `UpdateOrder` message per address, all naming `order_id`.
fn update_messages(
    order_id: &str,
    expected_version: i64,
    addresses: Vec<pb::Address>,
) -> Vec<pb::UpdateOrderRequest> {
    addresses
        .into_iter()
        .map(|a| pb::UpdateOrderRequest {
            order_id: order_id.into(),
            address: Some(a),
            expected_version,
        })
        .collect()
}
