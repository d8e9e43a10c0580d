//! The test harness: real servers on port 0 with real TLS certificates, real
//! ES256 tokens, real SQLite files and a real PostgreSQL database (a fresh one
//! per test run, dropped afterwards). Tests talk to them through the SDK.
#![allow(dead_code)]

use grpc_platform::dev::{DevCerts, DevClaims};
use orders::config::{Environment, Settings};
use orders::sdk::{Client, pb};
use orders::startup::Application;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ISSUER: &str = "orders-test";
pub const AUDIENCE: &str = "orders";
pub const READ_WRITE: &str = "orders:read orders:write";
pub const STAFF: &str = "orders:read orders:write orders:admin";

/// A development CA, server certificate and signing key in a temporary folder.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub dev: DevCerts,
}

impl Certs {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevCerts::new(dir.path(), orders::startup::SERVICE_NAME);
        dev.generate().unwrap();
        Self { dir, dev }
    }

    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.dev.path(grpc_platform::dev::CA_CERT)).unwrap()
    }

    /// A valid token for `sub` with `scope`.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        self.token_with(sub, scope, |_| {})
    }

    /// A token whose claims `edit` may spoil.
    pub fn token_with(&self, sub: &str, scope: &str, edit: impl FnOnce(&mut DevClaims)) -> String {
        let mut claims = DevClaims::valid_for(sub, scope, ISSUER, AUDIENCE, 600);
        edit(&mut claims);
        self.dev.token(&claims).unwrap()
    }
}

/// Where a test server keeps its orders.
#[derive(Clone)]
pub enum Backend {
    Sqlite(Arc<tempfile::TempDir>),
    Postgres(Arc<PgDatabase>),
}

impl Backend {
    pub fn sqlite() -> Self {
        Backend::Sqlite(Arc::new(tempfile::tempdir().unwrap()))
    }

    pub fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite://{}/orders.db", dir.path().display()),
            Backend::Postgres(db) => db.url.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// A PostgreSQL database made for this test run, dropped with the last handle.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

/// The server to make test databases on (trust auth, a maintenance database).
pub fn admin_url() -> String {
    std::env::var("ORDERS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// In CI, PostgreSQL must be there: a missing server fails the test.
pub fn postgres_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

impl PgDatabase {
    /// `None` (the test is skipped, saying so) when PostgreSQL is not
    /// reachable outside CI.
    pub async fn create() -> Option<Arc<Self>> {
        use sqlx::Connection;
        let admin_url = admin_url();
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) if !postgres_required() => {
                eprintln!("SKIPPED: PostgreSQL at {admin_url} unreachable ({e}); CI requires it");
                return None;
            }
            Err(e) => panic!("PostgreSQL at {admin_url} unreachable: {e}"),
        };
        let name = format!("orders_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        Some(Arc::new(Self {
            url: url.to_string(),
            admin_url,
            name,
        }))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime guarantee: use a thread of our own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// The backends a test runs against: SQLite always, PostgreSQL when reachable
/// (always in CI).
pub async fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::sqlite()];
    if let Some(db) = PgDatabase::create().await {
        all.push(Backend::Postgres(db));
    }
    all
}

/// Settings for a test server: port 0, TLS with `certs`, tokens from `certs`.
pub fn settings(certs: &Certs, backend: &Backend) -> Settings {
    let mut s = Settings::for_environment(Environment::Test);
    s.server.addr = "127.0.0.1:0".parse().unwrap();
    s.admin.addr = "127.0.0.1:0".parse().unwrap();
    s.tls.cert = Some(certs.dev.path(grpc_platform::dev::SERVER_CERT));
    s.tls.key = Some(certs.dev.path(grpc_platform::dev::SERVER_KEY));
    s.auth.issuer = ISSUER.into();
    s.auth.audience = AUDIENCE.into();
    s.auth.jwks_file = Some(certs.dev.path(grpc_platform::dev::JWKS));
    s.service.database.url = SecretString::from(backend.url());
    s.shutdown.drain = Duration::ZERO;
    s.validate().expect("test settings are valid");
    s
}

/// A running server; stops (and waits for the stop) when dropped or `stop`ped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub health: grpc_platform::health::HealthState,
    pub certs: Arc<Certs>,
    pub backend: Backend,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(Arc::new(Certs::new()), backend, |_| {}).await
    }

    pub async fn start_with(
        certs: Arc<Certs>,
        backend: Backend,
        edit: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut s = settings(&certs, &backend);
        edit(&mut s);
        let app = Application::build(s).await.expect("server builds");
        let addr = app.local_addr();
        let admin_addr = app.admin_addr();
        let health = app.health();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin_addr,
            health,
            certs,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `GET path` on the admin port (HTTP/1.1): the status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.admin_addr)
            .await
            .unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, dechunk(&body))
    }

    /// A health client on the plaintext admin port.
    pub async fn admin_health(
        &self,
    ) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.admin_addr))
                .unwrap()
                .connect()
                .await
                .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
    }

    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// An SDK client for `sub` with `scope`.
    pub async fn client(&self, sub: &str, scope: &str) -> Client {
        self.client_with_token(&self.certs.token(sub, scope)).await
    }

    pub async fn client_with_token(&self, token: &str) -> Client {
        Client::builder(self.endpoint())
            .ca_certificate(self.certs.ca())
            .token(token)
            .connect()
            .await
            .expect("client connects")
    }

    /// A client that sends no token at all.
    pub async fn anonymous(&self) -> Client {
        Client::builder(self.endpoint())
            .ca_certificate(self.certs.ca())
            .connect()
            .await
            .expect("client connects")
    }

    pub async fn alice(&self) -> Client {
        self.client("alice", READ_WRITE).await
    }
    pub async fn bob(&self) -> Client {
        self.client("bob", READ_WRITE).await
    }
    pub async fn staff(&self) -> Client {
        self.client("staff-1", STAFF).await
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(std::time::Duration::from_secs(20), task)
                .await
                .expect("server stops within 20 s");
            result.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn item(sku: &str, quantity: i32, unit_price_cents: i64) -> pb::LineItem {
    pb::LineItem {
        sku: sku.into(),
        quantity,
        unit_price_cents,
    }
}

pub fn address(street: &str) -> pb::Address {
    pb::Address {
        street: street.into(),
        number: 12,
        city: "Utrecht".into(),
        postal_code: "3511 AB".into(),
    }
}

pub fn register_request(request_id: &str) -> pb::RegisterOrderRequest {
    pb::RegisterOrderRequest {
        items: vec![item("APPLE-1", 3, 250), item("MILK", 2, 99)],
        address: Some(address("Main Street")),
        request_id: request_id.into(),
    }
}

/// How many orders `client` can see (all pages).
pub async fn count_orders(client: &Client) -> usize {
    client
        .list_all(pb::OrderStatus::Unspecified, 500)
        .await
        .expect("list orders")
        .len()
}

/// The repo root (for proto/, scripts/, .venv/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Undoes HTTP/1.1 chunked transfer encoding (hyper chunks unknown-length bodies).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_owned();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// The value of one Prometheus sample, e.g.
/// `metric(text, "grpc_server_handled_total", &[("grpc_code", "OK"), …])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// A PostgreSQL server of the test's own (`initdb` + `pg_ctl` on a free
/// port), so a test can stop and start the database without touching the
/// shared one. Runs as the `postgres` user when the tests run as root
/// (PostgreSQL refuses to run as root).
pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl TempPostgres {
    /// `None` (the test is skipped, saying so) when PostgreSQL's server
    /// binaries are missing outside CI; in CI their absence fails the test.
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| {
                let mut versions: Vec<PathBuf> = dirs
                    .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                    .collect();
                versions.sort();
                versions.pop()
            })
            .filter(|bin| bin.join("initdb").is_file());
        let Some(bin) = bin else {
            assert!(
                !postgres_required(),
                "PostgreSQL server binaries are required in CI"
            );
            eprintln!("SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { dir, bin, port };
        if Self::is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        pg.start_again();
        Some(pg)
    }

    fn is_root() -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program).display().to_string();
        let mut cmd = if Self::is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        } else {
            std::process::Command::new(&program)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server the hard way (as a crash or an outage would).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl").display().to_string();
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if Self::is_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--", &program])
                .args(args)
                .output()
        } else {
            std::process::Command::new(&program).args(args).output()
        };
    }
}

/// Tokens as an attacker or a test crafts them, against the dev signing key.
pub mod jwt {
    use super::{AUDIENCE, Certs, ISSUER, READ_WRITE};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    pub fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// Valid claims for `sub` with `scope`, good for ten minutes.
    pub fn claims(sub: &str, scope: &str) -> serde_json::Value {
        serde_json::json!({"sub": sub, "scope": scope, "iss": ISSUER, "aud": AUDIENCE,
                           "iat": now(), "nbf": now(), "exp": now() + 600})
    }

    /// The kid the server knows the dev signing key by.
    pub fn kid(certs: &Certs) -> String {
        let token = certs.token("alice", READ_WRITE);
        jsonwebtoken::decode_header(&token).unwrap().kid.unwrap()
    }

    /// `claims` signed with the dev ES256 key under `kid`.
    pub fn sign_es256(certs: &Certs, kid: &str, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(certs.dev.path(grpc_platform::dev::SIGNING_KEY)).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
    }

    /// A token with an arbitrary (unsigned) header, as an attacker crafts it.
    pub fn crafted(
        header: serde_json::Value,
        claims: &serde_json::Value,
        signature: &[u8],
    ) -> String {
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!(
            "{}.{}.{}",
            enc(&header),
            enc(claims),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }
}
