//! What every store promises: the [`Store`] trait, the values its calls take
//! and return, and how a store is opened.

use super::error::Result;
use super::feed::{Change, OrderChanges};
use super::stats::{PoolStats, WriteStats};
use crate::domain::{CustomerId, Order, OrderId, Status};
use async_trait::async_trait;
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new order at version 1, or finds the caller's earlier order
    /// with the same `request_id` (decided by a unique constraint, so
    /// concurrent retries yield exactly one order).
    async fn insert(&self, order: &Order, idempotency: Option<Idempotency<'_>>)
    -> Result<Inserted>;

    /// The order's current version, shared (a cache may hold it too).
    async fn get(&self, id: &OrderId) -> Result<Option<std::sync::Arc<Order>>>;

    /// One page, in id (creation) order; at most `limit` orders.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Order>>;

    /// Stores consecutive new versions of one order, atomically, provided the
    /// order is still at `base_version`; else [`StoreError::Conflict`](crate::store::StoreError::Conflict).
    async fn commit(&self, base_version: i64, versions: &[Order]) -> Result<()>;

    /// Every stored version after `after_version`, oldest first.
    async fn history(&self, id: &OrderId, after_version: i64) -> Result<Vec<Order>>;

    /// A key all replicas share, for signing page tokens.
    fn cursor_key(&self) -> &[u8];

    /// A round trip to the database (readiness).
    async fn ping(&self) -> Result<()>;

    /// Announcements of committed changes, from any replica.
    fn changes(&self) -> broadcast::Receiver<Change>;

    /// Announcements of one order's committed changes, from any replica:
    /// a follower of one order is woken by its changes only.
    fn order_changes(&self, id: &OrderId) -> OrderChanges;

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
