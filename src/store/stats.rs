//! What a store reports about itself, for its metrics (`metrics.rs`).

/// A snapshot of a connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub max: u32,
    pub open: u32,
    pub idle: u32,
    pub in_use: u32,
}

/// Writes and the transactions that committed them, since the store opened:
/// `writes / transactions` is the mean group size of group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Committed write transactions.
    pub transactions: u64,
    /// Writes (registrations, updates) those transactions carried.
    pub writes: u64,
}

/// Counts committed writes; shared by the stores and the writer task.
#[derive(Debug, Default)]
pub(super) struct WriteCounter {
    transactions: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
}

impl WriteCounter {
    pub(super) fn committed(&self, writes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.transactions.fetch_add(1, Relaxed);
        self.writes.fetch_add(writes, Relaxed);
    }

    pub(super) fn stats(&self) -> WriteStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriteStats {
            transactions: self.transactions.load(Relaxed),
            writes: self.writes.load(Relaxed),
        }
    }
}
