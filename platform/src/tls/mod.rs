//! TLS for the gRPC port, with rustls directly rather than tonic's built-in
//! `ServerTlsConfig`: owning the acceptor lets the handshake run off the
//! accept loop (a slow client cannot stall others), bounds handshake time,
//! and lets us swap certificates at run time.
//!
//! # Certificate rotation
//!
//! [`CertState`] holds the whole rustls `ServerConfig` in an `ArcSwap`; every
//! new connection takes the current one. A background task
//! ([`CertState::watch`]) re-reads `tls.cert`, `tls.key` and `tls.client_ca`
//! every `tls.reload_secs` and, when the bytes changed, builds and swaps in a
//! new configuration.
//!
//! Why swap the whole `ServerConfig` rather than implement
//! `ResolvesServerCert` over an `ArcSwap<CertifiedKey>`: the client-CA
//! verifier is fixed inside a `ServerConfig`, so rotating `tls.client_ca`
//! needs a new `ServerConfig` anyway. One swappable config covers certificate,
//! key and CA with one reload path, one validation step and one atomic switch
//! (a connection never sees a new certificate with an old CA or the reverse).
//! Connections already open keep the `Arc` of the config they started with,
//! so they are untouched by a swap.
//!
//! Changes are detected by a SHA-256 of the file contents, not by mtime: a
//! Kubernetes Secret volume updates by swapping the `..data` symlink, so the
//! path and the symlink's own mtime stay the same while the target changes.
//! A new set that does not load (unparsable PEM, a key that does not match
//! the certificate, an expired certificate, a half-written file) is refused
//! with an error log naming the file, and the last good set stays in service.
//! A refused set is tried again only when the bytes change again (so a bad
//! file logs once, not every tick).
//!
//! # Client identity (mutual TLS)
//!
//! With `tls.client_ca` set, the connection loop ([`crate::serve`]) reads
//! the verified client certificate's subject once per connection
//! ([`PeerIdentity`]) and puts it, as a [`ClientIdentity`], into every
//! request's extensions on that connection; handlers read it with
//! [`client_identity`] or from `request.extensions()`.
//!
//! # Connection limits
//!
//! [`incoming`] bounds the handshake ([`ConnLimits::handshake_timeout`]) and
//! closes connections on which nothing moves for
//! [`ConnLimits::idle_timeout`] ([`IdleTimeout`] says what that does and
//! does not catch).
//!
//! The parts: `pem` (reading certificates and keys), `reload` (the
//! configuration in service and its rotation), `accept` (the listener and
//! the handshake), `idle` (the idle timeout) and `identity` (who the client
//! is).

mod accept;
mod identity;
mod idle;
mod pem;
mod reload;

pub use accept::{ConnLimits, HANDSHAKE_TIMEOUT, incoming, plaintext_incoming};
pub(crate) use identity::of_connection;
pub use identity::{ClientIdentity, PeerIdentity, client_identity};
pub use idle::IdleTimeout;
pub use pem::{load_certs, load_key, not_after};
pub use reload::{CertState, Reload, TlsFiles, server_config};
