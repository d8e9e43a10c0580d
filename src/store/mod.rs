//! Durable storage behind one [`Store`] trait, with two real implementations:
//! SQLite (embedded, the default; one process) and PostgreSQL (several
//! replicas sharing one database).
//!
//! Both keep the current order in `orders` and every version in
//! `order_versions`, so watchers can resume from any stored version. Every
//! committed change is announced on the change feed ([`Change`]): in-process
//! for SQLite, through `LISTEN/NOTIFY` for PostgreSQL so every replica hears
//! every other replica's changes. The feed only says *that* an order changed;
//! watchers read the versions themselves from `order_versions`, so a missed or
//! coalesced notification can never lose an event.

mod cache;
mod checkpoint;
mod feed;
mod group_commit;
mod metrics;
mod postgres;
mod schema;
mod sql_store;
mod sqlite;

pub use metrics::StoreMetrics;

pub use feed::Change;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::domain::{CustomerId, Order, OrderId, Status};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What happened to a registration.
#[derive(Debug)]
pub enum Inserted {
    /// A new order was stored.
    Created,
    /// The caller already registered an order with this `request_id`; its
    /// payload fingerprint tells a retry from a reused key.
    Existing {
        order: Box<Order>,
        fingerprint: String,
    },
}

/// The idempotency key of a registration: `(customer, request_id)` is unique.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub request_id: &'a str,
    pub fingerprint: &'a str,
}

/// One page of a keyset listing: ids are time-ordered, so `after` is the last
/// id of the previous page (no OFFSET, stable under inserts).
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub customer: Option<CustomerId>,
    pub status: Option<Status>,
    pub after: Option<OrderId>,
    pub limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The order changed since it was read (optimistic concurrency).
    #[error("the order changed concurrently")]
    Conflict,
    /// The database cannot be reached right now; safe to retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("stored order is unreadable")]
    Corrupt(#[from] serde_json::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// From the SQLite writer thread's connection (`group_commit.rs`).
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The call this write was for had ended before the write's commit
    /// point (`grpc_platform::middleware::commit`): nothing was written.
    #[error("the call ended before its change was committed")]
    Abandoned,
    /// The shared transaction this write was grouped into (group commit)
    /// failed as a whole: nothing of it was stored.
    #[error("the shared write transaction failed")]
    Group {
        transient: bool,
        #[source]
        cause: Arc<StoreError>,
    },
}

impl StoreError {
    /// Trouble reaching the database, worth a retry (UNAVAILABLE).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Group { transient, .. } => *transient,
            // The write lock stayed taken past busy_timeout.
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }

    /// Splits transient connection trouble (UNAVAILABLE, retryable) from bugs.
    pub(crate) fn classify(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let transient = match &err {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
            E::Database(db) => {
                let code = db.code().unwrap_or_default();
                // PostgreSQL: connection exceptions (08), shutdown (57P01-57P03),
                // serialization trouble (40001/40P01). SQLite: BUSY (5), LOCKED (6).
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
                    || code == "5"
                    || code == "6"
            }
            _ => false,
        };
        if transient {
            StoreError::Unavailable(err)
        } else {
            StoreError::Database(err)
        }
    }
}

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
pub(crate) struct WriteCounter {
    transactions: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
}

impl WriteCounter {
    pub(crate) fn committed(&self, writes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.transactions.fetch_add(1, Relaxed);
        self.writes.fetch_add(writes, Relaxed);
    }

    pub(crate) fn stats(&self) -> WriteStats {
        use std::sync::atomic::Ordering::Relaxed;
        WriteStats {
            transactions: self.transactions.load(Relaxed),
            writes: self.writes.load(Relaxed),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new order at version 1, or finds the caller's earlier order
    /// with the same `request_id` (decided by a unique constraint, so
    /// concurrent retries yield exactly one order).
    async fn insert(&self, order: &Order, idempotency: Option<Idempotency<'_>>)
    -> Result<Inserted>;

    async fn get(&self, id: &OrderId) -> Result<Option<Order>>;

    /// One page, in id (creation) order; at most `limit` orders.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Order>>;

    /// Stores consecutive new versions of one order, atomically, provided the
    /// order is still at `base_version`; else [`StoreError::Conflict`].
    async fn commit(&self, base_version: i64, versions: &[Order]) -> Result<()>;

    /// Every stored version after `after_version`, oldest first.
    async fn history(&self, id: &OrderId, after_version: i64) -> Result<Vec<Order>>;

    /// A key all replicas share, for signing page tokens.
    fn cursor_key(&self) -> &[u8];

    /// A round trip to the database (readiness).
    async fn ping(&self) -> Result<()>;

    /// Announcements of committed changes, from any replica.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// The connection pool serving reads (for the pool gauges).
    fn pool_stats(&self) -> PoolStats;

    /// Committed writes and transactions (for the group-commit counters).
    fn write_stats(&self) -> WriteStats;
}

/// How to open a store (from the `database.*` settings).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Size of the pool serving reads.
    pub max_connections: u32,
    /// SQLite: commit the writes that wait together in one transaction (one
    /// fsync for the group). `false` gives one transaction per write, the
    /// baseline the benchmarks compare with. PostgreSQL groups concurrent
    /// commits in its own WAL writer, so it ignores this.
    pub group_commit: bool,
    /// SQLite: current orders kept in memory for reads (0: none). The
    /// process owns the file, so its writer keeps them current; PostgreSQL
    /// ignores this (other replicas write too).
    pub cache_orders: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            group_commit: true,
            cache_orders: 10_000,
        }
    }
}

/// Opens the store a `database.url` names and runs its migrations.
pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, options).await?))
    } else {
        Ok(Arc::new(SqliteStore::connect(url, options).await?))
    }
}
