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

mod error;

pub use crate::pb;
pub use error::Error;

use pb::order_service_client::OrderServiceClient;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Inner = OrderServiceClient<InterceptedService<Channel, BearerToken>>;

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    ca: Option<Vec<u8>>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// Verify the server with this CA (PEM) instead of the system roots.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// The name to expect in the server's certificate (default: the endpoint's host).
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

    /// The bearer token sent with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The deadline of every call (sent as `grpc-timeout`). Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects (TLS when the endpoint is `https://`, or has no scheme).
    pub async fn connect(self) -> Result<Client, Error> {
        let uri = if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("https://{}", self.endpoint)
        };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::config(format!("invalid endpoint {uri:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if uri.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_enabled_roots(),
            };
            if let Some(domain) = &self.domain {
                tls = tls.domain_name(domain.clone());
            }
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::config(format!("TLS configuration: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(Error::connect)?;
        Client::from_channel(channel, self.token.as_deref(), self.timeout)
    }
}

/// A connection to the orders service. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    inner: Inner,
    timeout: Duration,
}

impl Client {
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            ca: None,
            domain: None,
            identity: None,
            token: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A client over an existing channel.
    pub fn from_channel(
        channel: Channel,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::config("the token has characters not allowed in metadata"))
            })
            .transpose()?;
        let inner = OrderServiceClient::with_interceptor(channel.clone(), BearerToken(header));
        Ok(Self {
            channel,
            inner,
            timeout,
        })
    }

    /// The same connection with another token.
    pub fn with_token(&self, token: &str) -> Result<Self, Error> {
        Self::from_channel(self.channel.clone(), Some(token), self.timeout)
    }

    /// The underlying channel, for other services on the same port.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Registers an order with a fresh `request_id`.
    pub async fn register_order(
        &self,
        items: Vec<pb::LineItem>,
        address: pb::Address,
    ) -> Result<pb::Order, Error> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let response = self
            .register(pb::RegisterOrderRequest {
                items,
                address: Some(address),
                request_id,
            })
            .await?;
        response
            .order
            .ok_or_else(|| Error::protocol("RegisterOrder answered without an order"))
    }

    /// Sends a `RegisterOrderRequest` as given.
    pub async fn register(
        &self,
        request: pb::RegisterOrderRequest,
    ) -> Result<pb::RegisterOrderResponse, Error> {
        Ok(self
            .inner
            .clone()
            .register_order(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn get_order(&self, order_id: &str) -> Result<pb::Order, Error> {
        let req = pb::GetOrderRequest {
            order_id: order_id.into(),
        };
        Ok(self
            .inner
            .clone()
            .get_order(self.request(req))
            .await?
            .into_inner())
    }

    /// One page.
    pub async fn list_orders(
        &self,
        request: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, Error> {
        Ok(self
            .inner
            .clone()
            .list_orders(self.request(request))
            .await?
            .into_inner())
    }

    /// Every page, following `next_page_token`.
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

    pub async fn cancel_order(
        &self,
        order_id: &str,
        expected_version: i64,
    ) -> Result<pb::Order, Error> {
        let req = pb::CancelOrderRequest {
            order_id: order_id.into(),
            expected_version,
        };
        Ok(self
            .inner
            .clone()
            .cancel_order(self.request(req))
            .await?
            .into_inner())
    }

    pub async fn advance_order(
        &self,
        order_id: &str,
        expected_version: i64,
    ) -> Result<pb::Order, Error> {
        let req = pb::AdvanceOrderRequest {
            order_id: order_id.into(),
            expected_version,
        };
        Ok(self
            .inner
            .clone()
            .advance_order(self.request(req))
            .await?
            .into_inner())
    }

    /// Streams the addresses as one `UpdateOrder` call (applied all or none).
    pub async fn update_order(
        &self,
        order_id: &str,
        addresses: Vec<pb::Address>,
    ) -> Result<pb::UpdateOrderResponse, Error> {
        let messages: Vec<pb::UpdateOrderRequest> = addresses
            .into_iter()
            .map(|a| pb::UpdateOrderRequest {
                order_id: order_id.into(),
                address: Some(a),
            })
            .collect();
        self.update_stream(tokio_stream::iter(messages)).await
    }

    /// `UpdateOrder` with any stream of messages.
    pub async fn update_stream(
        &self,
        messages: impl tokio_stream::Stream<Item = pb::UpdateOrderRequest> + Send + 'static,
    ) -> Result<pb::UpdateOrderResponse, Error> {
        Ok(self
            .inner
            .clone()
            .update_order(self.request(messages))
            .await?
            .into_inner())
    }

    /// Events of one order: the current version (or those after
    /// `after_version`), then every change until it is final. No deadline:
    /// a watch lasts as long as the order lives.
    pub async fn watch_order(
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

    /// Follows many orders on one stream; send subscribe/unsubscribe requests.
    pub async fn track_orders(
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

    /// `grpc.health.v1.Health/Check` on the same connection (no token needed).
    pub async fn health(&self, service: &str) -> Result<ServingStatus, Error> {
        let mut client = HealthClient::new(self.channel.clone());
        let req = HealthCheckRequest {
            service: service.into(),
        };
        let status = client.check(self.request(req)).await?.into_inner().status;
        Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
    }
}
