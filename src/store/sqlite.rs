//! The SQLite store: one process owns the file. Writes go through the
//! writer thread (`group_commit.rs`), reads through a read-only pool and the
//! current-order cache (`cache.rs`), and the change feed is in-process.

use super::cache::OrderCache;
use super::contract::{Idempotency, Inserted, StoreOptions};
use super::error::{Result, StoreError};
use super::feed::Feed;
use super::group_commit::{self, MAX_GROUP, Writer};
use super::schema;
use super::sql_store::{ACQUIRE_TIMEOUT, sql_store};
use super::stats::WriteCounter;
use crate::domain::{Order, OrderId};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// SQLite: one file, WAL mode, `synchronous = FULL` so an acknowledged order
/// survives a crash or power loss. Writes go through one writer task on a
/// pool of one connection (SQLite has one writer anyway; queuing in-process
/// beats BUSY retries), which commits the writes waiting together in one
/// transaction (group commit, see `group_commit.rs`); reads go through a
/// pool of many (WAL lets them run beside the writer).
pub(super) struct SqliteStore {
    read: SqlitePool,
    writer: Writer,
    written: std::sync::Arc<WriteCounter>,
    /// Current orders (`None` with `database.cache_orders = 0`).
    cache: Option<std::sync::Arc<OrderCache>>,
    feed: std::sync::Arc<Feed>,
    cursor_key: Vec<u8>,
}

impl SqliteStore {
    pub(super) async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
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
        let feed = Feed::new();
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

    async fn get_current(&self, id: &OrderId) -> Result<Option<std::sync::Arc<Order>>> {
        let Some(cache) = &self.cache else {
            return Ok(self.read_current(id).await?.map(std::sync::Arc::new));
        };
        if let Some(order) = cache.get(id) {
            return Ok(Some(order));
        }
        let ticket = cache.ticket();
        let order = self.read_current(id).await?.map(std::sync::Arc::new);
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

/// Group commit and the checkpoints (`group_commit.rs`, `checkpoint.rs`),
/// tested through the store that runs them: the writer thread is only ever
/// started by [`SqliteStore::connect`], and what the tests check is what its
/// callers see (answers, the file on disk, the feed, the counters).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::order_of;
    use crate::store::Change;
    use crate::store::checkpoint;
    use crate::store::contract::Store;
    use crate::store::stats::WriteStats;
    use chrono::Utc;
    use rusqlite::Connection;
    use std::sync::Arc;

    async fn store(dir: &tempfile::TempDir, group_commit: bool) -> Arc<SqliteStore> {
        let url = format!("sqlite://{}", dir.path().join("orders.db").display());
        let options = StoreOptions {
            max_connections: 4,
            group_commit,
            ..Default::default()
        };
        Arc::new(SqliteStore::connect(&url, &options).await.unwrap())
    }

    /// Registers `n` orders at once; returns them.
    async fn register_together(store: &Arc<SqliteStore>, n: usize) -> Vec<Order> {
        let orders: Vec<Order> = (0..n).map(|_| order_of("alice")).collect();
        let calls = orders.iter().cloned().map(|order| {
            let store = store.clone();
            tokio::spawn(async move { store.insert(&order, None).await })
        });
        for result in futures::future::join_all(calls).await {
            assert!(matches!(result.unwrap().unwrap(), Inserted::Created));
        }
        orders
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_writes_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, true).await;
        let orders = register_together(&store, 200).await;
        // 200 orders are far fewer log pages than the writer's own
        // checkpoint waits for: only the checkpoint thread copies them into
        // the database file. Read that file alone (a copy, without its log).
        // A copy taken while a checkpoint writes the file can be torn
        // ("malformed"): that is "not yet", as is a count short of 200.
        let count =
            |copy: &std::path::Path| -> std::result::Result<i64, Box<dyn std::error::Error>> {
                std::fs::copy(dir.path().join("orders.db"), copy)?;
                let conn = Connection::open(copy)?;
                Ok(conn.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))?)
            };
        let mut found = Err("not read yet".into());
        for attempt in 0..50 {
            let copy = dir.path().join(format!("copy-{attempt}.db"));
            found = count(&copy);
            if matches!(found, Ok(n) if n == orders.len() as i64) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            found.ok(),
            Some(200),
            "the database file holds every committed order"
        );
    }

    /// The log is rewound, not grown for ever, while writes never stop: the
    /// checkpoint thread's passive checkpoints cannot rewind it under
    /// continuous commits, so the writer's own checkpoint at
    /// `WRITER_FRAMES` pages must (500 in tests, 16,000 in the server).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_stays_bounded_under_continuous_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, true).await;
        let frame = 4096 + 24; // a page and its frame header
        let threshold = checkpoint::WRITER_FRAMES as u64;
        let reader = Connection::open(dir.path().join("orders.db")).unwrap();
        let mut largest_log = 0;
        let mut batches = 0;
        // Until the database holds five times the threshold in pages: every
        // one of them went through the log, so without rewinding the log
        // would be at least that long.
        loop {
            register_together(&store, 200).await;
            batches += 1;
            let log = std::fs::metadata(dir.path().join("orders.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0);
            largest_log = largest_log.max(log);
            let pages: u64 = reader
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            if pages >= 5 * threshold {
                break;
            }
            assert!(batches < 500, "the database did not grow: {pages} pages");
        }
        assert!(
            largest_log <= 3 * threshold * frame,
            "the log grew to {largest_log} bytes, over three times the writer's checkpoint ({threshold} pages)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_transactions_and_all_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, true).await;
        let orders = register_together(&store, 300).await;
        let stats = store.write_stats();
        assert_eq!(stats.writes, 300);
        assert!(
            stats.transactions < 300,
            "300 writes at once were grouped: {stats:?}"
        );
        // Every acknowledged write is there, also after reopening the file.
        drop(store);
        let reopened = self::store(&dir, true).await;
        for order in &orders {
            assert_eq!(
                reopened.get(order.id()).await.unwrap().as_deref(),
                Some(order)
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_group_commit_each_write_is_its_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, false).await;
        register_together(&store, 50).await;
        assert_eq!(
            store.write_stats(),
            WriteStats {
                transactions: 50,
                writes: 50
            }
        );
    }

    #[tokio::test]
    async fn a_failing_write_is_rolled_back_alone_and_later_writes_see_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, true).await;
        let order = order_of("alice");
        store.insert(&order, None).await.unwrap();
        let now = Utc::now();
        let v2 = order.advance(1, now).unwrap();
        let v3 = v2.advance(2, now).unwrap();
        let stale = order.cancel(1, now).unwrap();
        let other = order_of("bob");
        let retry = order_of("bob");
        let key = Idempotency {
            request_id: "7c3e1c2a-0000-4000-8000-000000000001",
            fingerprint: "f",
        };
        // Queued together, so (normally) one group: v2, then a stale write
        // based on version 1 (a conflict), then v3 on top of v2, then a new
        // order registered twice under one key.
        let (a, b, c, d, e) = tokio::join!(
            store.commit(1, std::slice::from_ref(&v2)),
            store.commit(1, std::slice::from_ref(&stale)),
            store.commit(2, std::slice::from_ref(&v3)),
            store.insert(&other, Some(key)),
            store.insert(&retry, Some(key)),
        );
        a.unwrap();
        assert!(matches!(b, Err(StoreError::Conflict)), "{b:?}");
        c.unwrap();
        assert!(matches!(d.unwrap(), Inserted::Created));
        match e.unwrap() {
            Inserted::Existing { order, .. } => assert_eq!(order.id(), other.id()),
            Inserted::Created => panic!("one request_id made two orders"),
        }
        assert_eq!(*store.get(order.id()).await.unwrap().unwrap(), v3);
        let versions: Vec<i64> = store
            .history(order.id(), 0)
            .await
            .unwrap()
            .iter()
            .map(Order::version)
            .collect();
        assert_eq!(versions, [1, 2, 3], "the conflicting write left nothing");
    }

    #[tokio::test]
    async fn every_committed_write_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, true).await;
        let mut feed = store.changes();
        let orders = register_together(&store, 20).await;
        let mut announced = Vec::new();
        for _ in 0..20 {
            match feed.recv().await.unwrap() {
                Change::Order { id, version, order } => {
                    assert_eq!(version, 1);
                    // The committed order itself rides along.
                    let order = order.expect("SQLite's writer announces the order");
                    assert_eq!((order.id(), order.version()), (&id, 1));
                    announced.push(id);
                }
                Change::Resync => panic!("SQLite's feed never resyncs"),
            }
        }
        announced.sort();
        let mut ids: Vec<_> = orders.iter().map(|o| o.id().clone()).collect();
        ids.sort();
        assert_eq!(announced, ids);
    }
}
