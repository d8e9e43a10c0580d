//! `orders-load startup`: how long a server takes from being started to
//! answering SERVING on its health service, and its resident memory once
//! idle. Spawns the command itself, so the clock starts at the spawn, and
//! polls the health service every 2 ms.

use crate::procfs;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(clap::Args, Debug)]
pub struct StartupArgs {
    /// The health service to poll (plaintext, e.g. the admin port).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    health: String,
    /// Health service name that must answer SERVING.
    #[arg(long, default_value = "readiness")]
    service: String,
    /// How many times to start the server.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// How long to leave the server idle before reading its memory.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    settle: Duration,
    /// Give up on a start after this long.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    limit: Duration,
    /// Append the server's output here (default: discarded).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The server command and its arguments (after `--`); it inherits our
    /// environment. Wrap it in `taskset -c N` to pin it (taskset execs, so
    /// the process measured is the server).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Serialize)]
struct Start {
    ms: f64,
    idle_rss_kib: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    command: Vec<String>,
    starts: Vec<Start>,
    median_ms: f64,
    median_idle_rss_kib: Option<u64>,
}

pub async fn run(args: StartupArgs) -> anyhow::Result<()> {
    let mut starts = Vec::new();
    for _ in 0..args.repeat.max(1) {
        starts.push(once(&args).await?);
    }
    let mut ms: Vec<f64> = starts.iter().map(|s| s.ms).collect();
    ms.sort_by(f64::total_cmp);
    let mut rss: Vec<u64> = starts.iter().filter_map(|s| s.idle_rss_kib).collect();
    rss.sort_unstable();
    let report = Report {
        command: args.command.clone(),
        median_ms: ms[ms.len() / 2],
        median_idle_rss_kib: rss.get(rss.len() / 2).copied(),
        starts,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (i, s) in report.starts.iter().enumerate() {
            println!(
                "start {}: SERVING after {:.1} ms, idle RSS {}",
                i + 1,
                s.ms,
                s.idle_rss_kib
                    .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_else(|| "unknown".into())
            );
        }
        println!("median: {:.1} ms", report.median_ms);
    }
    Ok(())
}

async fn once(args: &StartupArgs) -> anyhow::Result<Start> {
    let output = || -> anyhow::Result<Stdio> {
        Ok(match &args.log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open --log {}", path.display()))?
                .into(),
            None => Stdio::null(),
        })
    };
    let endpoint = Endpoint::from_shared(args.health.clone())
        .with_context(|| format!("invalid --health {:?}", args.health))?
        .connect_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(output()?)
        .stderr(output()?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {:?}", args.command[0]))?;
    let pid = child.id().context("the server exited at once")?;
    let mut health: Option<HealthClient<tonic::transport::Channel>> = None;
    let ms = loop {
        if started.elapsed() > args.limit {
            anyhow::bail!("not SERVING after {:?}", args.limit);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the server exited with {status} before SERVING");
        }
        if health.is_none() {
            health = endpoint.connect().await.ok().map(HealthClient::new);
        }
        if let Some(client) = &mut health {
            let request = HealthCheckRequest {
                service: args.service.clone(),
            };
            match client.check(request).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                    break started.elapsed().as_secs_f64() * 1000.0;
                }
                Ok(_) => {}
                // A connection made before the server was ready may be gone.
                Err(_) => health = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(args.settle).await;
    let idle_rss_kib = procfs::rss_kib(pid);
    stop(&mut child, pid).await;
    Ok(Start { ms, idle_rss_kib })
}

/// SIGTERM (through `kill`, as `std` only sends SIGKILL), then SIGKILL if
/// the server has not exited after 15 s.
async fn stop(child: &mut tokio::process::Child, pid: u32) {
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
