//! Who the client is, by its verified TLS certificate (mutual TLS only).
//!
//! The certificate is parsed once per connection, by the connection loop
//! ([`crate::serve`]), through [`PeerIdentity`]: every call on that
//! connection then carries the same [`ClientIdentity`] (a reference count,
//! not a parse). rustls has verified the chain during the handshake, so what
//! is read here is what the client proved.

use std::sync::Arc;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The verified client certificate's subject, in every request's extensions
/// on a mutual-TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate's subject, RFC 4514 style (`CN=shop-frontend, O=…`).
    pub subject: Arc<str>,
}

impl ClientIdentity {
    /// The identity in a DER certificate (`None` if it does not parse; rustls
    /// has verified the chain already, so that does not happen in practice).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Self {
            subject: cert.subject().to_string().into(),
        })
    }
}

/// The client's identity, for handlers and the access log: present on
/// mutual-TLS connections.
pub fn client_identity<B>(request: &http::Request<B>) -> Option<&ClientIdentity> {
    request.extensions().get::<ClientIdentity>()
}

/// The identity of a connection's client, read once when the connection
/// starts (and logged at debug, with the subject).
pub(crate) fn of_connection(info: &impl PeerIdentity) -> Option<ClientIdentity> {
    let identity = info.peer_identity();
    if let Some(identity) = &identity {
        tracing::debug!(subject = %identity.subject, "client certificate");
    }
    identity
}

/// What a connection's `ConnectInfo` says about the client: the identity in
/// its leaf certificate, if it presented one. Asked once per connection.
pub trait PeerIdentity {
    fn peer_identity(&self) -> Option<ClientIdentity>;
}

/// Plaintext: no certificate, no identity.
impl PeerIdentity for TcpConnectInfo {
    fn peer_identity(&self) -> Option<ClientIdentity> {
        None
    }
}

impl PeerIdentity for TlsConnectInfo<TcpConnectInfo> {
    fn peer_identity(&self) -> Option<ClientIdentity> {
        let leaf = self.peer_certs()?.first().cloned()?;
        ClientIdentity::from_der(&leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_the_certificate_subject() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shop-frontend");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Supermarket");
        let cert = params.self_signed(&key).unwrap();
        let id = ClientIdentity::from_der(cert.der()).unwrap();
        assert!(id.subject.contains("CN=shop-frontend"), "{}", id.subject);
        assert!(id.subject.contains("O=Supermarket"), "{}", id.subject);
        assert_eq!(ClientIdentity::from_der(b"garbage"), None);
    }

    #[test]
    fn a_plaintext_connection_has_no_identity() {
        let info = TcpConnectInfo {
            local_addr: None,
            remote_addr: Some("127.0.0.1:1".parse().unwrap()),
        };
        assert_eq!(info.peer_identity(), None);
    }
}
