//! What a run records: latencies in an HDR histogram (microseconds, three
//! significant digits, 1 µs to 10 min) and errors by gRPC code, per call
//! kind; merged from the workers at the end, so the hot path takes no lock.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

/// The calls a run makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get = 0,
    Register = 1,
    Update = 2,
    List = 3,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Get, Op::Register, Op::Update, Op::List];

    pub fn method(self) -> &'static str {
        match self {
            Op::Get => "GetOrder",
            Op::Register => "RegisterOrder",
            Op::Update => "UpdateOrder",
            Op::List => "ListOrders",
        }
    }
}

/// Highest latency recorded; longer ones are recorded as this.
const MAX_MICROS: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// One call kind's record.
pub struct OpStats {
    pub latency: Histogram<u64>,
    /// Indexed by gRPC code number (0 = OK is the count of successes).
    pub codes: [u64; 17],
}

impl OpStats {
    fn new() -> Self {
        Self {
            latency: histogram(),
            codes: [0; 17],
        }
    }
}

pub struct Stats {
    pub ops: Vec<OpStats>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            ops: Op::ALL.iter().map(|_| OpStats::new()).collect(),
        }
    }
}

impl Stats {
    /// Latency is kept for successful calls only: a refused call answered
    /// at once would otherwise make an overloaded server look fast. Errors
    /// are counted by code.
    pub fn record(&mut self, op: Op, latency: Duration, code: Code) {
        let s = &mut self.ops[op as usize];
        s.codes[code as usize] += 1;
        if code == Code::Ok {
            s.latency.saturating_record(micros(latency));
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            mine.latency
                .add(&theirs.latency)
                .expect("histograms with the same bounds");
            for (a, b) in mine.codes.iter_mut().zip(theirs.codes) {
                *a += b;
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.ops.iter().map(|s| s.codes.iter().sum::<u64>()).sum()
    }
}

/// Latency percentiles, in microseconds.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    /// One line for people: milliseconds.
    pub fn line(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (mean {:.3} ms)",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            self.mean_us / 1000.0
        )
    }
}

/// Errors by gRPC code name (`Unavailable`, `NotFound`, …), successes left out.
pub fn errors(codes: &[u64; 17]) -> BTreeMap<String, u64> {
    codes
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| (code_name(code as i32), *n))
        .collect()
}

/// The name gRPC's own tools print (and the service's metrics use).
pub fn code_name(code: i32) -> String {
    format!("{:?}", Code::from_i32(code))
}

/// One call kind in the report.
#[derive(Serialize)]
pub struct CallReport {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Completed calls (successes and errors) per second of the measured window.
    pub rps: f64,
    pub latency: Option<Summary>,
}

pub fn by_call(stats: &Stats, seconds: f64) -> BTreeMap<&'static str, CallReport> {
    Op::ALL
        .iter()
        .zip(&stats.ops)
        .filter(|(_, s)| s.codes.iter().sum::<u64>() > 0)
        .map(|(op, s)| {
            let n: u64 = s.codes.iter().sum();
            (
                op.method(),
                CallReport {
                    ok: s.codes[0],
                    errors: errors(&s.codes),
                    rps: n as f64 / seconds,
                    latency: Summary::of(&s.latency),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_add_counts_and_latencies() {
        let mut a = Stats::default();
        a.record(Op::Get, Duration::from_micros(100), Code::Ok);
        a.record(Op::Get, Duration::from_micros(5), Code::NotFound);
        let mut b = Stats::default();
        b.record(Op::Get, Duration::from_micros(300), Code::Ok);
        b.record(Op::Register, Duration::from_millis(2), Code::Unavailable);
        a.merge(&b);
        assert_eq!(a.total(), 4);
        let get = &a.ops[Op::Get as usize];
        assert_eq!(get.latency.len(), 2, "errors carry no latency");
        assert_eq!(get.latency.max(), 300);
        let errors = errors(&a.ops[Op::Register as usize].codes);
        assert_eq!(errors.get("Unavailable"), Some(&1));
        let calls = by_call(&a, 2.0);
        assert_eq!(calls["GetOrder"].ok, 2);
        assert_eq!(calls["GetOrder"].rps, 1.5);
        assert!(!calls.contains_key("ListOrders"));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let s = Summary::of(&h).unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.max_us, 1000);
        assert!(Summary::of(&histogram()).is_none());
    }
}
