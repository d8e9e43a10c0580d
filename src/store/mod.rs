//! Durable storage behind one [`Store`] trait, with two real implementations:
//! SQLite (embedded, the default; one process) and PostgreSQL (several
//! replicas sharing one database).
//!
//! Both keep the current order in `orders` and every version in
//! `order_versions`, so watchers can resume from any stored version. Every
//! committed change is announced on the change feed ([`Change`]): in-process
//! for SQLite, through `LISTEN/NOTIFY` for PostgreSQL so every replica hears
//! every other replica's changes. The feed says *that* an order changed (and
//! with SQLite, carries the new version); watchers read the versions
//! themselves from `order_versions` whenever an announcement does not carry
//! the very next one, so a missed or coalesced notification can never lose
//! an event.
//!
//! Files: `contract.rs` (the trait and its values), `error.rs`, `stats.rs`;
//! `schema.rs` (migrations and the statements both backends run);
//! `sql_store.rs` (the trait's implementation both share); `sqlite.rs` with
//! its writer thread (`group_commit.rs`), checkpointer (`checkpoint.rs`)
//! and cache (`cache.rs`); `postgres.rs`; `feed.rs`; `metrics.rs`. Imports
//! run one way: only this file names a backend, the backends name the
//! shared files, and no shared file names a backend.

mod cache;
mod checkpoint;
mod contract;
mod error;
mod feed;
mod group_commit;
mod metrics;
mod postgres;
mod schema;
mod sql_store;
mod sqlite;
mod stats;

pub use contract::{Idempotency, Inserted, ListQuery, Store, StoreOptions};
pub use error::{Result, StoreError};
pub use feed::{Change, OrderChanges};
pub use metrics::StoreMetrics;
pub use stats::{PoolStats, WriteStats};

use postgres::PostgresStore;
use sqlite::SqliteStore;
use std::sync::Arc;

/// Opens the store a `database.url` names and runs its migrations.
pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, options).await?))
    } else {
        Ok(Arc::new(SqliteStore::connect(url, options).await?))
    }
}
