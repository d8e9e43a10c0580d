//! Foreign clients through connection recycling and a SIGTERM drain: Python
//! `grpc.aio` (gRPC C-core, the core of the C++, Ruby and PHP clients too)
//! and Node `@grpc/grpc-js`, several processes with many calls in flight,
//! against real `orders-server` processes.
//!
//! Both paths end connections with GOAWAY while calls are in flight, and a
//! client keeps sending on a connection until it has read that GOAWAY. What
//! HTTP/2 and the contract promise there: frames for streams above the
//! GOAWAY's last stream id are discarded and those calls are sent again by
//! the client library itself (transparently: the server never saw them);
//! calls at or below it finish. So no call fails, no connection is failed
//! with an HTTP/2 error, and no write is reported failed that was in fact
//! stored (an UNAVAILABLE its caller would resend, changing things twice).
//!
//! The race such a client runs: C-core gives a new stream its id, then
//! writes its HEADERS and a WINDOW_UPDATE for it a moment later. If it reads
//! the server's GOAWAY and shutdown PING in between, its PING
//! acknowledgement goes out first, the server's final GOAWAY names a last
//! stream below that one, and the stream's frames arrive after it: frames
//! the server must discard, not fail the connection over (which would fail
//! every call in flight on it). The moment is short, and with a debug-build
//! server on a shared two-core machine a recycle seldom hit it; so the
//! grpc.aio processes run at the lowest CPU priority on one CPU
//! (`--busy-host`), where the scheduler interrupts their threads anywhere,
//! as on a loaded client host. The clients count the GOAWAYs with an error
//! code they receive, so a connection failed that way is seen even when no
//! call happened to be in flight on it.
//!
//! The clients are scripts (tests/faults/clients/aio_load.py,
//! tests/interop/node/load.js) that write a JSON summary: calls by status
//! code, GOAWAYs received, and the request_id of every RegisterOrder that
//! failed, which is then looked up in the database.

use crate::cluster::{Cluster, Replica, ms};
use crate::common::*;
use crate::{doubled, pg_orders};
use serde::Deserialize;
use sqlx::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;

/// Replicas log their connection events (grpc_platform::serve at debug), among them
/// each connection that ended with an error.
const LOG_LEVEL: &str = "warn,grpc_platform::serve=debug";
const CONNECTION_ERROR: &str = "connection ended with an error";
/// hyper's word for an HTTP/2 protocol failure of the connection (such as
/// the PROTOCOL_ERROR h2 answers a frame with), as opposed to I/O errors.
const HTTP2_ERROR: &str = "http2 error";
/// Each client process is one token subject standing in for a busy
/// application's many callers, in a closed loop as fast as the replicas
/// answer: on a quick host that is past the per-caller rate, whose refusals
/// these scenarios are not about (the calls-in-flight quota still binds).
const NO_CALLER_RATE: (&str, &str) = ("ORDERS__SERVER__MAX_CALL_RATE_PER_CALLER", "0");

/// The two kinds of foreign client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Python `grpc.aio`, on gRPC C-core.
    Aio,
    /// Node `@grpc/grpc-js`.
    Node,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Aio => "grpc.aio",
            Kind::Node => "grpc-js",
        }
    }
}

/// The load of a scenario: how many processes of each kind, what they
/// call, where, and for how long at most.
struct Load {
    aio: usize,
    node: usize,
    /// Calls each process keeps in flight.
    concurrency: usize,
    /// Share of RegisterOrder calls (the rest: GetOrder).
    write_ratio: f64,
    /// A gRPC target: `ipv4:127.0.0.1:P1,127.0.0.1:P2` (the certificate's
    /// name, localhost, is given apart).
    target: String,
    /// `pick_first` or `round_robin`.
    lb: &'static str,
    ca: PathBuf,
    /// Longest load; SIGTERM ends it sooner.
    duration: Duration,
}

impl Load {
    fn over(replicas: &[&Replica], lb: &'static str, certs: &Certs) -> Self {
        let addresses: Vec<String> = replicas
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        Self {
            aio: 0,
            node: 0,
            // What a busy application instance keeps in flight.
            concurrency: 32,
            write_ratio: 0.5,
            target: format!("ipv4:{}", addresses.join(",")),
            lb,
            ca: certs.dev.path(grpc_platform::dev::CA_CERT),
            duration: Duration::from_secs(20),
        }
    }
}

/// A RegisterOrder a client saw fail.
#[derive(Debug, Clone, Deserialize)]
struct FailedWrite {
    request_id: String,
    code: String,
    details: String,
}

/// What a load process wrote when it finished.
#[derive(Debug, Deserialize)]
struct Summary {
    client: String,
    elapsed_secs: f64,
    /// method → status code name → calls.
    calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// "CODE: details" → calls.
    failures: BTreeMap<String, u64>,
    failed_writes: Vec<FailedWrite>,
    /// grpc.aio: departures of its channels from READY.
    #[serde(default)]
    channel_left_ready: u64,
    /// grpc.aio: GOAWAYs with an error code, by HTTP/2 error code.
    #[serde(default)]
    goaway_errors: BTreeMap<String, u64>,
    /// grpc-js: connections opened.
    #[serde(default)]
    connections: u64,
    /// grpc-js: every GOAWAY, by HTTP/2 error code.
    #[serde(default)]
    goaways: BTreeMap<String, u64>,
}

impl Summary {
    fn count(&self, method: Option<&str>, code: Option<&str>) -> u64 {
        self.calls
            .iter()
            .filter(|(m, _)| method.is_none_or(|want| want == m.as_str()))
            .flat_map(|(_, codes)| codes.iter())
            .filter(|(c, _)| code.is_none_or(|want| want == c.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    fn calls(&self) -> u64 {
        self.count(None, None)
    }

    fn failed(&self) -> u64 {
        self.calls() - self.count(None, Some("OK"))
    }

    /// GOAWAYs with an error code (not NO_ERROR), by code.
    fn goaway_errors(&self) -> BTreeMap<String, u64> {
        let mut all = self.goaway_errors.clone();
        for (code, n) in self.goaways.iter().filter(|(c, _)| c.as_str() != "0") {
            *all.entry(code.clone()).or_default() += n;
        }
        all
    }
}

/// One running load process (killed if dropped: a test that fails leaves
/// none behind).
struct LoadProcess {
    kind: Kind,
    name: String,
    customer: String,
    child: Child,
    out: PathBuf,
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
    /// What it printed on stderr (the last 64 KiB), for failure reports.
    stderr: Arc<Mutex<String>>,
}

impl LoadProcess {
    /// Starts the `n`th client process of `kind`, for a customer of its own.
    fn spawn(kind: Kind, n: usize, scenario: &str, certs: &Certs, load: &Load, out: &Path) -> Self {
        let repo = repo();
        let name = format!("{}-{n}", kind.name());
        let customer = format!("{scenario}-{name}");
        let out = out.join(format!("{name}.json"));
        let mut cmd = match kind {
            Kind::Aio => {
                let mut c = Command::new(repo.join(".venv/bin/python"));
                c.arg(repo.join("tests/faults/clients/aio_load.py"))
                    .arg("--busy-host");
                c
            }
            Kind::Node => {
                let mut c = Command::new("node");
                c.arg(repo.join("tests/interop/node/load.js"));
                c
            }
        };
        cmd.current_dir(&repo)
            .arg("--target")
            .arg(&load.target)
            .args(["--authority", "localhost", "--lb", load.lb])
            .arg("--ca")
            .arg(&load.ca)
            .arg("--proto-dir")
            .arg(repo.join("proto"))
            .arg("--platform-proto-dir")
            .arg(repo.join("platform/proto"))
            .args(["--concurrency", &load.concurrency.to_string()])
            .args(["--write-ratio", &load.write_ratio.to_string()])
            .args(["--duration", &load.duration.as_secs_f64().to_string()])
            .arg("--out")
            .arg(&out)
            .env("ORDERS_TOKEN", certs.token(&customer, READ_WRITE))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "ready"
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let keep = stderr.clone();
        let from = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = BufReader::new(from).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = keep.lock().unwrap();
                if kept.len() > 64 * 1024 {
                    let cut = kept.len() - 32 * 1024;
                    let cut = (cut..kept.len())
                        .find(|&i| kept.is_char_boundary(i))
                        .unwrap_or(kept.len());
                    kept.drain(..cut);
                }
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        Self {
            kind,
            name,
            customer,
            child,
            out,
            ready: Some(ready),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the process has connected and started its load.
    async fn wait_ready(&mut self, within: Duration) {
        let ready = self.ready.take().expect("waited for once");
        match tokio::time::timeout(within, ready).await {
            Ok(Ok(())) => {}
            // Its stdout closed without "ready": it exited.
            Ok(Err(_)) => {
                let status = self.child.wait().await.unwrap();
                panic!(
                    "{} exited before its load started ({status}):\n{}",
                    self.name,
                    self.stderr()
                );
            }
            Err(_) => panic!(
                "{} did not start its load within {within:?}:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// Asks the process to stop its load: no new calls, the ones in flight
    /// finish, then it writes its summary and exits.
    fn stop(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit 0 (killing it after `within`) and
    /// reads its summary.
    async fn finish(mut self, within: Duration) -> (Self, Summary) {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "{} still running {within:?} after its load should have ended: killed\n{}",
                    self.name,
                    self.stderr()
                );
            }
        };
        assert!(
            status.success(),
            "{} failed ({status}):\n{}",
            self.name,
            self.stderr()
        );
        let text = std::fs::read_to_string(&self.out)
            .unwrap_or_else(|e| panic!("{}: no summary ({e}):\n{}", self.name, self.stderr()));
        let summary: Summary = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: unreadable summary ({e}): {text}", self.name));
        (self, summary)
    }
}

/// The Python and Node environments (both idempotent, quick when ready); a
/// failure to make them fails the scenario, as in tests/interop.rs.
async fn client_environments() {
    tokio::task::spawn_blocking(|| {
        for script in ["scripts/python-env", "scripts/node-env"] {
            let status = std::process::Command::new(repo().join(script))
                .status()
                .unwrap_or_else(|e| panic!("{script} does not run: {e}"));
            assert!(status.success(), "{script} failed");
        }
    })
    .await
    .unwrap();
}

/// Starts the load's processes and waits until all of them are under load.
async fn start_load(scenario: &str, certs: &Certs, load: &Load, out: &Path) -> Vec<LoadProcess> {
    let mut processes: Vec<LoadProcess> = (0..load.aio)
        .map(|n| LoadProcess::spawn(Kind::Aio, n, scenario, certs, load, out))
        .chain(
            (0..load.node).map(|n| LoadProcess::spawn(Kind::Node, n, scenario, certs, load, out)),
        )
        .collect();
    for p in &mut processes {
        p.wait_ready(Duration::from_secs(30)).await;
    }
    processes
}

/// What the load processes did, together.
struct Outcome {
    summaries: Vec<(LoadProcess, Summary)>,
    concurrency: usize,
}

impl Outcome {
    async fn collect(processes: Vec<LoadProcess>, load: &Load, within: Duration) -> Self {
        let mut summaries = Vec::new();
        for p in processes {
            summaries.push(p.finish(within).await);
        }
        Self {
            summaries,
            concurrency: load.concurrency,
        }
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = &Summary> {
        self.summaries
            .iter()
            .filter(move |(p, _)| p.kind == kind)
            .map(|(_, s)| s)
    }

    fn calls(&self) -> u64 {
        self.summaries.iter().map(|(_, s)| s.calls()).sum()
    }

    fn failed(&self) -> u64 {
        self.summaries.iter().map(|(_, s)| s.failed()).sum()
    }

    /// GOAWAYs with an error code the clients received, by code.
    fn goaway_errors(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for (_, s) in &self.summaries {
            for (code, n) in s.goaway_errors() {
                *all.entry(code).or_default() += n;
            }
        }
        all
    }

    /// Prints one line per client kind: calls, calls per method, failures
    /// by code and message, and what each saw of its connections.
    fn figures(&self, scenario: &str) {
        for kind in [Kind::Aio, Kind::Node] {
            let summaries: Vec<&Summary> = self.of(kind).collect();
            if summaries.is_empty() {
                continue;
            }
            let sum = |method: Option<&str>, code: Option<&str>| -> u64 {
                summaries.iter().map(|s| s.count(method, code)).sum()
            };
            let mut failures: BTreeMap<&str, u64> = BTreeMap::new();
            // grpc.aio counts the GOAWAYs with an error code, grpc-js all.
            let mut goaways: BTreeMap<&str, u64> = BTreeMap::new();
            for s in &summaries {
                for (what, n) in &s.failures {
                    *failures.entry(what.as_str()).or_default() += n;
                }
                let codes = match kind {
                    Kind::Aio => &s.goaway_errors,
                    Kind::Node => &s.goaways,
                };
                for (code, n) in codes {
                    *goaways.entry(code.as_str()).or_default() += n;
                }
            }
            let seconds = summaries.iter().map(|s| s.elapsed_secs).fold(0.0, f64::max);
            let connections = match kind {
                Kind::Aio => format!(
                    "channels left READY {} times; GOAWAYs with an error code received: {goaways:?}",
                    summaries.iter().map(|s| s.channel_left_ready).sum::<u64>(),
                ),
                Kind::Node => format!(
                    "{} connections opened; GOAWAYs received by HTTP/2 error code: {goaways:?}",
                    summaries.iter().map(|s| s.connections).sum::<u64>()
                ),
            };
            figure!(
                scenario,
                "{} ({}), {} processes x {} in flight, {:.1}s: {} calls (RegisterOrder {}, GetOrder {}), failed={} {:?}; {connections}",
                kind.name(),
                summaries[0].client,
                summaries.len(),
                self.concurrency,
                seconds,
                sum(None, None),
                sum(Some("RegisterOrder"), None),
                sum(Some("GetOrder"), None),
                sum(None, None) - sum(None, Some("OK")),
                failures
            );
        }
    }

    /// Checks the writes against what is stored: each RegisterOrder reported
    /// failed is looked up by its customer and request_id, no request_id
    /// has two orders, and the orders of the scenario's customers are
    /// exactly the acknowledged writes plus the failed ones found stored.
    /// Returns those (with the process that saw them fail).
    fn stored_but_failed(
        &self,
        scenario: &str,
        stored: &HashMap<String, (String, Option<String>)>,
    ) -> Vec<(String, FailedWrite)> {
        let ours: HashSet<&str> = self
            .summaries
            .iter()
            .map(|(p, _)| p.customer.as_str())
            .collect();
        let stored_ids: HashSet<(&str, &str)> = stored
            .values()
            .filter_map(|(c, r)| Some((c.as_str(), r.as_deref()?)))
            .collect();
        let mut bad = Vec::new();
        let mut acknowledged = 0;
        // code → (reported failed, of which stored)
        let mut by_code: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (p, s) in &self.summaries {
            acknowledged += s.count(Some("RegisterOrder"), Some("OK"));
            for w in &s.failed_writes {
                let entry = by_code.entry(w.code.as_str()).or_default();
                entry.0 += 1;
                // request_id is unique per customer: each process is one.
                if stored_ids.contains(&(p.customer.as_str(), w.request_id.as_str())) {
                    entry.1 += 1;
                    bad.push((p.name.clone(), w.clone()));
                }
            }
        }
        let stored_ours = stored
            .values()
            .filter(|(c, _)| ours.contains(c.as_str()))
            .count() as u64;
        let doubled = doubled(stored);
        figure!(
            scenario,
            "writes: {acknowledged} acknowledged; reported failed, by code (failed, of which stored all the same): {by_code:?}; {stored_ours} orders stored; request_ids with two orders: {}",
            doubled.len()
        );
        assert!(
            doubled.is_empty(),
            "request ids with two orders: {doubled:?}"
        );
        // Each acknowledged write is one order, and an order exists only for
        // a write that was acknowledged or reported failed.
        assert_eq!(
            stored_ours,
            acknowledged + bad.len() as u64,
            "orders stored = writes acknowledged + writes reported failed that were stored"
        );
        bad
    }

    /// What went wrong, for the assertion: failed calls (a sample of each
    /// message, and failed writes), GOAWAYs with an error code, writes
    /// reported failed but stored, and the replicas' HTTP/2 connection
    /// errors. Empty when all is well.
    fn problems(
        &self,
        stored_but_failed: &[(String, FailedWrite)],
        replicas: &[&Replica],
    ) -> String {
        let mut out = String::new();
        if self.failed() > 0 {
            out.push_str(&format!("{} calls failed:\n", self.failed()));
            for (p, s) in &self.summaries {
                for (what, n) in &s.failures {
                    out.push_str(&format!("  {} ({}): {n}x {what}\n", p.name, p.customer));
                }
                for w in s.failed_writes.iter().take(3) {
                    out.push_str(&format!(
                        "  {} RegisterOrder request_id={}: {}: {}\n",
                        p.name, w.request_id, w.code, w.details
                    ));
                }
            }
        }
        let goaway_errors = self.goaway_errors();
        if !goaway_errors.is_empty() {
            out.push_str(&format!(
                "clients' connections were failed by GOAWAYs with an HTTP/2 error code (code: count): {goaway_errors:?}\n"
            ));
        }
        if !stored_but_failed.is_empty() {
            out.push_str(&format!(
                "{} writes reported failed were stored (a resend would register them twice): {stored_but_failed:?}\n",
                stored_but_failed.len()
            ));
        }
        for r in replicas {
            let lines: Vec<String> = r
                .log_tail()
                .lines()
                .filter(|l| l.contains(CONNECTION_ERROR) && l.contains(HTTP2_ERROR))
                .map(str::to_owned)
                .collect();
            if !lines.is_empty() {
                out.push_str(&format!(
                    "{} ended {} connections with an HTTP/2 error (in its last 200 log lines):\n",
                    r.name,
                    lines.len()
                ));
                for line in lines.iter().take(5) {
                    out.push_str(&format!("  {line}\n"));
                }
            }
        }
        // What the replicas last warned about, when anything went wrong.
        if !out.is_empty() {
            for r in replicas {
                let tail = r.log_tail();
                let warnings: Vec<&str> = tail
                    .lines()
                    .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
                    .collect();
                for line in warnings.iter().rev().take(5).rev() {
                    out.push_str(&format!("{} warned: {line}\n", r.name));
                }
            }
        }
        out
    }
}

/// Every order of a SQLite database: id → (customer, request_id).
async fn sqlite_orders(url: &str) -> HashMap<String, (String, Option<String>)> {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, customer_id, request_id FROM orders")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter().map(|(id, c, r)| (id, (c, r))).collect()
}

/// Scenario: one replica recycles its connections every second (gRFC A9
/// maximum age, with a grace) while grpc.aio and grpc-js processes keep
/// many calls in flight on them. No call fails, no connection is failed
/// with an HTTP/2 error, no failed write was stored.
pub async fn recycling() {
    const SCENARIO: &str = "recycle";
    client_environments().await;
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("orders.db").display());
    // The shortest age there is (whole seconds), so each client connection
    // is recycled some twenty times during the load.
    let mut server = Replica::new(
        "recycling",
        &certs,
        &url,
        &[
            ("ORDERS__SERVER__MAX_CONNECTION_AGE_SECS", "1"),
            ("ORDERS__SERVER__MAX_CONNECTION_AGE_GRACE_SECS", "2"),
            ("ORDERS__TELEMETRY__LOG_LEVEL", LOG_LEVEL),
            NO_CALLER_RATE,
        ],
    );
    server.start().await;
    let out = tempfile::tempdir().unwrap();
    let load = Load {
        aio: 4,
        node: 1,
        ..Load::over(&[&server], "pick_first", &certs)
    };
    let started = Instant::now();
    let processes = start_load(SCENARIO, &certs, &load, out.path()).await;
    let outcome = Outcome::collect(processes, &load, load.duration + Duration::from_secs(30)).await;
    let elapsed = started.elapsed();
    assert!(
        server.is_running(),
        "the server stayed up:\n{}",
        server.log_tail()
    );
    figure!(
        SCENARIO,
        "{} calls in {:.1}s by {} grpc.aio + {} grpc-js processes through connections recycled every 1s (grace 2s): failed={}, GOAWAYs with an error code received={:?}",
        outcome.calls(),
        elapsed.as_secs_f64(),
        load.aio,
        load.node,
        outcome.failed(),
        outcome.goaway_errors()
    );
    outcome.figures(SCENARIO);
    let stored_but_failed = outcome.stored_but_failed(SCENARIO, &sqlite_orders(&url).await);
    let problems = outcome.problems(&stored_but_failed, &[&server]);
    assert!(problems.is_empty(), "{problems}");
    // The load went through recycles, several per connection: the test is
    // not vacuous.
    for (p, s) in &outcome.summaries {
        let recycles = match p.kind {
            Kind::Aio => s.channel_left_ready,
            Kind::Node => s.connections.saturating_sub(1),
        };
        assert!(
            recycles >= 5,
            "{}: its connection was recycled only {recycles} times",
            p.name
        );
    }
    server.sigterm();
    assert_eq!(server.wait_exit(Duration::from_secs(20)).await, Some(0));
}

/// Calls answered OK by a replica (GetOrder and RegisterOrder), from its
/// /metrics.
async fn served(replica: &Replica) -> f64 {
    let mut total = 0.0;
    for method in ["GetOrder", "RegisterOrder"] {
        total += replica
            .method_metric("grpc_server_handled_total", method, Some("OK"))
            .await;
    }
    total
}

/// Scenario: two replicas of one PostgreSQL database, grpc.aio and grpc-js
/// processes balancing over both (round_robin); under load, the replicas
/// in turn (each three times) get SIGTERM, drain, exit 0 and are started again.
/// While one is down the clients use the other; no call fails, no
/// connection is failed with an HTTP/2 error, no failed write was stored.
pub async fn sigterm_drain() {
    const SCENARIO: &str = "drain";
    client_environments().await;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let mut cluster = Cluster::start(
        2,
        &db.url,
        &[
            // A short lame-duck time keeps the test quick.
            ("ORDERS__SHUTDOWN__DRAIN_SECS", "1"),
            ("ORDERS__TELEMETRY__LOG_LEVEL", LOG_LEVEL),
            NO_CALLER_RATE,
        ],
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let load = {
        let replicas: Vec<&Replica> = cluster.replicas.iter().collect();
        Load {
            aio: 4,
            node: 1,
            // While one replica is down the other takes all of it: with 32
            // each (160 in flight) a debug build on a busy machine kept
            // calls waiting for a pooled connection past its 2 s timeout.
            concurrency: 16,
            // Stopped (SIGTERM) once the restarts are done; this only
            // bounds a run gone wrong.
            duration: Duration::from_secs(90),
            ..Load::over(&replicas, "round_robin", &cluster.certs)
        }
    };
    let started = Instant::now();
    let processes = start_load(SCENARIO, &cluster.certs, &load, out.path()).await;
    let restarts = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in [0, 1, 0, 1, 0, 1] {
            let before = served(&cluster.replicas[i]).await;
            assert!(before > 0.0, "replica-{i} has its share of the load");
            let other_before = served(&cluster.replicas[1 - i]).await;
            let replica = &mut cluster.replicas[i];
            let t0 = Instant::now();
            replica.sigterm();
            let code = replica.wait_exit(Duration::from_secs(20)).await;
            let exited = t0.elapsed();
            assert_eq!(code, Some(0), "{} exits 0 after draining", replica.name);
            // Down for a while: the clients' calls all go to the other one.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let restart = replica.start().await;
            let other_served = served(&cluster.replicas[1 - i]).await - other_before;
            assert!(
                other_served > 0.0,
                "the calls went to replica-{} while replica-{i} was away",
                1 - i
            );
            // Back: the clients find it again before the other one goes
            // (one process is enough for the 200 calls, the others' next
            // reconnection attempts follow within their backoff of at most
            // 1 s, +20% jitter).
            let replica = &cluster.replicas[i];
            let t1 = Instant::now();
            while served(replica).await < 200.0 {
                assert!(
                    t1.elapsed() < Duration::from_secs(10),
                    "{} gets calls again after its restart",
                    replica.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let back = t1.elapsed();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            figure!(
                SCENARIO,
                "{}: had served {before} calls; SIGTERM, exited 0 after {:.0}ms; the other served {other_served} meanwhile; restarted and ready in {:.0}ms, 200 calls again {:.0}ms later",
                replica.name,
                ms(exited),
                ms(restart),
                ms(back)
            );
        }
    };
    // The restarts take well under a minute; a hung step fails the test
    // rather than holding the suite (the processes die with it).
    tokio::time::timeout(Duration::from_secs(60), restarts)
        .await
        .expect("the restarts end within a minute");
    for p in &processes {
        p.stop();
    }
    let outcome = Outcome::collect(processes, &load, Duration::from_secs(30)).await;
    let replicas: Vec<&Replica> = cluster.replicas.iter().collect();
    for r in &replicas {
        assert_eq!(r.readiness().await, Some(ServingStatus::Serving));
    }
    figure!(
        SCENARIO,
        "{} calls in {:.1}s by {} grpc.aio + {} grpc-js processes over 2 replicas (round_robin) through 6 SIGTERM drains: failed={}, GOAWAYs with an error code received={:?}",
        outcome.calls(),
        started.elapsed().as_secs_f64(),
        load.aio,
        load.node,
        outcome.failed(),
        outcome.goaway_errors()
    );
    outcome.figures(SCENARIO);
    let stored_but_failed = outcome.stored_but_failed(SCENARIO, &pg_orders(&db.url).await);
    let problems = outcome.problems(&stored_but_failed, &replicas);
    assert!(problems.is_empty(), "{problems}");
}
