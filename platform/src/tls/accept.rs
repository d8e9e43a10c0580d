//! Accepting connections: TLS handshakes off the accept loop, each bounded
//! in time, each taking the configuration in service at that moment.

use super::idle::IdleTimeout;
use super::reload::CertState;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The default handshake bound (`server.handshake_timeout_secs`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection limits applied by [`incoming`].
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A client that has not finished its handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A connection on which no byte moves for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: None,
        }
    }
}

/// Accepts TCP connections and yields them once their TLS handshake is done.
/// Each handshake takes the configuration in service at that moment.
/// Ends (and closes the listener) when the consumer drops the stream.
pub fn incoming(
    listener: TcpListener,
    state: Arc<CertState>,
    limits: ConnLimits,
) -> ReceiverStream<Result<TlsStream<IdleTimeout<TcpStream>>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = state.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let io = IdleTimeout::new(tcp, limits.idle_timeout);
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext connections (only where `tls.enabled = false`).
pub fn plaintext_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = Result<TcpStream, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(tcp) = &conn {
            let _ = tcp.set_nodelay(true);
        }
        conn
    })
}
