//! The idle timeout of a connection, at the byte level.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Closes a connection on which no byte has been read or written for the
/// idle timeout, by failing its next read with `TimedOut` (hyper then drops
/// the connection).
///
/// Hand-written because neither tonic nor hyper offer an idle timeout for
/// HTTP/2 servers. It works at the byte level, which is what it can see:
/// HTTP/2 keepalive PINGs (`server.keepalive_interval_secs`) count as
/// traffic, so with keepalive on a live client that answers PINGs is never
/// idle here (`server.max_connection_age_secs` bounds those); the timeout
/// catches peers that fall silent, and is the only reaper of dead peers when
/// keepalive is off (then a stream with no messages for that long is closed
/// too).
pub struct IdleTimeout<T> {
    inner: T,
    timeout: Option<Duration>,
    last_activity: Instant,
    /// Armed at `last_activity + timeout`, re-armed lazily when it fires
    /// early (cheaper than resetting a timer on every read).
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        // Never firing: a far deadline (a year) rather than an Option in the poll path.
        let first = now + timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600));
        Self {
            inner,
            timeout,
            last_activity: now,
            deadline: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last_activity + timeout;
            if Instant::now() >= due {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle",
                ));
            }
            self.deadline.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_idle(cx) {
                Poll::Ready(e) => {
                    tracing::debug!("closing an idle connection");
                    Poll::Ready(Err(e))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.last_activity = Instant::now();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Keeps tonic's `TcpConnectInfo` (so `Request::remote_addr` and
/// `TlsConnectInfo<TcpConnectInfo>` work as without the wrapper).
impl Connected for IdleTimeout<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
