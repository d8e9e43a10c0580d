//! A connection to a service: its channel (one endpoint, several balanced,
//! or every address of a DNS name), the interceptor every call goes
//! through, and each call's deadline and retries.

use super::{
    CallMetadata, Error, RetryPolicy, StaticToken, TRANSPARENT_RETRIES, TokenProvider, balance,
    discovery, never_sent,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

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

/// Configures a [`Connection`]; made by [`Connection::builder`] or
/// [`Connection::builder_dns`].
///
/// ```no_run
/// # async fn demo() -> Result<(), grpc_platform::client::Error> {
/// use grpc_platform::client::{Connection, FileToken, RetryPolicy};
/// use std::time::Duration;
/// let connection = Connection::builder("https://things.example.com:50051", "things.v1.ThingService")
///     .ca_certificate(std::fs::read("ca.pem").unwrap())
///     .token_provider(FileToken::new("/var/run/secrets/tokens/things"))
///     .timeout(Duration::from_secs(5))
///     .retry(RetryPolicy::default().max_attempts(4))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectionBuilder {
    target: Target,
    /// The health name the balancer's checks watch: the called service's.
    pub(super) service: String,
    ca: Option<Vec<u8>>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    token: Option<Arc<dyn TokenProvider>>,
    timeout: Duration,
    connect_timeout: Duration,
    keepalive: Option<Duration>,
    gzip: bool,
    pub(super) retry: RetryPolicy,
    pub(super) health_checks: bool,
}

impl ConnectionBuilder {
    /// Verify the server with this CA (PEM) instead of the system roots.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// The name to expect in the server's certificate (default: the host of
    /// the endpoint), for example when connecting by IP address.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// A client certificate and key (PEM) for mutual TLS.
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
    pub fn token(self, token: impl Into<String>) -> Self {
        self.token_provider(StaticToken::new(token))
    }

    /// Where each call's token comes from (a file, a closure, …). The
    /// provider is asked once per call, so a rotated token is used from the
    /// next call on. Replaces any earlier [`token`](Self::token).
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token = Some(Arc::new(provider));
        self
    }

    /// The deadline of every call made through [`Connection::unary`],
    /// retries included, and of [`Connection::health`] (sent as
    /// `grpc-timeout`); [`Connection::timeout`] for a typed client's other
    /// calls. Default 10 s. [`Connection::with_timeout`] overrides it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long establishing a connection may take. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive pings at this interval (default 30 s), idle
    /// connections included, so a dead connection is noticed before a call
    /// needs it. `None` stops pinging idle connections (busy ones are then
    /// pinged hourly).
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// Compress requests with gzip and accept gzip responses (default off);
    /// a typed client applies it to its generated client from
    /// [`Connection::compression`].
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// How safe calls are retried (default: [`RetryPolicy::default`]). The
    /// health checks of balanced endpoints take their backoff from it too.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether a connection balancing over several endpoints (or a DNS name)
    /// watches each one's health (`grpc.health.v1.Health/Watch` for the
    /// service named to [`Connection::builder`], on a connection of its own)
    /// and sends calls only to those SERVING (default on). A replica that
    /// drains, restarts or loses a dependency then leaves rotation at once
    /// and returns when it is ready again, so calls do not fail (or spend
    /// retries) on it. When none is healthy, calls go to all of them and
    /// fail fast with the servers' UNAVAILABLE. Off: every endpoint gets
    /// calls whatever its state. A single endpoint is never checked: there
    /// is nowhere else to go.
    pub fn health_checks(mut self, on: bool) -> Self {
        self.health_checks = on;
        self
    }

    /// Add another endpoint; calls are balanced across all of them (those
    /// that report SERVING, see [`health_checks`](Self::health_checks)). On a
    /// [`Connection::builder_dns`] builder it replaces the DNS name instead.
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
    pub(super) fn endpoint_for(
        &self,
        uri: &str,
        default_domain: Option<&str>,
    ) -> Result<Endpoint, Error> {
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
    /// name, connections are made as calls need them (the balancer's tasks
    /// run on the current Tokio runtime). An invalid endpoint or TLS setting
    /// is an [`Error::Config`].
    pub async fn connect(self) -> Result<Connection, Error> {
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
                    &self.service,
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
        let mut connection = Connection::from_channel(channel, None, self.timeout)?;
        connection.metadata = CallMetadata::new(self.token.clone());
        connection.retry = self.retry.clone();
        connection.gzip = self.gzip;
        Ok(connection)
    }
}

/// A channel to a service and how calls go over it: the token and trace
/// context of each ([`CallMetadata`]), a deadline, a retry policy, gzip.
/// Cheap to clone; clones share the channel (and the retry budget).
///
/// A typed client holds one beside its generated client, made over
/// [`intercepted`](Self::intercepted), and runs each unary call through
/// [`unary`](Self::unary).
#[derive(Clone)]
pub struct Connection {
    channel: Channel,
    metadata: CallMetadata,
    timeout: Duration,
    retry: RetryPolicy,
    gzip: bool,
}

impl Connection {
    /// A builder for one endpoint (`https://host:port`, or `host:port`, which
    /// means `https://`), for calls to `service` (its full proto name,
    /// `package.Service`, as the generated server's `SERVICE_NAME` spells
    /// it): the health name that balanced endpoints are checked for. An
    /// `http://` endpoint is plaintext: the TLS settings do not apply to it.
    /// Defaults: no token, a 10 s deadline, a 5 s connect timeout, keepalive
    /// every 30 s, the default [`RetryPolicy`], no gzip, health checks on.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), grpc_platform::client::Error> {
    /// let connection = grpc_platform::client::Connection::builder("things.example.com:50051", "things.v1.ThingService")
    ///     .token("eyJ...")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(endpoint: impl Into<String>, service: impl Into<String>) -> ConnectionBuilder {
        ConnectionBuilder {
            target: Target::Endpoints(vec![endpoint.into()]),
            service: service.into(),
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
    /// server certificate must be valid for `host`. `service` as for
    /// [`builder`](Self::builder).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), grpc_platform::client::Error> {
    /// use std::time::Duration;
    /// let connection = grpc_platform::client::Connection::builder_dns(
    ///     "things-headless.shop.svc",
    ///     50051,
    ///     Duration::from_secs(30),
    ///     "things.v1.ThingService",
    /// )
    /// .connect()
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder_dns(
        host: impl Into<String>,
        port: u16,
        every: Duration,
        service: impl Into<String>,
    ) -> ConnectionBuilder {
        ConnectionBuilder {
            target: Target::Dns {
                host: host.into(),
                port,
                every,
            },
            ..Self::builder("", service)
        }
    }

    /// A connection over an existing channel, with a fixed token (or none)
    /// and `timeout` as the deadline of its calls; the default
    /// [`RetryPolicy`], no gzip. Fails with [`Error::Config`] when the token
    /// has characters not allowed in metadata.
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
        let metadata = CallMetadata::new(
            token.map(|t| Arc::new(StaticToken::new(t)) as Arc<dyn TokenProvider>),
        );
        Ok(Self {
            channel,
            metadata,
            timeout,
            retry: RetryPolicy::default(),
            gzip: false,
        })
    }

    /// The same channel (deadline, retry policy and gzip included) with
    /// another, fixed token. Fails with [`Error::Config`] when the token has
    /// characters not allowed in metadata.
    pub fn with_token(&self, token: &str) -> Result<Self, Error> {
        let mut connection = Self::from_channel(self.channel.clone(), Some(token), self.timeout)?;
        connection.retry = self.retry.clone();
        connection.gzip = self.gzip;
        Ok(connection)
    }

    /// The same connection with another deadline for its calls.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The same connection with another retry policy.
    pub fn with_retry(&self, policy: RetryPolicy) -> Self {
        Self {
            retry: policy,
            ..self.clone()
        }
    }

    /// The underlying channel, for other services on the same port. Calls
    /// made on it directly carry no token and no deadline.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The channel behind this connection's [`CallMetadata`]: what a
    /// generated client is made over (`XClient::new(connection.intercepted())`),
    /// so each of its calls carries the token and trace context.
    pub fn intercepted(&self) -> InterceptedService<Channel, CallMetadata> {
        InterceptedService::new(self.channel.clone(), self.metadata.clone())
    }

    /// The encoding to send and accept, for a typed client to set on its
    /// generated client (`send_compressed`, `accept_compressed`): gzip when
    /// [`ConnectionBuilder::gzip`] is on, else none.
    pub fn compression(&self) -> Option<CompressionEncoding> {
        self.gzip.then_some(CompressionEncoding::Gzip)
    }

    /// The deadline of each call (sent as `grpc-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How safe calls are retried; its [`backoff`](RetryPolicy::backoff)
    /// paces the reconnects of [`Resumed`](super::Resumed) and
    /// [`Subscriptions`](super::Subscriptions) streams too.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Runs a unary call within this connection's deadline (retries
    /// included), made with `call` on a clone of `stub` (the generated
    /// client). When `safe` (the call may be repeated: a read, or a write
    /// made idempotent by a request id), it is retried as the
    /// [`RetryPolicy`] allows; whatever it is, a call that never left the
    /// client is sent again, up to [`TRANSPARENT_RETRIES`] times
    /// ([`never_sent`]). A deadline that passes reads as DEADLINE_EXCEEDED.
    pub async fn unary<S, T, R, F, Fut>(
        &self,
        stub: &S,
        safe: bool,
        message: T,
        mut call: F,
    ) -> Result<R, Error>
    where
        S: Clone,
        T: Clone,
        F: FnMut(S, tonic::Request<T>) -> Fut,
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
            match call(stub.clone(), request).await {
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

    /// `grpc.health.v1.Health/Check` on the same channel (no token needed),
    /// within the deadline and not retried. `service` is `""` for the server
    /// as a whole, or a service name; an unknown status reads as `Unknown`.
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
