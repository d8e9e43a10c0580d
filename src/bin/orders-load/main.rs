//! `orders-load`: a load generator for `orders.v1.OrderService`, on the
//! crate's generated client (it builds with `default-features = false`).
//!
//! ```sh
//! # closed loop: 64 calls in flight over 4 connections, 2 s warm-up, 10 s measured
//! orders-load --endpoint https://localhost:50051 --ca-cert certs/dev/ca.pem --token "$TOKEN" \
//!     --call get --connections 4 --concurrency 64 --warmup 2s --duration 10s
//! # open loop: 5,000 calls a second, latency from each call's intended send time
//! orders-load ... --call get --rate 5000 --duration 10s --json
//! # fan-out: 1,000 watchers on 10 orders, 20 updates a second, delivery latency
//! orders-load ... --call watch --watchers 1000 --watch-orders 10 --event-rate 20
//! # start to SERVING, five times, and idle memory
//! orders-load startup --health http://127.0.0.1:8081 -- orders-server
//! ```
//!
//! Reports calls per second, latency percentiles from an HDR histogram
//! (p50, p90, p99, p99.9, max) and errors by gRPC code, per call kind; with
//! `--server-pid`, the server's resident memory and CPU time; and this
//! process's own CPU use, which shows when the load generator, not the
//! server, is the bottleneck. `--json` prints one JSON object on stdout.
//!
//! In the open loop (`--rate`) each call has an intended send time on a fixed
//! schedule and its latency is measured from that time, not from when it was
//! actually sent: a server that stalls is charged for every call the stall
//! delayed (no coordinated omission).
#![forbid(unsafe_code)]

mod procfs;
mod raw;
mod startup;
mod stats;
mod target;
mod watch;
mod workload;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use stats::{CallReport, Op, Stats, Summary};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use target::{ConnectArgs, Target};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use workload::{Call, Workload};

#[derive(Parser)]
#[command(
    name = "orders-load",
    version,
    about = "Load generator for orders.v1.OrderService",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server command N times: time to SERVING, and idle memory.
    Startup(startup::StartupArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// What to call.
    #[arg(long, value_enum, default_value = "get")]
    call: Call,
    /// Separate HTTP/2 connections; calls and streams go round-robin over them.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Calls in flight (closed loop); with --rate, the most in flight
    /// (further sends wait, their latency still counted from their intended time).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: this many calls a second on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "requests")]
    duration: Duration,
    /// Measure this many calls instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Load sent before measuring, and not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// The order GetOrder reads (default: one registered at the start).
    #[arg(long)]
    order_id: Option<String>,
    /// WatchOrder streams (watch: default 100; mix: default 10).
    #[arg(long)]
    watchers: Option<usize>,
    /// Orders the watchers watch (and mix reads and updates).
    #[arg(long, default_value_t = 10)]
    watch_orders: usize,
    /// Connections for the watch streams (default: one per 100 streams, as the
    /// service allows 200 streams per connection by default).
    #[arg(long)]
    watch_connections: Option<usize>,
    /// watch: UpdateOrder calls a second, spread over the watched orders.
    #[arg(long, default_value_t = 20.0)]
    event_rate: f64,
    /// Sample this process's memory and CPU (the server under load).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads (default: the CPUs this process may run on; 1 runs
    /// everything on one thread).
    #[arg(long)]
    threads: Option<usize>,
    /// Make every call through the generated client, decoding each
    /// response (by default GetOrder and RegisterOrder requests are encoded
    /// once and their responses not decoded, so the load generator costs
    /// less CPU per call than the server; statuses are checked either way).
    #[arg(long)]
    typed: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

/// `10`, `10s`, `1.5s`, `250ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 250ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?} is not a valid duration"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A subscriber that wants nothing. Without any subscriber, `tracing`
    // (its `log` feature is on in the dependency tree) hands every span
    // h2 and hyper make per call to `log`: CPU spent for nobody.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let threads = cli
        .run
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Some(Command::Startup(args)) => startup::run(args).await,
            None => run(cli.run).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orders-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The phases of a run, shared with every worker.
const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

struct Ctx {
    target: Arc<Target>,
    work: Workload,
    phase: AtomicU8,
    /// Calls completed so far, warm-up included (the progress bar).
    completed: AtomicU64,
    errors: AtomicU64,
    /// With --requests: measured calls started so far.
    tickets: AtomicU64,
    requests: Option<u64>,
}

impl Ctx {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }
}

#[derive(Serialize)]
struct Report {
    call: &'static str,
    endpoint: String,
    /// `closed` (a fixed number in flight) or `open` (a fixed rate).
    mode: &'static str,
    connections: usize,
    concurrency: usize,
    rate: Option<f64>,
    /// Orders registered (or given) for the run to read, update and watch.
    orders: Vec<String>,
    warmup_s: f64,
    /// The measured window.
    duration_s: f64,
    /// Calls completed in the window: successes and errors.
    requests: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// Calls sent again because they never left this client (a connection
    /// closed before sending them); each still counts once in `requests`.
    resent: u64,
    /// `requests` per second.
    rps: f64,
    /// Successful calls, all kinds together.
    latency: Option<Summary>,
    by_call: BTreeMap<&'static str, CallReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_loop: Option<OpenLoopReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watch: Option<WatchReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<procfs::ServerReport>,
    /// This process's CPU use in the window, as a share of one core.
    client_cpu_percent: Option<f64>,
}

#[derive(Serialize)]
struct OpenLoopReport {
    /// Calls sent in the window.
    sent: u64,
    /// How late the latest send was against its schedule: large values mean
    /// the load generator could not keep up (its latencies still count
    /// from the schedule).
    max_send_lag_us: u64,
}

#[derive(Serialize)]
struct WatchReport {
    watchers: usize,
    orders: usize,
    connections: usize,
    /// From the first WatchOrder call to every watcher's first event.
    open_ms: f64,
    open_failed: usize,
    /// Server memory with every stream open, before any update.
    server_rss_kib_open: Option<u64>,
    /// Updates sent in the window (each one an event for its order's watchers).
    events_sent: u64,
    deliveries_expected: u64,
    deliveries_received: u64,
    /// From the UpdateOrder's send to a watcher's receipt of that version.
    delivery_latency: Option<Summary>,
    /// Errors that ended or refused streams, by code.
    stream_errors: BTreeMap<String, u64>,
    /// Streams opened again after they broke (mix).
    resumed: u64,
    /// Events that did not follow the watcher's previous one (a version
    /// lost or repeated, resumes included): must be 0.
    out_of_order: u64,
    /// Stream opens sent again because they never left this client.
    resent: u64,
    /// Every event received (mix: the followers' count).
    events_seen: u64,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.concurrency == 0 {
        anyhow::bail!("--connections and --concurrency must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        anyhow::bail!("--rate must be more than 0");
    }
    let watchers = match args.call {
        Call::Watch => args.watchers.unwrap_or(100),
        Call::Mix => args.watchers.unwrap_or(10),
        _ => args.watchers.unwrap_or(0),
    };
    let watch_connections = args
        .watch_connections
        .unwrap_or_else(|| watchers.div_ceil(100))
        .max(1);
    let connections = if watchers > 0 {
        args.connections.max(watch_connections)
    } else {
        args.connections
    };
    let target = Arc::new(Target::connect(&args.connect, connections).await?);

    // The orders the run reads, updates and watches.
    let pool = match (&args.order_id, args.call) {
        (Some(id), Call::Get) => vec![id.clone()],
        (_, Call::Register) => Vec::new(),
        (_, Call::Get) => workload::register_orders(&target, 1).await?,
        (_, Call::Watch | Call::Mix) => {
            workload::register_orders(&target, args.watch_orders.max(1)).await?
        }
    };

    let progress = progress_bar(&args);
    if args.call == Call::Watch {
        return fanout_run(&args, target, pool, watchers, watch_connections, progress).await;
    }

    let ctx = Arc::new(Ctx {
        target: target.clone(),
        work: Workload::new(args.call, pool.clone(), args.typed),
        phase: AtomicU8::new(if args.warmup.is_zero() {
            MEASURING
        } else {
            WARMUP
        }),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        tickets: AtomicU64::new(0),
        requests: args.requests,
    });

    // Mix: followers on the pool's orders, resuming across broken streams.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fanout = Arc::new(watch::Fanout::new(pool, watchers));
    let followers: Vec<_> = (0..watchers)
        .map(|j| {
            tokio::spawn(watch::watcher(
                target.clone(),
                fanout.clone(),
                j % fanout.orders.len().max(1),
                j % watch_connections,
                watchers,
                true,
                stop_rx.clone(),
            ))
        })
        .collect();

    let ticker = spawn_progress(progress.clone(), ctx.clone(), &args);
    let (stats, window, server, client_cpu, open_loop) = match args.rate {
        None => closed_loop(&ctx, &args).await,
        Some(rate) => open_loop(&ctx, &args, rate).await,
    };
    let _ = stop_tx.send(true);
    for f in followers {
        let _ = f.await;
    }
    ticker.abort();
    progress.finish_and_clear();

    let seconds = window.as_secs_f64();
    let mut all = stats::histogram();
    let mut codes = [0u64; 17];
    for s in &stats.ops {
        all.add(&s.latency).expect("same bounds");
        for (a, b) in codes.iter_mut().zip(s.codes) {
            *a += b;
        }
    }
    let total = stats.total();
    let server = server.map(|mut s| {
        if let (Some(cpu), true) = (s.cpu_seconds, total > 0) {
            s.cpu_us_per_call = Some(cpu * 1e6 / total as f64);
        }
        s
    });
    let watch = (watchers > 0).then(|| WatchReport {
        watchers,
        orders: fanout.orders.len(),
        connections: watch_connections,
        open_ms: 0.0,
        open_failed: fanout.open_failed.load(Ordering::Relaxed),
        server_rss_kib_open: None,
        events_sent: 0,
        deliveries_expected: 0,
        deliveries_received: 0,
        delivery_latency: None,
        stream_errors: stats::errors(&fanout.stream_errors.lock().expect("errors lock")),
        resumed: fanout.resumed.load(Ordering::Relaxed),
        out_of_order: fanout.out_of_order.load(Ordering::Relaxed),
        resent: fanout.resent.load(Ordering::Relaxed),
        events_seen: fanout.events_seen.load(Ordering::Relaxed),
    });
    let report = Report {
        call: args.call.name(),
        endpoint: args.connect.endpoint.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        connections: target.connections(),
        concurrency: args.concurrency,
        rate: args.rate,
        orders: fanout.orders.clone(),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: seconds,
        requests: total,
        ok: codes[0],
        errors: stats::errors(&codes),
        resent: ctx.work.resent.load(Ordering::Relaxed),
        rps: total as f64 / seconds,
        latency: Summary::of(&all),
        by_call: stats::by_call(&stats, seconds),
        open_loop,
        watch,
        server,
        client_cpu_percent: client_cpu,
    };
    print_report(&report, args.json)
}

type RunResult = (
    Stats,
    Duration,
    Option<procfs::ServerReport>,
    Option<f64>,
    Option<OpenLoopReport>,
);

/// Samples the server's memory every 100 ms until dropped.
struct ServerSampler {
    pid: u32,
    cpu: procfs::CpuMeter,
    start: Option<u64>,
    max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerSampler {
    fn start(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let max = Arc::new(AtomicU64::new(0));
        let start = procfs::rss_kib(pid);
        let task = tokio::spawn({
            let max = max.clone();
            async move {
                loop {
                    if let Some(rss) = procfs::rss_kib(pid) {
                        max.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Some(Self {
            pid,
            cpu: procfs::CpuMeter::start(Some(pid)),
            start,
            max,
            task,
        })
    }

    fn finish(self) -> procfs::ServerReport {
        self.task.abort();
        let end = procfs::rss_kib(self.pid);
        let max = self.max.load(Ordering::Relaxed).max(end.unwrap_or(0));
        procfs::ServerReport {
            pid: self.pid,
            rss_kib_start: self.start,
            rss_kib_max: (max > 0).then_some(max),
            rss_kib_end: end,
            cpu_percent: self.cpu.percent(),
            cpu_seconds: self.cpu.used(),
            cpu_us_per_call: None,
        }
    }
}

/// `concurrency` workers, each with one call in flight. Calls completed
/// while measuring are recorded; the window is from the end of the warm-up
/// to the end of the duration (or to the last of `--requests` calls).
async fn closed_loop(ctx: &Arc<Ctx>, args: &RunArgs) -> RunResult {
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let ctx = ctx.clone();
            let stride = args.concurrency as u64;
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut conn = ctx.target.conn(w);
                let mut i = w as u64;
                loop {
                    let phase = ctx.phase();
                    if phase == DONE {
                        break;
                    }
                    if let (MEASURING, Some(limit)) = (phase, ctx.requests)
                        && ctx.tickets.fetch_add(1, Ordering::Relaxed) >= limit
                    {
                        break;
                    }
                    let op = ctx.work.op(i);
                    let start = Instant::now();
                    let result = ctx.work.call(&ctx.target, &mut conn, op, i).await;
                    let latency = start.elapsed();
                    let code = result.map_or_else(|s| s.code(), |()| tonic::Code::Ok);
                    ctx.completed.fetch_add(1, Ordering::Relaxed);
                    if code != tonic::Code::Ok {
                        ctx.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if phase == MEASURING && ctx.phase() == MEASURING {
                        stats.record(op, latency, code);
                    }
                    i += stride;
                }
                stats
            })
        })
        .collect();

    if ctx.phase() == WARMUP {
        tokio::time::sleep(args.warmup).await;
    }
    let sampler = ServerSampler::start(args.server_pid);
    let client_cpu = procfs::CpuMeter::start(None);
    let window_start = Instant::now();
    ctx.phase.store(MEASURING, Ordering::Release);
    let joined = if ctx.requests.is_some() {
        let joined = futures::future::join_all(workers).await;
        ctx.phase.store(DONE, Ordering::Release);
        joined
    } else {
        tokio::time::sleep(args.duration).await;
        ctx.phase.store(DONE, Ordering::Release);
        // Calls still in flight end within their deadline; they are not counted.
        futures::future::join_all(workers).await
    };
    // In duration mode the window ended when DONE was set, not when the
    // last in-flight call came back.
    let window = match ctx.requests {
        Some(_) => window_start.elapsed(),
        None => args.duration,
    };
    let client_cpu = client_cpu.percent();
    let server = sampler.map(ServerSampler::finish);
    let mut stats = Stats::default();
    for s in joined.into_iter().flatten() {
        stats.merge(&s);
    }
    (stats, window, server, client_cpu, None)
}

/// Calls sent on a fixed schedule, each as its own task, whether or not
/// earlier ones have come back (at most `concurrency` in flight).
async fn open_loop(ctx: &Arc<Ctx>, args: &RunArgs, rate: f64) -> RunResult {
    let shared = Arc::new(Mutex::new(Stats::default()));
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let t0 = Instant::now();
    let measure_from = t0 + args.warmup;
    let end = args
        .requests
        .is_none()
        .then(|| measure_from + args.duration);
    let mut sampler = None;
    let mut client_cpu = None;
    let mut sent = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut n = 0u64;
    let mut window_open = false;
    loop {
        let intended = t0 + Duration::from_secs_f64(n as f64 / rate);
        let measured = intended >= measure_from;
        if measured && !window_open {
            window_open = true;
            // Sampling starts when the window does.
            if Instant::now() < intended {
                tokio::time::sleep_until(intended).await;
            }
            sampler = ServerSampler::start(args.server_pid);
            client_cpu = Some(procfs::CpuMeter::start(None));
            ctx.phase.store(MEASURING, Ordering::Release);
        }
        if end.is_some_and(|end| intended >= end) || args.requests.is_some_and(|r| sent >= r) {
            break;
        }
        if Instant::now() < intended {
            tokio::time::sleep_until(intended).await;
        }
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if measured {
            max_lag = max_lag.max(Instant::now().saturating_duration_since(intended));
            sent += 1;
        }
        let ctx2 = ctx.clone();
        let shared = shared.clone();
        let i = n;
        tokio::spawn(async move {
            let mut conn = ctx2.target.conn(i as usize);
            let op = ctx2.work.op(i);
            let result = ctx2.work.call(&ctx2.target, &mut conn, op, i).await;
            let latency = intended.elapsed();
            let code = result.map_or_else(|s| s.code(), |()| tonic::Code::Ok);
            ctx2.completed.fetch_add(1, Ordering::Relaxed);
            if code != tonic::Code::Ok {
                ctx2.errors.fetch_add(1, Ordering::Relaxed);
            }
            if measured {
                shared.lock().expect("stats lock").record(op, latency, code);
            }
            drop(permit);
        });
        n += 1;
    }
    // Wait for the calls in flight (each ends by its deadline).
    let _ = permits.acquire_many(args.concurrency as u32).await;
    ctx.phase.store(DONE, Ordering::Release);
    let window = match end {
        Some(_) => args.duration,
        None => measure_from.elapsed(),
    };
    let client_cpu = client_cpu.and_then(|c| c.percent());
    let server = sampler.map(ServerSampler::finish);
    let stats = std::mem::take(&mut *shared.lock().expect("stats lock"));
    (
        stats,
        window,
        server,
        client_cpu,
        Some(OpenLoopReport {
            sent,
            max_send_lag_us: stats::micros(max_lag),
        }),
    )
}

/// `--call watch`: open every watcher, then update the watched orders at
/// `--event-rate` and measure how long each version takes to reach each
/// watcher.
async fn fanout_run(
    args: &RunArgs,
    target: Arc<Target>,
    orders: Vec<String>,
    watchers: usize,
    watch_connections: usize,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    let fanout = Arc::new(watch::Fanout::new(orders, watchers));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let open_started = Instant::now();
    let handles: Vec<_> = (0..watchers)
        .map(|j| {
            tokio::spawn(watch::watcher(
                target.clone(),
                fanout.clone(),
                j % fanout.orders.len(),
                j % watch_connections,
                watchers,
                false,
                stop_rx.clone(),
            ))
        })
        .collect();
    progress.set_message(format!("opening {watchers} watchers"));
    if watchers > 0
        && tokio::time::timeout(Duration::from_secs(60), fanout.all_open.notified())
            .await
            .is_err()
    {
        anyhow::bail!(
            "only {} of {watchers} watchers opened within 60 s",
            fanout.opened.load(Ordering::Relaxed)
        );
    }
    let open_ms = open_started.elapsed().as_secs_f64() * 1000.0;
    // Let the server settle the new streams' memory before reading it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_open = args.server_pid.and_then(procfs::rss_kib);

    let k = fanout.orders.len();
    let period = Duration::from_secs_f64(k as f64 / args.event_rate.max(0.001));
    let updaters: Vec<_> = (0..k)
        .map(|i| {
            tokio::spawn(watch::updater(
                target.clone(),
                fanout.clone(),
                i,
                period,
                period.mul_f64(i as f64 / k as f64),
                stop_rx.clone(),
            ))
        })
        .collect();
    let ticker = tokio::spawn({
        let progress = progress.clone();
        let fanout = fanout.clone();
        let total = args.warmup + args.duration;
        let started = Instant::now();
        async move {
            loop {
                progress.set_position(started.elapsed().as_millis() as u64);
                progress.set_message(format!(
                    "{} events received by {watchers} watchers ({:?} of {:?})",
                    fanout.events_seen.load(Ordering::Relaxed),
                    started.elapsed().min(total),
                    total
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(args.warmup).await;
    let sampler = ServerSampler::start(args.server_pid);
    let client_cpu = procfs::CpuMeter::start(None);
    fanout.measuring.store(true, Ordering::Release);
    tokio::time::sleep(args.duration).await;
    fanout.measuring.store(false, Ordering::Release);
    let server = sampler.map(ServerSampler::finish);
    let client_cpu = client_cpu.percent();
    // Updates made from now on are not measured. Give the measured ones up
    // to 5 s to reach every watcher, then stop updaters and watchers.
    let mut update_stats = Stats::default();
    let grace = Instant::now() + Duration::from_secs(5);
    while Instant::now() < grace
        && fanout.deliveries_received.load(Ordering::Relaxed)
            < fanout.deliveries_expected.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    for u in updaters {
        if let Ok(s) = u.await {
            update_stats.merge(&s);
        }
    }
    let mut latency = stats::histogram();
    for h in futures::future::join_all(handles)
        .await
        .into_iter()
        .flatten()
    {
        latency.add(&h).expect("same bounds");
    }
    ticker.abort();
    progress.finish_and_clear();

    let seconds = args.duration.as_secs_f64();
    let updates = &update_stats.ops[Op::Update as usize];
    let report = Report {
        call: Call::Watch.name(),
        endpoint: args.connect.endpoint.clone(),
        mode: "open",
        connections: target.connections(),
        concurrency: k,
        rate: Some(args.event_rate),
        orders: fanout.orders.clone(),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: seconds,
        requests: update_stats.total(),
        ok: updates.codes[0],
        errors: stats::errors(&updates.codes),
        resent: 0,
        rps: update_stats.total() as f64 / seconds,
        latency: Summary::of(&updates.latency),
        by_call: stats::by_call(&update_stats, seconds),
        open_loop: None,
        watch: Some(WatchReport {
            watchers,
            orders: k,
            connections: watch_connections,
            open_ms,
            open_failed: fanout.open_failed.load(Ordering::Relaxed),
            server_rss_kib_open: rss_open,
            events_sent: fanout.events_sent.load(Ordering::Relaxed),
            deliveries_expected: fanout.deliveries_expected.load(Ordering::Relaxed),
            deliveries_received: fanout.deliveries_received.load(Ordering::Relaxed),
            delivery_latency: Summary::of(&latency),
            stream_errors: stats::errors(&fanout.stream_errors.lock().expect("errors lock")),
            resumed: fanout.resumed.load(Ordering::Relaxed),
            out_of_order: fanout.out_of_order.load(Ordering::Relaxed),
            resent: fanout.resent.load(Ordering::Relaxed),
            events_seen: fanout.events_seen.load(Ordering::Relaxed),
        }),
        server,
        client_cpu_percent: client_cpu,
    };
    print_report(&report, args.json)
}

fn progress_bar(args: &RunArgs) -> ProgressBar {
    if args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match args.requests {
        Some(n) if args.call != Call::Watch => ProgressBar::new(n),
        _ => ProgressBar::new((args.warmup + args.duration).as_millis() as u64),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// Redraws the bar every 100 ms from the shared counters.
fn spawn_progress(bar: ProgressBar, ctx: Arc<Ctx>, args: &RunArgs) -> tokio::task::JoinHandle<()> {
    let by_count = args.requests.is_some();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let done = ctx.completed.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64();
            last = (now, done);
            if by_count {
                bar.set_position(ctx.tickets.load(Ordering::Relaxed));
            } else {
                bar.set_position(started.elapsed().as_millis() as u64);
            }
            let phase = match ctx.phase() {
                WARMUP => "warm-up",
                MEASURING => "measuring",
                _ => "finishing",
            };
            bar.set_message(format!(
                "{phase}: {rate:.0} calls/s, {done} done, {} errors",
                ctx.errors.load(Ordering::Relaxed)
            ));
        }
    })
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    println!(
        "{} ({} loop) against {}: {} connections, {} in flight{}",
        report.call,
        report.mode,
        report.endpoint,
        report.connections,
        report.concurrency,
        report
            .rate
            .map(|r| format!(", {r} a second"))
            .unwrap_or_default()
    );
    println!(
        "  {:.1} calls/s: {} calls in {:.2} s, {} OK, {} errors",
        report.rps,
        report.requests,
        report.duration_s,
        report.ok,
        report.requests - report.ok
    );
    if report.resent > 0 {
        println!(
            "  {} calls sent again: they never left this client (connection closed first)",
            report.resent
        );
    }
    for (method, call) in &report.by_call {
        println!("  {method:<14} {:>10.1}/s", call.rps);
        if let Some(l) = &call.latency {
            println!("    {}", l.line());
        }
        for (code, n) in &call.errors {
            println!("    error {code}: {n}");
        }
    }
    if let Some(o) = &report.open_loop {
        println!(
            "  sent {} on schedule; latest send {:.3} ms behind it",
            o.sent,
            o.max_send_lag_us as f64 / 1000.0
        );
    }
    if let Some(w) = report
        .watch
        .as_ref()
        .filter(|_| report.call == Call::Mix.name())
    {
        println!(
            "  {} watchers following {} orders: {} events received ({} out of order), {} streams resumed, {} failed to open",
            w.watchers, w.orders, w.events_seen, w.out_of_order, w.resumed, w.open_failed
        );
        for (code, n) in &w.stream_errors {
            println!("  stream error {code}: {n}");
        }
    }
    if let Some(w) = report
        .watch
        .as_ref()
        .filter(|_| report.call == Call::Watch.name())
    {
        println!(
            "  {} watchers on {} orders over {} connections, all open after {:.0} ms ({} failed)",
            w.watchers, w.orders, w.connections, w.open_ms, w.open_failed
        );
        if let Some(rss) = w.server_rss_kib_open {
            println!("  server memory with every stream open: {}", mib(rss));
        }
        println!(
            "  {} updates, {} of {} deliveries received, {} events in all, {} resumed",
            w.events_sent, w.deliveries_received, w.deliveries_expected, w.events_seen, w.resumed
        );
        if let Some(l) = &w.delivery_latency {
            println!("  delivery {}", l.line());
        }
        for (code, n) in &w.stream_errors {
            println!("  stream error {code}: {n}");
        }
    }
    if let Some(s) = &report.server {
        println!(
            "  server pid {}: RSS {} at start, {} at most, {} at end; CPU {}{}",
            s.pid,
            s.rss_kib_start.map(mib).unwrap_or_default(),
            s.rss_kib_max.map(mib).unwrap_or_default(),
            s.rss_kib_end.map(mib).unwrap_or_default(),
            s.cpu_percent
                .map(|c| format!("{c:.0}% of a core"))
                .unwrap_or_default(),
            s.cpu_us_per_call
                .map(|c| format!(", {c:.1} µs per call"))
                .unwrap_or_default()
        );
    }
    if let Some(c) = report.client_cpu_percent {
        println!("  load generator CPU: {c:.0}% of a core");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "orders-load",
            "--endpoint",
            "http://127.0.0.1:1",
            "--call",
            "register",
            "--rate",
            "100",
            "--requests",
            "50",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.call, Call::Register);
        assert_eq!(cli.run.requests, Some(50));
        let cli =
            Cli::try_parse_from(["orders-load", "startup", "--", "server", "--flag"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Startup(_))));
        assert!(
            Cli::try_parse_from(["orders-load", "--duration", "5s", "--requests", "9"]).is_err()
        );
    }
}
