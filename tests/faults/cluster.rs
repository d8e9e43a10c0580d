//! Real `orders-server` processes for the fault tests: each replica on fixed
//! 127.0.0.1 ports (so it restarts where its clients expect it), configured
//! as an operator would (ORDERS__* variables), killed with SIGKILL or
//! stopped with SIGTERM like Kubernetes does, and watched through its admin
//! port (readiness, /metrics) like a kubelet and a scraper do.

use crate::common::{AUDIENCE, Certs, ISSUER, repo};
use orders::sdk::{Client, ClientBuilder, RetryPolicy};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

const SERVER: &str = env!("CARGO_BIN_EXE_orders-server");

/// A port free now, to be used (and reused across restarts) by a replica.
/// A port for a replica to keep across its restarts. Taken from below the
/// kernel's ephemeral range: a port-0 pick lies inside that range, and while
/// a replica is down any outgoing connection (the SDK's, PostgreSQL's) could
/// be given it as its local port, and the restart would find it taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    let span = ephemeral_low.saturating_sub(low).max(1);
    // Start somewhere random (runs of this suite may overlap), then walk.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        rand::random_range(0..span),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {ephemeral_low}");
}

/// The last lines a replica printed (stdout and stderr), for failure reports.
type Log = Arc<Mutex<VecDeque<String>>>;

fn keep_lines(from: impl std::io::Read + Send + 'static, log: Log) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            if log.len() == 200 {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

/// One `orders-server` process, restartable on the same ports.
pub struct Replica {
    pub name: String,
    pub port: u16,
    pub admin_port: u16,
    /// Working directory (nothing relative is used, but it is its own).
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    log: Log,
}

impl Replica {
    /// A replica (not started) serving `database_url` with the test
    /// certificates and keys of `certs`; `extra` are more ORDERS__* settings.
    pub fn new(name: &str, certs: &Certs, database_url: &str, extra: &[(&str, &str)]) -> Self {
        let (port, admin_port) = (free_port(), free_port());
        let path = |f: &str| certs.dev.path(f).display().to_string();
        let mut envs: Vec<(String, String)> = [
            ("ORDERS_ENV", "test".to_string()),
            (
                "ORDERS_CONFIG_DIR",
                repo().join("config").display().to_string(),
            ),
            ("ORDERS__SERVER__ADDR", format!("127.0.0.1:{port}")),
            ("ORDERS__ADMIN__ADDR", format!("127.0.0.1:{admin_port}")),
            ("ORDERS__TLS__CERT", path(grpc_platform::dev::SERVER_CERT)),
            ("ORDERS__TLS__KEY", path(grpc_platform::dev::SERVER_KEY)),
            ("ORDERS__AUTH__ISSUER", ISSUER.to_string()),
            ("ORDERS__AUTH__AUDIENCE", AUDIENCE.to_string()),
            ("ORDERS__AUTH__JWKS_FILE", path(grpc_platform::dev::JWKS)),
            ("ORDERS__DATABASE__URL", database_url.to_string()),
            ("ORDERS__TELEMETRY__LOG_FORMAT", "json".to_string()),
            ("ORDERS__TELEMETRY__LOG_LEVEL", "warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            envs.push((k.to_string(), v.to_string()));
        }
        Self {
            name: name.into(),
            port,
            admin_port,
            dir: tempfile::tempdir().unwrap(),
            envs,
            child: None,
            log: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// `https://localhost:PORT` (the test certificate names localhost).
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Starts the process and waits until its readiness is SERVING; how long
    /// that took.
    pub async fn start(&mut self) -> Duration {
        assert!(self.child.is_none(), "{} is running already", self.name);
        let started = Instant::now();
        let mut cmd = Command::new(SERVER);
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("orders-server starts");
        keep_lines(child.stdout.take().unwrap(), self.log.clone());
        keep_lines(child.stderr.take().unwrap(), self.log.clone());
        self.child = Some(child);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited while starting ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.readiness().await == Some(ServingStatus::Serving) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} not ready within 30 s:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process dies at once, with whatever it was doing.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
    }

    /// SIGTERM, as Kubernetes stops a pod: drain, then exit.
    pub fn sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (after SIGTERM); its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                started.elapsed() < within,
                "{} did not exit within {within:?}:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process is still alive (it has not crashed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// `readiness` on the admin port, as a kubelet probe asks; `None` when
    /// the port does not answer within 500 ms.
    pub async fn readiness(&self) -> Option<ServingStatus> {
        self.health("readiness").await
    }

    pub async fn health(&self, name: &str) -> Option<ServingStatus> {
        let ask = async {
            let channel = tonic::transport::Endpoint::from_shared(format!(
                "http://127.0.0.1:{}",
                self.admin_port
            ))
            .ok()?
            .connect()
            .await
            .ok()?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let request = tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            };
            let status = client.check(request).await.ok()?.into_inner().status;
            ServingStatus::try_from(status).ok()
        };
        tokio::time::timeout(Duration::from_millis(500), ask)
            .await
            .ok()
            .flatten()
    }

    /// The Prometheus text of `/metrics` on the admin port.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port))
            .await
            .unwrap();
        // HTTP/1.0: the body is not chunked, it ends with the connection.
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// A `grpc_server_*` sample of one method, 0 when absent.
    pub async fn method_metric(&self, name: &str, method: &str, code: Option<&str>) -> f64 {
        let text = self.metrics().await;
        let mut labels = vec![("grpc_method", method)];
        if let Some(code) = code {
            labels.push(("grpc_code", code));
        }
        crate::common::metric(&text, name, &labels).unwrap_or(0.0)
    }

    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Several replicas of one database, and clients over all of them.
pub struct Cluster {
    pub certs: Arc<Certs>,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// `n` replicas of `database_url`, started one after the other (the
    /// first one migrates).
    pub async fn start(n: usize, database_url: &str, extra: &[(&str, &str)]) -> Self {
        let certs = Arc::new(Certs::new());
        let mut replicas: Vec<Replica> = (0..n)
            .map(|i| Replica::new(&format!("replica-{i}"), &certs, database_url, extra))
            .collect();
        for r in &mut replicas {
            r.start().await;
        }
        Self { certs, replicas }
    }

    /// A client builder over every replica, with a token for `sub`.
    pub fn builder(&self, sub: &str, scope: &str) -> ClientBuilder {
        let mut builder = Client::builder(self.replicas[0].endpoint());
        for r in &self.replicas[1..] {
            builder = builder.endpoint(r.endpoint());
        }
        builder
            .ca_certificate(self.certs.ca())
            .token(self.certs.token(sub, scope))
    }

    /// A client over every replica, retrying as a client that expects
    /// failovers would: more attempts and a shorter longest pause than the
    /// defaults, within the default 10 s deadline.
    pub async fn client(&self, sub: &str, scope: &str) -> Client {
        self.builder(sub, scope)
            .retry(patient())
            .connect()
            .await
            .expect("client connects")
    }
}

/// 10 attempts, pauses up to 500 ms.
pub fn patient() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(10)
        .max_backoff(Duration::from_millis(500))
}

/// Counts the SDK's retries (its `retrying` debug events) and its health
/// changes of mind, process-wide, through a tracing layer of our own. The
/// SDK's events come from the platform's client under it
/// (`grpc_platform::client`: retries, health, stream reconnects, these in
/// spans the SDK names); `orders::sdk` is listened to for its own.
pub struct SdkEvents;

static RETRIES: AtomicU64 = AtomicU64::new(0);
static HEALTH_CHANGES: AtomicU64 = AtomicU64::new(0);
/// The latest SDK events, as lines, for a failing test to print.
static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const RECENT_EVENTS: usize = 400;

impl SdkEvents {
    /// Installs the counting subscriber (once).
    pub fn install() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let filter = tracing_subscriber::filter::Targets::new()
                .with_target("orders::sdk", tracing::Level::DEBUG)
                .with_target("grpc_platform::client", tracing::Level::DEBUG);
            let subscriber = tracing_subscriber::registry().with(Counter.with_filter(filter));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
        });
    }

    /// (retries, health changes) so far.
    pub fn snapshot() -> (u64, u64) {
        (
            RETRIES.load(Ordering::Relaxed),
            HEALTH_CHANGES.load(Ordering::Relaxed),
        )
    }

    /// The latest SDK events (at most 400), one per line, each with the
    /// seconds since the first event: what a failing test prints.
    pub fn recent() -> String {
        let recent = RECENT.lock().unwrap();
        recent.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

use tracing_subscriber::Layer;

struct Counter;

impl<S: tracing::Subscriber> Layer<S> for Counter {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields {
            message: String,
            rest: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                } else {
                    self.rest.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        static FIRST: OnceLock<Instant> = OnceLock::new();
        let since = FIRST.get_or_init(Instant::now).elapsed();
        let mut fields = Fields::default();
        event.record(&mut fields);
        match fields.message.as_str() {
            "retrying" => RETRIES.fetch_add(1, Ordering::Relaxed),
            "endpoint health changed" => HEALTH_CHANGES.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let mut recent = RECENT.lock().unwrap();
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(format!(
            "{:9.3}s {} {}{}",
            since.as_secs_f64(),
            event.metadata().level(),
            fields.message,
            fields.rest
        ));
    }
}

/// Latency figures of a set of samples.
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() as f64 * q).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// `n=… p50=… p99=… max=…` in milliseconds.
    pub fn summary(&self) -> String {
        format!(
            "n={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
            self.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.max())
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
