//! Serving connections: accept, connection age with a real graceful phase,
//! and draining. HTTP/2 for gRPC; HTTP/1.1 too, when TLS negotiated it
//! (ALPN), for the browsers and ingresses that call with gRPC-Web or
//! Connect over it.
//!
//! Written here rather than taken from `tonic::transport::Server`, because
//! tonic's connection loop gets connection age wrong in the way that
//! matters: with `max_connection_age_grace` set it never starts the graceful
//! phase, it waits out age + grace and then drops the connection with calls
//! in flight (tonic 0.14.5 to 0.14.9, `connection_timeout_future`), so every
//! recycled connection fails the calls it carries with UNKNOWN; without a
//! grace, a connection held open by a stream never closes. gRFC A9 asks for
//! GOAWAY at the (per-connection jittered) age, then a hard close once the
//! grace has passed; that is what [`serve`] does, on hyper's HTTP/2 server,
//! with tonic's routes and our middleware as the service.
//!
//! hyper's graceful shutdown is the two-step GOAWAY of RFC 9113 §6.8: a
//! GOAWAY with the largest stream id and a PING, then, once the PING is
//! answered, a GOAWAY naming the last stream the server will process. Calls
//! in flight finish; calls the client sent after that are refused without
//! having been seen, so clients may send them again elsewhere. h2 turns one
//! frame of those refused calls into a connection error;
//! `crate::goaway_guard` drops it first.

use crate::goaway_guard::GoawayGuard;
use crate::middleware::caller_quota::ConnectionCalls;
use crate::tls::PeerIdentity;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::transport::server::Connected;
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How connections are served: HTTP/2, and HTTP/1.1 where TLS's ALPN chose
/// it, if HTTP/1.1 is served at all (`None`: such a connection is closed).
#[derive(Clone)]
pub struct Protocols {
    pub http2: http2::Builder<TokioExecutor>,
    pub http1: Option<http1::Builder>,
}

/// Whether a connection speaks HTTP/1.1: what its TLS handshake negotiated.
/// ALPN `h2` is HTTP/2, as every gRPC client over TLS asks for it; `http/1.1`
/// or no ALPN at all is HTTP/1.1, which is what a TLS client that names no
/// protocol speaks (Node's `https`, many HTTP libraries). A plaintext
/// connection is HTTP/2 with prior knowledge, as gRPC clients speak it
/// without TLS.
pub trait Negotiated {
    fn http1(&self) -> bool;
}

impl<T> Negotiated for tokio_rustls::server::TlsStream<T> {
    fn http1(&self) -> bool {
        self.get_ref().1.alpn_protocol() != Some(b"h2")
    }
}

impl Negotiated for tokio::net::TcpStream {
    fn http1(&self) -> bool {
        false
    }
}

/// A connection that can be asked to finish its requests and close:
/// hyper's HTTP/2 and HTTP/1.1 connections alike.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self)
    }
}

/// gRFC A9 connection management: after `max` (jittered by ±10% per
/// connection, so connections opened together do not all recycle together)
/// the connection is asked to go away; after a further `grace` it is closed
/// whatever it still carries.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionAge {
    pub max: Duration,
    pub grace: Duration,
}

impl ConnectionAge {
    /// This connection's age limit: `max` ± 10% at random.
    fn jittered(&self) -> Duration {
        use rand::Rng;
        self.max.mul_f64(rand::rng().random_range(0.9..=1.1))
    }
}

/// In every request's extensions: turns when the request's connection is
/// asked to go away at its maximum age. Streams that would otherwise run
/// until the grace cuts them off end then (UNAVAILABLE), so their clients
/// resume on a fresh connection at once.
#[derive(Debug, Clone)]
pub struct ConnectionRecycled(watch::Receiver<bool>);

impl ConnectionRecycled {
    /// Resolves once the connection is going away (or gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|recycled| *recycled).await;
    }
}

/// Serves `service` on every connection `incoming` yields until `drain`
/// resolves; then stops accepting (dropping `incoming`, and with it the
/// listening socket, so new connections are refused at once and go to
/// another replica), asks every connection to go away, and returns once all
/// of them have closed. The caller bounds that wait (calls that never end
/// would hold it up for ever) by dropping this future; the remaining
/// connections then close when the runtime shuts down.
pub async fn serve<I, IO, IE, S, ResBody>(
    incoming: I,
    service: S,
    protocols: Protocols,
    age: Option<ConnectionAge>,
    drain: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, IE>>,
    IE: std::fmt::Display,
    IO: AsyncRead + AsyncWrite + Connected + Negotiated + Unpin + Send + 'static,
    IO::ConnectInfo: PeerIdentity,
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    // Every connection holds a receiver: `closed()` resolves when the last
    // connection is gone.
    let (going_away, going_away_rx) = watch::channel(false);
    {
        let mut incoming = pin!(incoming);
        let mut drain = pin!(drain);
        loop {
            let io = tokio::select! {
                _ = &mut drain => break,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(err)) => {
                        tracing::debug!(error = %err, "connection not accepted");
                        continue;
                    }
                    None => break,
                },
            };
            tokio::spawn(serve_connection(
                io,
                service.clone(),
                protocols.clone(),
                age,
                going_away_rx.clone(),
            ));
        }
    }
    drop(going_away_rx);
    let _ = going_away.send(true);
    going_away.closed().await;
}

/// A request body that breaks (the client reset the stream, or its
/// connection closed or broke the protocol) means the client has gone: the
/// handler reading it ends with CANCELLED, as a call dropped by a client's
/// cancel is recorded, not with UNKNOWN.
fn client_went_away(err: hyper::Error) -> tonic::Status {
    tonic::Status::cancelled(format!("the client's request stream broke: {err}"))
}

async fn serve_connection<IO, S, ResBody>(
    io: IO,
    service: S,
    protocols: Protocols,
    age: Option<ConnectionAge>,
    going_away: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Connected + Negotiated + Unpin + Send + 'static,
    IO::ConnectInfo: PeerIdentity,
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    // What tonic's own server puts in every request: handlers and the
    // access log read the peer address and the client certificate from it.
    let info = io.connect_info();
    // The client certificate's subject, read once for the connection's
    // whole life (a mutual-TLS client cannot change it mid-connection).
    let identity = crate::tls::of_connection(&info);
    let (recycle, recycled) = watch::channel(false);
    let recycled = ConnectionRecycled(recycled);
    // The connection's calls without a subject, which the quota layer
    // bounds (`server.max_anonymous_calls_per_connection`): one counter
    // for the connection's life, a reference count per request.
    let anonymous = ConnectionCalls::default();
    let per_request = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let mut request = request.map(|body| Body::new(body.map_err(client_went_away)));
        request.extensions_mut().insert(info.clone());
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        request.extensions_mut().insert(recycled.clone());
        request.extensions_mut().insert(anonymous.clone());
        // The stack is called in the stream's own task, as tonic's server
        // does: hyper calls this closure on the connection's task, which
        // reads the frames of all its streams, so the layers' work there (a
        // token check, the handler's setup) would hold up the connection's
        // other calls, and a panic would end them all. Boxed: hyper moves
        // the future into that task, and unboxed it carries the stack's
        // copy and the request.
        let call: BoxFuture<'static, _> = Box::pin(service.clone().oneshot(request));
        async move {
            Ok::<_, Infallible>(match call.await {
                Ok(response) => response.map(Body::new),
                // Our layers answer failures as gRPC statuses themselves;
                // whatever still arrives as an error gets a status too
                // (what tonic's `RecoverError` does), not a stream reset.
                Err(err) => tonic::Status::from_error(err.into()).into_http(),
            })
        }
    });
    if io.http1() {
        let Some(http1) = &protocols.http1 else {
            tracing::debug!(
                "HTTP/1.1 is not served (server.web_protocols = false): connection closed"
            );
            return;
        };
        let conn = http1.serve_connection(TokioIo::new(io), per_request);
        drive(pin!(conn), age, going_away, recycle).await;
    } else {
        // The guard keeps h2 from killing the connection's calls at GOAWAY
        // (see its module doc); it reads HTTP/2 frames, so HTTP/2 only.
        let io = GoawayGuard::new(io);
        let conn = protocols
            .http2
            .serve_connection(TokioIo::new(io), per_request);
        drive(pin!(conn), age, going_away, recycle).await;
    }
}

/// Runs `conn` to its end: asked to go away at its (jittered) age or when
/// the server stops, and closed whatever it carries once the grace after
/// its age has passed.
async fn drive<C: Graceful>(
    mut conn: std::pin::Pin<&mut C>,
    age: Option<ConnectionAge>,
    mut going_away: watch::Receiver<bool>,
    recycle: watch::Sender<bool>,
) {
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let goaway_at = age.map_or(far, |age| Instant::now() + age.jittered());
    let mut timer = pin!(sleep_until(goaway_at));
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            _ = &mut timer => {
                if closing {
                    tracing::debug!("connection still busy after its grace: closed");
                    return;
                }
                let grace = age.map_or(Duration::ZERO, |age| age.grace);
                tracing::debug!(grace_secs = grace.as_secs(), "connection reached its maximum age: GOAWAY");
                conn.as_mut().graceful_shutdown();
                let _ = recycle.send(true);
                closing = true;
                timer.as_mut().reset(Instant::now() + grace);
            }
            changed = going_away.changed(), if !closing => {
                // The server is stopping (`changed` fails once the sender is
                // gone, which also means stopping). Its own grace bounds the
                // wait, so this connection's timer no longer matters.
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                closing = true;
                timer.as_mut().reset(far);
            }
        }
    }
}
