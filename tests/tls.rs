//! Transport security: mutual TLS, certificate rotation without a
//! restart (the way Kubernetes updates a Secret volume), invalid certificates
//! kept out, and the expiry value the metric publishes.

mod common;

use common::*;
use orders::config::Settings;
use orders::sdk::Client;
use orders::startup::Application;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn leaf(&self, cn: &str, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_with(cn, purpose, |_| {})
    }

    fn leaf_with(
        &self,
        cn: &str,
        purpose: ExtendedKeyUsagePurpose,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Orders Test");
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        edit(&mut params);
        Leaf {
            cert: params.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, cn: &str) -> Leaf {
        self.leaf(cn, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

/// A folder laid out as a Kubernetes Secret volume: `tls.crt` and `tls.key`
/// are symlinks into `..data/`, itself a symlink to a timestamped folder.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: usize,
}

impl SecretVolume {
    fn new(cert: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut vol = Self { dir, generation: 0 };
        vol.update(cert, key);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), vol.dir.path().join(name))
                .unwrap();
        }
        vol
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// What the kubelet does: write a new timestamped folder, point
    /// `..data_tmp` at it, and rename that over `..data` (atomic).
    fn update(&mut self, cert: &str, key: &str) {
        self.generation += 1;
        let name = format!(
            "..2026_11_22_03_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        let target = self.dir.path().join(&name);
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("tls.crt"), cert).unwrap();
        std::fs::write(target.join("tls.key"), key).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

/// A server this file runs itself, to reach its TLS state.
struct Running {
    addr: SocketAddr,
    state: Arc<grpc_platform::tls::CertState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(settings: Settings) -> Self {
        let app = Application::build(settings).await.expect("server builds");
        let addr = app.local_addr();
        let state = app.tls_state().expect("TLS is on");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// Settings serving the certificate in `vol`, re-read every second.
fn rotating_settings(certs: &Certs, backend: &Backend, vol: &SecretVolume) -> Settings {
    let mut s = settings(certs, backend);
    s.tls.cert = Some(vol.cert());
    s.tls.key = Some(vol.key());
    s.tls.reload_interval = Duration::from_secs(1);
    s
}

/// Opens a fresh TLS connection (trusting `ca_pem`) and returns the subject
/// CN of the certificate the server presents.
async fn served_cn(addr: SocketAddr, ca_pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until new connections are served `cn` (at most 10 s).
async fn until_served(addr: SocketAddr, ca_pem: &str, cn: &str) {
    let start = Instant::now();
    loop {
        let now = served_cn(addr, ca_pem).await;
        if now == cn {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still serving {now:?} 10 s after switching to {cn:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cert_not_after(pem: &str) -> i64 {
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    grpc_platform::tls::not_after(&der).unwrap()
}

async fn client_for(addr: SocketAddr, ca_pem: &str, token: &str) -> Client {
    Client::builder(format!("https://localhost:{}", addr.port()))
        .ca_certificate(ca_pem.as_bytes().to_vec())
        .token(token)
        .connect()
        .await
        .expect("client connects")
}

/// Makes one authenticated call; `Err` says why it could not.
async fn one_call(builder: orders::sdk::ClientBuilder) -> Result<(), String> {
    let client = builder
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    client
        .register(register_request(""))
        .await
        .map(|_| ())
        .map_err(|e| format!("call: {e}"))
}

/// Collects log lines written while a test runs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's logs matching `filter` while the guard lives.
    /// On a current-thread runtime (`#[tokio::test]`) the server's tasks run
    /// on this thread, so their logs are caught.
    fn capture(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The logs so far, forgetting them.
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

#[tokio::test]
async fn mutual_tls_lets_in_only_clients_with_a_certificate_from_the_configured_ca() {
    let (logs, _guard) = Logs::capture("grpc_platform::tls=debug");

    let clients_ca = Ca::new("orders clients CA");
    let other_ca = Ca::new("somebody else's CA");
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, &clients_ca.pem).unwrap();
    let certs = Arc::new(Certs::new());
    let server = TestServer::start_with(certs.clone(), Backend::sqlite(), |s| {
        s.tls.client_ca = Some(ca_file.clone());
    })
    .await;
    let token = certs.token("alice", READ_WRITE);
    let base = || {
        Client::builder(server.endpoint())
            .ca_certificate(certs.ca())
            .token(token.clone())
    };

    let good = clients_ca.leaf("shop-frontend", ExtendedKeyUsagePurpose::ClientAuth);
    one_call(base().client_identity(good.cert.clone(), good.key.clone()))
        .await
        .expect("a client with a certificate from the configured CA is served");
    let text = logs.text();
    assert!(
        text.contains("CN=shop-frontend") && text.contains("client certificate"),
        "the client's subject is logged when its connection starts: {text}"
    );

    let refused = one_call(base()).await;
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );

    let stranger = other_ca.leaf("shop-frontend", ExtendedKeyUsagePurpose::ClientAuth);
    let refused = one_call(base().client_identity(stranger.cert, stranger.key)).await;
    assert!(
        refused.is_err(),
        "a client with a certificate from another CA was served"
    );

    // The server is unharmed.
    one_call(base().client_identity(good.cert, good.key))
        .await
        .expect("still serving");
    server.stop().await;
}

#[tokio::test]
async fn a_secret_volume_symlink_swap_reaches_new_connections_while_old_ones_keep_working() {
    let ca = Ca::new("orders rotation CA");
    let v1 = ca.server("orders-server-v1");
    let mut vol = SecretVolume::new(&v1.cert, &v1.key);
    let certs = Certs::new();
    let server = Running::start(rotating_settings(&certs, &Backend::sqlite(), &vol)).await;
    assert_eq!(served_cn(server.addr, &ca.pem).await, "orders-server-v1");
    assert_eq!(server.state.expiry_unix(), cert_not_after(&v1.cert));

    let old = client_for(server.addr, &ca.pem, &certs.token("alice", READ_WRITE)).await;
    let order = old
        .register(register_request(""))
        .await
        .unwrap()
        .order
        .unwrap();

    let v2 = ca.leaf_with(
        "orders-server-v2",
        ExtendedKeyUsagePurpose::ServerAuth,
        |p| p.not_after = rcgen::date_time_ymd(2090, 6, 1),
    );
    vol.update(&v2.cert, &v2.key);
    until_served(server.addr, &ca.pem, "orders-server-v2").await;
    assert_eq!(
        server.state.expiry_unix(),
        cert_not_after(&v2.cert),
        "the expiry value follows the reload"
    );
    assert_ne!(cert_not_after(&v1.cert), cert_not_after(&v2.cert));

    // The connection opened before the swap still completes calls.
    let again = old
        .get_order(&order.id)
        .await
        .expect("old connection works");
    assert_eq!(again.id, order.id);
    // And a new client trusts the new certificate.
    let new = client_for(server.addr, &ca.pem, &certs.token("alice", READ_WRITE)).await;
    new.get_order(&order.id).await.unwrap();

    // The reload task ends with the application: it drops its handle.
    let state = server.state.clone();
    server.stop().await;
    let start = Instant::now();
    while Arc::strong_count(&state) > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the reload task outlived the application"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_invalid_new_certificate_is_refused_and_the_last_good_one_stays() {
    let (logs, _guard) = Logs::capture("grpc_platform::tls=info");
    let ca = Ca::new("orders rotation CA");
    let v1 = ca.server("orders-server-v1");
    let mut vol = SecretVolume::new(&v1.cert, &v1.key);
    let certs = Certs::new();
    let server = Running::start(rotating_settings(&certs, &Backend::sqlite(), &vol)).await;
    let expiry = server.state.expiry_unix();
    // Waits until a reload has looked at the new files (its verdict is logged).
    let until_refused = async |what: &str| {
        let start = Instant::now();
        loop {
            let text = logs.text();
            if text.contains("TLS reload") || text.contains("TLS certificate reloaded") {
                return logs.take();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: no reload verdict logged within 10 s: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    let v2 = ca.server("orders-server-v2");
    let stranger = ca.server("orders-server-stranger");
    let expired = ca.leaf_with(
        "orders-server-expired",
        ExtendedKeyUsagePurpose::ServerAuth,
        |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        },
    );
    let half_written = &v2.cert[..v2.cert.len() / 2];
    let cases: [(&str, &str, &str); 4] = [
        ("garbage PEM", "this is not a certificate", &v2.key),
        ("half-written certificate", half_written, &v2.key),
        ("key of another certificate", &v2.cert, &stranger.key),
        ("expired certificate", &expired.cert, &expired.key),
    ];
    for (what, cert, key) in cases {
        vol.update(cert, key);
        let text = until_refused(what).await;
        assert_eq!(
            served_cn(server.addr, &ca.pem).await,
            "orders-server-v1",
            "{what} was put in service"
        );
        assert_eq!(server.state.expiry_unix(), expiry, "{what}");
        assert!(
            text.contains("ERROR")
                && text.contains("TLS reload refused")
                && text.contains("tls.crt"),
            "{what}: an error naming the file is logged: {text}"
        );
        // And the state reports the refusal.
        assert!(matches!(
            server.state.reload(),
            grpc_platform::tls::Reload::Unchanged
        ));
    }
    // A good certificate after all that is taken.
    vol.update(&v2.cert, &v2.key);
    until_served(server.addr, &ca.pem, "orders-server-v2").await;
    // A client still completes calls.
    let client = client_for(server.addr, &ca.pem, &certs.token("alice", READ_WRITE)).await;
    client.register(register_request("")).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_expiry_value_is_the_serving_certificates_not_after() {
    let certs = Certs::new();
    let s = settings(&certs, &Backend::sqlite());
    let pem = std::fs::read_to_string(s.tls.cert.clone().unwrap()).unwrap();
    let app = Application::build(s).await.unwrap();
    let state = app.tls_state().unwrap();
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(state.expiry_unix(), cert.validity().not_after.timestamp());
    assert!(state.expiry_unix() > chrono::Utc::now().timestamp());
}

#[tokio::test]
async fn an_expired_or_mismatched_certificate_stops_the_server_before_it_binds() {
    let ca = Ca::new("orders CA");
    let expired = ca.leaf_with(
        "orders-server-expired",
        ExtendedKeyUsagePurpose::ServerAuth,
        |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        },
    );
    let valid = ca.server("valid");
    let other = ca.server("other");
    let certs = Certs::new();
    for (what, cert, key, expect) in [
        ("expired", &expired.cert, &expired.key, "expired"),
        ("mismatched", &valid.cert, &other.key, "usable pair"),
    ] {
        let vol = SecretVolume::new(cert, key);
        let s = rotating_settings(&certs, &Backend::sqlite(), &vol);
        let err = Application::build(s).await.err().expect(what);
        let text = format!("{err:#}");
        assert!(text.contains(expect), "{what}: {text}");
        assert!(
            text.contains("tls.crt"),
            "{what}: the file is named: {text}"
        );
    }
}

#[tokio::test]
async fn a_replaced_client_ca_takes_effect_for_new_connections_without_restart() {
    let old_ca = Ca::new("old clients CA");
    let new_ca = Ca::new("new clients CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, &old_ca.pem).unwrap();
    let certs = Certs::new();
    let mut s = settings(&certs, &Backend::sqlite());
    s.tls.client_ca = Some(ca_file.clone());
    s.tls.reload_interval = Duration::from_secs(1);
    let server = Running::start(s).await;
    let token = certs.token("alice", READ_WRITE);
    let with = |leaf: &Leaf| {
        Client::builder(format!("https://localhost:{}", server.addr.port()))
            .ca_certificate(certs.ca())
            .token(token.clone())
            .client_identity(leaf.cert.clone(), leaf.key.clone())
    };
    let old_client = old_ca.leaf("old-client", ExtendedKeyUsagePurpose::ClientAuth);
    let new_client = new_ca.leaf("new-client", ExtendedKeyUsagePurpose::ClientAuth);
    one_call(with(&old_client))
        .await
        .expect("old CA's client served");
    assert!(one_call(with(&new_client)).await.is_err());

    // Replace the CA file atomically (write beside it, rename over).
    let tmp = dir.path().join(".clients-ca.pem.tmp");
    std::fs::write(&tmp, &new_ca.pem).unwrap();
    std::fs::rename(&tmp, &ca_file).unwrap();
    let start = Instant::now();
    while one_call(with(&new_client)).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new client CA was not picked up within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        one_call(with(&old_client)).await.is_err(),
        "a client of the removed CA is still served"
    );
    server.stop().await;
}
