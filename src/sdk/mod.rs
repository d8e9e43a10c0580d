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
//!
//! Built on the platform's client side (`grpc_platform::client`): the
//! channel (TLS, balancing with health checks, DNS), the token on each call,
//! deadlines, retries, the reconnecting of resumed streams and the error
//! type are the platform's, re-exported here. What is here is what knows
//! the orders service: the typed methods, which calls are safe to retry,
//! and what the resumed streams need to know of it ([`OrderWatch`] resumes
//! after the last version seen, [`Tracker`] subscribes every followed order
//! again).

mod streams;

pub use crate::pb;
// What users of the SDK name, whichever crate defines it.
pub use grpc_platform::client::{
    CallMetadata, Error, FileToken, FnToken, RetryPolicy, StaticToken, TRANSPARENT_RETRIES,
    TokenProvider, never_sent,
};
pub use grpc_platform::codes::code_name;
pub use streams::{OrderWatch, RESUME_ATTEMPTS, Tracker};

use grpc_platform::client::{Connection, ConnectionBuilder};
use pb::order_service_client::OrderServiceClient;
use std::future::Future;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

type Inner = OrderServiceClient<InterceptedService<Channel, CallMetadata>>;

/// The name of the service this client calls, as its proto declares it: the
/// health name a balancing client watches on each endpoint, which a server
/// reports for every service it mounts.
const SERVICE_NAME: &str = pb::order_service_server::SERVICE_NAME;

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
pub struct ClientBuilder(ConnectionBuilder);

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
    pub fn ca_certificate(self, pem: impl Into<Vec<u8>>) -> Self {
        Self(self.0.ca_certificate(pem))
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
    pub fn tls_domain(self, domain: impl Into<String>) -> Self {
        Self(self.0.tls_domain(domain))
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
        self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        Self(self.0.client_identity(cert_pem, key_pem))
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
        Self(self.0.token(token))
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
    pub fn token_provider(self, provider: impl TokenProvider) -> Self {
        Self(self.0.token_provider(provider))
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
    pub fn timeout(self, timeout: Duration) -> Self {
        Self(self.0.timeout(timeout))
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
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        Self(self.0.connect_timeout(timeout))
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
    pub fn keepalive(self, interval: Option<Duration>) -> Self {
        Self(self.0.keepalive(interval))
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
    pub fn gzip(self, on: bool) -> Self {
        Self(self.0.gzip(on))
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
    pub fn retry(self, policy: RetryPolicy) -> Self {
        Self(self.0.retry(policy))
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
    pub fn health_checks(self, on: bool) -> Self {
        Self(self.0.health_checks(on))
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
    pub fn endpoint(self, endpoint: impl Into<String>) -> Self {
        Self(self.0.endpoint(endpoint))
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
        Ok(Client::over(self.0.connect().await?))
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
    /// The channel, token, deadline, retry policy and gzip setting.
    conn: Connection,
    /// The generated client over `conn`'s intercepted channel.
    inner: Inner,
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
        ClientBuilder(Connection::builder(endpoint, SERVICE_NAME))
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
        ClientBuilder(Connection::builder_dns(host, port, every, SERVICE_NAME))
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
        Ok(Self::over(Connection::from_channel(
            channel, token, timeout,
        )?))
    }

    /// The typed client over `conn`, compressing as it says.
    fn over(conn: Connection) -> Self {
        let inner = OrderServiceClient::new(conn.intercepted());
        let inner = match conn.compression() {
            Some(encoding) => inner.send_compressed(encoding).accept_compressed(encoding),
            None => inner,
        };
        Self { conn, inner }
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
        Ok(Self::over(self.conn.with_token(token)?))
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
            conn: self.conn.with_timeout(timeout),
            inner: self.inner.clone(),
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
            conn: self.conn.with_retry(policy),
            inner: self.inner.clone(),
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
        self.conn.channel()
    }

    /// Runs a unary call within this client's deadline (retries included),
    /// retrying on UNAVAILABLE when `safe`; a call that never left the client
    /// is sent again whatever it is ([`never_sent`]).
    async fn unary<T, R, F, Fut>(&self, safe: bool, message: T, call: F) -> Result<R, Error>
    where
        T: Clone,
        F: FnMut(Inner, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.conn.unary(&self.inner, safe, message, call).await
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
            .ok_or_else(|| Error::Protocol("RegisterOrder answered without an order".into()))
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
            request.request_id = uuid::Uuid::now_v7().to_string();
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
        request.set_timeout(self.conn.timeout());
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
        self.conn.health(service).await
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
