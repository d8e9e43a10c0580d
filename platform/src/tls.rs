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
//! With `tls.client_ca` set, [`ClientIdentityLayer`] puts a
//! [`ClientIdentity`] (the verified client certificate's subject) into every
//! request's extensions; handlers read it from `request.extensions()`, the
//! access log with [`client_identity`].
//!
//! # Connection limits
//!
//! [`incoming`] bounds the handshake ([`ConnLimits::handshake_timeout`]) and
//! closes connections on which nothing moves for
//! [`ConnLimits::idle_timeout`] ([`IdleTimeout`] says what that does and
//! does not catch).

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// The default handshake bound (`server.handshake_timeout_secs`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_certs(path: &Path, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: invalid PEM", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate found",
        path.display()
    );
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            anyhow::bail!("{}: no private key found", path.display())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("{}: invalid PEM", path.display()))),
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    parse_certs(path, &read(path)?)
}

pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    parse_key(path, &read(path)?)
}

/// `not_after` of a DER certificate, in Unix seconds.
pub fn not_after(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("unparsable certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The files a TLS configuration is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The contents of [`TlsFiles`], read once so the digest and the parsed
/// configuration describe the same bytes.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> anyhow::Result<Self> {
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.cert, &self.key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        if let Some(ca) = &self.client_ca {
            h.update(b"ca");
            h.update((ca.len() as u64).to_be_bytes());
            h.update(ca);
        }
        h.finalize().into()
    }
}

/// A validated configuration and what we report about it.
struct Built {
    config: rustls::ServerConfig,
    not_after: i64,
}

/// The rustls server configuration: TLS 1.2/1.3 (rustls' safe defaults),
/// ALPN `h2` (gRPC needs it), client certificates required when `client_ca`
/// is set. Refuses a key that does not match the certificate and an expired
/// certificate, naming the file.
fn build(files: &TlsFiles, contents: &Contents) -> anyhow::Result<Built> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in parse_certs(path, pem).context("tls.client_ca")? {
                roots.add(c).with_context(|| {
                    format!("tls.client_ca: {}: unusable CA certificate", path.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .with_context(|| format!("tls.client_ca: {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let chain = parse_certs(&files.cert, &contents.cert).context("tls.cert")?;
    let key = parse_key(&files.key, &contents.key).context("tls.key")?;
    let not_after =
        not_after(&chain[0]).with_context(|| format!("tls.cert: {}", files.cert.display()))?;
    let now = chrono::Utc::now().timestamp();
    anyhow::ensure!(
        not_after > now,
        "tls.cert: {}: certificate expired at {}",
        files.cert.display(),
        chrono::DateTime::from_timestamp(not_after, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| not_after.to_string())
    );
    // rustls checks that the key's public half matches the certificate's.
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "tls.cert / tls.key: {} and {} do not form a usable pair",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built { config, not_after })
}

/// The rustls server configuration for these files (loaded once, no reloads).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<rustls::ServerConfig> {
    let files = TlsFiles {
        cert: cert.into(),
        key: key.into(),
        client_ca: client_ca.map(Into::into),
    };
    Ok(build(&files, &Contents::read(&files)?)?.config)
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold the same bytes as last time.
    Unchanged,
    /// A new configuration is in service for new connections.
    Reloaded,
    /// The new files were refused; the last good configuration stays.
    Refused(anyhow::Error),
}

/// The TLS configuration in service, swapped when the files change.
pub struct CertState {
    files: TlsFiles,
    config: ArcSwap<rustls::ServerConfig>,
    not_after: AtomicI64,
    /// Digest of the contents last tried (in service, or refused).
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertState")
            .field("files", &self.files)
            .field("not_after", &self.expiry_unix())
            .finish()
    }
}

impl CertState {
    /// Loads the files; at start-up a bad set is an error (nothing to fall back on).
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let contents = Contents::read(&files)?;
        let built = build(&files, &contents)?;
        Ok(Arc::new(Self {
            config: ArcSwap::from_pointee(built.config),
            not_after: AtomicI64::new(built.not_after),
            seen: Mutex::new(contents.digest()),
            files,
        }))
    }

    /// The acceptor for the next connection (the configuration in service now).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// `not_after` of the certificate in service, in Unix seconds: the value
    /// of the `{name}_tls_cert_expiry_timestamp_seconds` metric.
    pub fn expiry_unix(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files and swaps in a new configuration if they changed
    /// and load. Blocks (file reads); logs nothing ([`CertState::watch`] does).
    pub fn reload(&self) -> Reload {
        let contents = match Contents::read(&self.files) {
            Ok(c) => c,
            // A file missing for a moment (mid-swap) or unreadable: keep serving.
            Err(e) => return Reload::Refused(e),
        };
        let digest = contents.digest();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == digest {
                return Reload::Unchanged;
            }
            *seen = digest;
        }
        match build(&self.files, &contents) {
            Ok(built) => {
                self.config.store(Arc::new(built.config));
                self.not_after.store(built.not_after, Ordering::Relaxed);
                Reload::Reloaded
            }
            Err(e) => Reload::Refused(e),
        }
    }

    /// Reloads every `every` until `stop` resolves (or for ever).
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: just loaded
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            // File reads and PEM parsing block; keep them off the runtime's workers.
            // Logged here, not in `reload`, so the lines come from this task.
            let state = self.clone();
            match tokio::task::spawn_blocking(move || state.reload()).await {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => tracing::info!(
                    cert = %self.files.cert.display(),
                    not_after = self.expiry_unix(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Ok(Reload::Refused(e)) => tracing::error!(
                    error = format!("{e:#}"),
                    "TLS reload refused: the last good certificate stays in service"
                ),
                Err(_) => tracing::error!("TLS reload panicked"),
            }
        }
    }
}

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

/// Who the client is, by its verified TLS certificate (mutual TLS only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate's subject, RFC 4514 style (`CN=shop-frontend, O=…`).
    pub subject: String,
}

impl ClientIdentity {
    /// The identity in a DER certificate (`None` if it does not parse; rustls
    /// has verified the chain already, so that does not happen in practice).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Self {
            subject: cert.subject().to_string(),
        })
    }
}

/// The client's identity, for the access log: set by [`ClientIdentityLayer`]
/// on mutual-TLS connections.
pub fn client_identity<B>(request: &http::Request<B>) -> Option<&ClientIdentity> {
    request.extensions().get::<ClientIdentity>()
}

/// Puts the verified client certificate's subject into the request's
/// extensions as a [`ClientIdentity`]. Sits outside auth so the identity is
/// there for every call, including refused ones (the access log wants it).
/// The certificate is parsed per call (a few microseconds); tonic gives no
/// per-connection hook that would let us parse it once.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentityLayer;

impl<S> Layer<S> for ClientIdentityLayer {
    type Service = ClientIdentitySvc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIdentitySvc { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ClientIdentitySvc<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ClientIdentitySvc<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let identity = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|leaf| ClientIdentity::from_der(leaf))
            });
        if let Some(identity) = identity {
            tracing::debug!(subject = %identity.subject, path = request.uri().path(), "client certificate");
            request.extensions_mut().insert(identity);
        }
        self.inner.call(request)
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
}

#[cfg(test)]
mod identity_layer_tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use tokio_stream::StreamExt;
    use tower_test::mock;

    type Request = http::Request<()>;
    type Response = http::Response<()>;

    fn call() -> Request {
        http::Request::builder()
            .uri("/things.v1.ThingService/GetThing")
            .body(())
            .unwrap()
    }

    /// The connection info of a mutual-TLS connection whose client
    /// certificate's common name is `client`, as the server sees it.
    async fn mutual_tls_connection(client: &str) -> TlsConnectInfo<TcpConnectInfo> {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let signed = |names: Vec<String>, cn: &str, usage| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &issuer).unwrap(), key)
        };
        let (server_cert, server_key) = signed(
            vec!["localhost".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = signed(vec![], client, ExtendedKeyUsagePurpose::ClientAuth);
        let file = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let state = CertState::load(TlsFiles {
            cert: file("server.pem", server_cert.pem()),
            key: file("server.key", server_key.serialize_pem()),
            client_ca: Some(file("ca.pem", ca_cert.pem())),
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(
            listener,
            state,
            ConnLimits {
                handshake_timeout: HANDSHAKE_TIMEOUT,
                idle_timeout: None,
            },
        );

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client_cert.der().clone()],
                PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .unwrap();
            // Held open until the server side has looked.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(tls);
        });
        let server = incoming.next().await.unwrap().unwrap();
        let info = server.connect_info();
        client.abort();
        info
    }

    #[tokio::test]
    async fn a_mutual_tls_call_carries_the_client_certificates_subject() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(ClientIdentityLayer);
        let mut request = call();
        request
            .extensions_mut()
            .insert(mutual_tls_connection("shop-frontend").await);
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request);
        let (inner, reply) = handle.next_request().await.unwrap();
        let identity = client_identity(&inner).expect("an identity");
        assert!(
            identity.subject.contains("CN=shop-frontend"),
            "{}",
            identity.subject
        );
        reply.send_response(http::Response::new(()));
        response.await.unwrap();
    }

    #[tokio::test]
    async fn a_call_without_a_client_certificate_passes_untouched_and_so_do_errors() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request, Response, _>(ClientIdentityLayer);
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(call());
        let (inner, reply) = handle.next_request().await.unwrap();
        assert!(client_identity(&inner).is_none());
        reply.send_error(tonic::Status::unavailable("gone"));
        let error = response.await.unwrap_err();
        assert_eq!(
            error.downcast_ref::<tonic::Status>().unwrap().message(),
            "gone"
        );
    }
}
