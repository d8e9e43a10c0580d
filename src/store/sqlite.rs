//! The SQLite store: one process owns the file. Writes go through the
//! writer thread (`group_commit.rs`), reads through a read-only pool and the
//! current-order cache (`cache.rs`), and the change feed is in-process.

use super::cache::OrderCache;
use super::feed::{self, Change};
use super::group_commit::{self, MAX_GROUP, Writer};
use super::schema;
use super::sql_store::{ACQUIRE_TIMEOUT, sql_store};
use super::{Idempotency, Inserted, Result, StoreError, StoreOptions, WriteCounter};
use crate::domain::{Order, OrderId};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// SQLite: one file, WAL mode, `synchronous = FULL` so an acknowledged order
/// survives a crash or power loss. Writes go through one writer task on a
/// pool of one connection (SQLite has one writer anyway; queuing in-process
/// beats BUSY retries), which commits the writes waiting together in one
/// transaction (group commit, see `group_commit.rs`); reads go through a
/// pool of many (WAL lets them run beside the writer).
pub struct SqliteStore {
    read: SqlitePool,
    writer: Writer,
    written: std::sync::Arc<WriteCounter>,
    /// Current orders (`None` with `database.cache_orders = 0`).
    cache: Option<std::sync::Arc<OrderCache>>,
    feed: broadcast::Sender<Change>,
    cursor_key: Vec<u8>,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(parent) = connect.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Database(e.into()))?;
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect.clone())
            .await
            .map_err(StoreError::classify)?;
        schema::migrate_sqlite(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect.clone().read_only(true))
            .await
            .map_err(StoreError::classify)?;
        let cursor_key = Self::load_cursor_key(&write).await?;
        // Migrated; from here on the writer thread's own connection writes.
        write.close().await;
        let path = connect.get_filename().to_owned();
        let (writer_conn, checkpoint_conn) = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((group_commit::open(&path)?, group_commit::open(&path)?))
        })
        .await
        .map_err(|e| StoreError::Database(sqlx::Error::Io(e.into())))??;
        let feed = feed::channel();
        let max_group = if options.group_commit { MAX_GROUP } else { 1 };
        let written = std::sync::Arc::new(WriteCounter::default());
        let cache = (options.cache_orders > 0)
            .then(|| std::sync::Arc::new(OrderCache::new(options.cache_orders)));
        let writer = Writer::start(
            writer_conn,
            checkpoint_conn,
            feed.clone(),
            written.clone(),
            cache.clone(),
            max_group,
        )?;
        Ok(Self {
            read,
            writer,
            written,
            cache,
            feed,
            cursor_key,
        })
    }

    fn reader(&self) -> &SqlitePool {
        &self.read
    }

    async fn get_current(&self, id: &OrderId) -> Result<Option<Order>> {
        let Some(cache) = &self.cache else {
            return self.read_current(id).await;
        };
        if let Some(order) = cache.get(id) {
            return Ok(Some(order));
        }
        let ticket = cache.ticket();
        let order = self.read_current(id).await?;
        if let Some(order) = &order {
            cache.fill(ticket, order);
        }
        Ok(order)
    }

    async fn write_insert(
        &self,
        order: &Order,
        idempotency: Option<Idempotency<'_>>,
    ) -> Result<Inserted> {
        let key = idempotency.map(|i| (i.request_id.to_owned(), i.fingerprint.to_owned()));
        self.writer.insert(order.clone(), key).await
    }

    async fn write_commit(&self, base_version: i64, versions: &[Order]) -> Result<()> {
        if versions.is_empty() {
            return Ok(());
        }
        self.writer.commit(base_version, versions.to_vec()).await
    }
}

sql_store!(SqliteStore, Sqlite);
