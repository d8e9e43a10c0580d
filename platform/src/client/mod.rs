//! The client side of the stack (feature `client`): what a typed client of a
//! service needs besides its generated code.
//!
//! - [`Connection`] (made by a [`ConnectionBuilder`]): a tonic `Channel` to
//!   one endpoint, to several balanced, or to every address of a DNS name,
//!   with TLS (a CA, the name to expect, a client identity for mTLS), a
//!   connect timeout, keepalive, a default deadline per call and gzip.
//!   Balanced endpoints are in rotation only while their
//!   `grpc.health.v1.Health` reports SERVING for the service the client
//!   calls (client-side health checking, gRFC A17).
//! - [`CallMetadata`]: the interceptor that puts each call's bearer token
//!   (from a [`TokenProvider`]: [`StaticToken`], [`FileToken`], [`FnToken`])
//!   and the caller's trace context on it.
//! - [`RetryPolicy`]: backoff, attempts and a retry budget;
//!   [`Connection::unary`] runs a call within its deadline, retrying it when
//!   the typed client says it is safe to repeat, and sending again, whatever
//!   it is, a call that never left the client ([`never_sent`]).
//! - [`Resumed`] and [`Subscriptions`]: streams that survive a server going
//!   away. A server stream that can start after a position ([`Resumable`])
//!   is reopened after the last item passed on; a bidirectional stream of
//!   subscriptions ([`Subscribable`]) is reopened with every key still
//!   followed subscribed again. Both back off with the [`RetryPolicy`] and
//!   give up after a number of failed reconnects in a row.
//! - [`Error`]: a failed call (its status, with the rich details read out)
//!   or a client that could not be set up.
//!
//! A typed client wraps a `Connection` and its generated client, built over
//! [`Connection::intercepted`], and implements [`Resumable`] or
//! [`Subscribable`] for the streams it resumes. The service's name, which
//! the health checks watch, comes from the generated code (the server
//! module's `SERVICE_NAME`), so it follows the proto.
//!
//! ```no_run
//! # async fn demo() -> Result<(), grpc_platform::client::Error> {
//! use grpc_platform::client::{Connection, RetryPolicy};
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//! let connection = Connection::builder("https://things.example.com:50051", "things.v1.ThingService")
//!     .ca_certificate(std::fs::read("ca.pem").unwrap())
//!     .token("eyJ...")
//!     .retry(RetryPolicy::default().max_attempts(3))
//!     .connect()
//!     .await?;
//! // Any generated client goes over the intercepted channel; the health
//! // service's stands for a service's own here.
//! let stub = HealthClient::new(connection.intercepted());
//! let request = HealthCheckRequest { service: "things.v1.ThingService".into() };
//! let reply = connection
//!     .unary(&stub, true, request, |mut c, r| async move { c.check(r).await })
//!     .await?;
//! # Ok(()) }
//! ```

mod balance;
mod connection;
mod discovery;
mod error;
mod metadata;
mod resume;
mod retry;
mod token;

pub use connection::{Connection, ConnectionBuilder};
pub use error::Error;
pub use metadata::CallMetadata;
pub use resume::{Requests, Resumable, Resumed, Subscribable, Subscriptions};
pub use retry::{RetryPolicy, TRANSPARENT_RETRIES, never_sent, retryable};
pub use token::{FileToken, FnToken, StaticToken, TokenProvider};
