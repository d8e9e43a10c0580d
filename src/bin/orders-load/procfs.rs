//! Resident memory and CPU time of a process, from Linux's `/proc`: the
//! server's (`--server-pid`), so one run reports what the load cost it, and
//! our own, so a run shows when the load generator is the bottleneck.
//! Read by hand: two fields of two text files need no crate.

use serde::Serialize;
use std::time::Instant;

/// `VmRSS` of `/proc/PID/status`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU time of every thread of a process, in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_cpu(&std::fs::read_to_string(path).ok()?)
}

/// `utime` and `stime` are fields 14 and 15 of `stat`, in clock ticks; the
/// command name (field 2) may hold spaces, so fields are counted after its
/// closing parenthesis. A tick is 1/100 s: USER_HZ is 100 on every Linux
/// architecture we run on (reading `sysconf(_SC_CLK_TCK)` would need libc
/// and `unsafe`).
fn parse_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is fields[0], so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU used by a process over an interval, as a share of one core.
pub struct CpuMeter {
    pid: Option<u32>,
    start: Option<f64>,
    at: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` (`None`: this process).
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            start: cpu_seconds(pid),
            at: Instant::now(),
        }
    }

    /// CPU seconds used since `start`, in whole clock ticks.
    pub fn used(&self) -> Option<f64> {
        Some(cpu_seconds(self.pid)? - self.start?)
    }

    /// Percent of one core since `start` (200 = two cores busy).
    pub fn percent(&self) -> Option<f64> {
        let used = self.used()?;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * used / wall)
    }
}

/// What the server used during the measured window.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ServerReport {
    pub pid: u32,
    pub rss_kib_start: Option<u64>,
    pub rss_kib_max: Option<u64>,
    pub rss_kib_end: Option<u64>,
    /// Share of one core; 100 means the server's core was busy all the time.
    pub cpu_percent: Option<f64>,
    /// Server CPU time (user + system, every thread) in the window, read
    /// from `/proc/PID/stat` at its start and end: whole 10 ms ticks.
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` divided by the calls completed in the window.
    pub cpu_us_per_call: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_cpu_from_proc_text() {
        let status = "Name:\torders-server\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(12345));
        assert_eq!(parse_rss("Name:\tx\n"), None);
        // The command name has a space and a parenthesis in it.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
    }

    #[test]
    fn reads_this_process() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(cpu_seconds(None).unwrap() >= 0.0);
    }
}
