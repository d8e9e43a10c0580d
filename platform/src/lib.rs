//! # grpc-platform
//!
//! The secure gRPC stack a service is built on. It knows no service: a
//! service is mounted with its encoded file descriptor set, and everything
//! the stack needs to know about its methods (how each streams, who may call
//! it) is read from there when the server starts.
//!
//! A request travels: TLS ([`tls`], between it and HTTP/2 the
//! `goaway_guard`) → the connection loop ([`serve`]: age, GOAWAY, drain)
//! → the tower layers ([`middleware`], authorization in [`auth`]) → the
//! service's handlers.
//!
//! - [`server`]: the server a service is mounted on: `ServerBuilder` →
//!   `Server::run_until_stopped`.
//! - [`methods`]: the method table. Authorization is declared in the proto
//!   with the `grpc_platform.v1.access` method option
//!   ([`PROTO_INCLUDE_DIR`]) and closed by default: a mounted method that
//!   declares no policy stops the start, and a path nobody mounted needs a
//!   valid token like any other call.
//! - [`auth`]: bearer JWTs checked against rotating keys; the layer.
//! - [`health`] and the admin port (`admin`): probes and readiness, and the plaintext
//!   admin port (health and `GET /metrics`).
//! - [`telemetry`] (with `log_json` and `log_writer`): logs, traces,
//!   metrics.
//! - [`config`]: the configuration core: the platform's sections, layering
//!   with the service's environment prefix, validation, redaction, exit 78.
//! - [`program`]: the command line every service's server binary shares
//!   (`serve`, `check-config`, `dev-certs`, `dev-token`), so its `main` is
//!   one line.
//! - [`dev`]: development certificates and tokens.
//! - [`shutdown`]: the signals that start a graceful shutdown.
//! - [`streams`]: server streams that end with UNAVAILABLE when the server
//!   drains or their connection reaches its maximum age.
//! - [`codes`]: gRPC code names.
//!
//! The client side ([`client`], feature `client`): a channel to a service's
//! endpoints (TLS, balancing with client-side health checks, DNS), the token
//! and trace context on every call, deadlines and retries, the client's
//! error. A service's typed client is built on it.
#![forbid(unsafe_code)]
// Only what a service author or a client's user needs is `pub`; the rest
// says `pub(crate)`, so this lint keeps the public face from growing by
// accident.
#![warn(unreachable_pub)]

pub mod codes;
pub mod methods;

#[cfg(feature = "build")]
pub mod build;
#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod dev;
#[cfg(feature = "server")]
mod goaway_guard;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
mod log_json;
#[cfg(feature = "server")]
mod log_writer;
#[cfg(feature = "server")]
pub mod middleware;
#[cfg(feature = "server")]
pub mod program;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod shutdown;
#[cfg(feature = "server")]
pub mod streams;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod web;

#[cfg(feature = "test-support")]
pub mod test_support;
#[cfg(test)]
mod testing;

/// The folder holding `grpc_platform/v1/access.proto`: a service's build
/// script passes it to protoc as an include path, beside its own protos.
pub const PROTO_INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

/// The encoded file descriptor set a service's build script wrote with
/// `build::compile_protos` (feature `build`), as a `&'static [u8]`: what
/// `ServerBuilder::mount` reads each method's kind and access from.
#[macro_export]
macro_rules! descriptor_set {
    () => {
        include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))
    };
}
