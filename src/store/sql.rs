//! The two SQL stores. They share every statement (sqlx accepts `$N`
//! placeholders on SQLite too), so the `Store` implementation is written once
//! in `sql_store!` and stamped out per backend; each backend only says how a
//! write transaction begins and how a change is announced.

use super::cache::OrderCache;
use super::feed::{self, Change};
use super::group_commit::{self, MAX_GROUP, Writer};
use super::schema::{
    self, CURSOR_KEY_NAME, FIND_BY_REQUEST, GET_KEY, GET_ORDER, HISTORY, INSERT_KEY, INSERT_ORDER,
    INSERT_VERSION, UPDATE_ORDER, decode,
};
use super::{
    Idempotency, Inserted, ListQuery, PoolStats, Result, Store, StoreError, StoreOptions,
    WriteCounter, WriteStats,
};
use crate::domain::{Order, OrderId};
use async_trait::async_trait;
use grpc_platform::middleware::commit;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// The PostgreSQL NOTIFY channel of the change feed.
const CHANNEL: &str = "orders_changes";
/// How long a call waits for a pooled connection before answering
/// UNAVAILABLE (during an outage, until the readiness check notices it and
/// calls fail at once).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

fn new_cursor_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    // ThreadRng is a CSPRNG seeded from the OS.
    rand::rng().fill_bytes(&mut key);
    key
}

macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Makes the shared page-token key once (the first replica to get
            /// here wins) and reads whichever key won.
            async fn load_cursor_key(pool: &sqlx::Pool<$db>) -> Result<Vec<u8>> {
                sqlx::query(INSERT_KEY)
                    .bind(CURSOR_KEY_NAME)
                    .bind(new_cursor_key())
                    .execute(pool)
                    .await
                    .map_err(StoreError::classify)?;
                let row = sqlx::query(GET_KEY)
                    .bind(CURSOR_KEY_NAME)
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::classify)?;
                Ok(row.try_get::<Vec<u8>, _>("value")?)
            }

            /// The current version, from the database.
            async fn read_current(&self, id: &OrderId) -> Result<Option<Order>> {
                let row = sqlx::query(GET_ORDER)
                    .bind(id.as_str())
                    .fetch_optional(self.reader())
                    .await
                    .map_err(StoreError::classify)?;
                row.map(|r| decode(&r.try_get::<String, _>("doc")?))
                    .transpose()
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn insert(
                &self,
                order: &Order,
                idempotency: Option<Idempotency<'_>>,
            ) -> Result<Inserted> {
                self.write_insert(order, idempotency).await
            }

            async fn get(&self, id: &OrderId) -> Result<Option<Order>> {
                self.get_current(id).await
            }

            async fn list(&self, query: &ListQuery) -> Result<Vec<Order>> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT doc FROM orders WHERE 1 = 1");
                if let Some(customer) = &query.customer {
                    q.push(" AND customer_id = ").push_bind(customer.as_str());
                }
                if let Some(status) = query.status {
                    q.push(" AND status = ").push_bind(status.code());
                }
                if let Some(after) = &query.after {
                    q.push(" AND id > ").push_bind(after.as_str());
                }
                q.push(" ORDER BY id LIMIT ")
                    .push_bind(i64::from(query.limit));
                let rows = q
                    .build()
                    .fetch_all(self.reader())
                    .await
                    .map_err(StoreError::classify)?;
                rows.iter()
                    .map(|r| decode(&r.try_get::<String, _>("doc")?))
                    .collect()
            }

            async fn commit(&self, base_version: i64, versions: &[Order]) -> Result<()> {
                self.write_commit(base_version, versions).await
            }

            async fn history(&self, id: &OrderId, after_version: i64) -> Result<Vec<Order>> {
                let rows = sqlx::query(HISTORY)
                    .bind(id.as_str())
                    .bind(after_version)
                    .fetch_all(self.reader())
                    .await
                    .map_err(StoreError::classify)?;
                rows.iter()
                    .map(|r| decode(&r.try_get::<String, _>("doc")?))
                    .collect()
            }

            fn cursor_key(&self) -> &[u8] {
                &self.cursor_key
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1")
                    .execute(self.reader())
                    .await
                    .map_err(StoreError::classify)?;
                Ok(())
            }

            fn changes(&self) -> broadcast::Receiver<Change> {
                self.feed.subscribe()
            }

            fn write_stats(&self) -> WriteStats {
                self.written.stats()
            }

            fn pool_stats(&self) -> PoolStats {
                let pool = self.reader();
                let size = pool.size();
                let idle = pool.num_idle() as u32;
                PoolStats {
                    max: pool.options().get_max_connections(),
                    open: size,
                    idle,
                    in_use: size.saturating_sub(idle),
                }
            }
        }
    };
}

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

/// PostgreSQL: one database shared by every replica. Changes are announced
/// with `pg_notify` inside the writing transaction (delivered on commit, in
/// commit order) and heard by a `LISTEN` task on every replica.
pub struct PostgresStore {
    pool: PgPool,
    written: std::sync::Arc<WriteCounter>,
    feed: broadcast::Sender<Change>,
    cursor_key: Vec<u8>,
    /// Stops the LISTEN task (and frees its connection) with the store.
    _listener: tokio_util::task::AbortOnDropHandle<()>,
}

impl PostgresStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(StoreError::classify)?;
        schema::migrate_postgres(&pool).await?;
        let cursor_key = Self::load_cursor_key(&pool).await?;
        let feed = feed::channel();
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(StoreError::classify)?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(StoreError::classify)?;
        let task = tokio::spawn(listen(listener, feed.clone()));
        Ok(Self {
            pool,
            written: Default::default(),
            feed,
            cursor_key,
            _listener: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// The registration's statements, inside the caller's transaction:
    /// the new order, or the caller's earlier one with this key.
    async fn insert_in(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        order: &Order,
        idempotency: Option<Idempotency<'_>>,
    ) -> Result<Inserted> {
        let doc = serde_json::to_string(order)?;
        let inserted = sqlx::query(INSERT_ORDER)
            .bind(order.id().as_str())
            .bind(order.customer_id().as_str())
            .bind(order.status().code())
            .bind(order.version())
            .bind(idempotency.map(|i| i.request_id))
            .bind(idempotency.map(|i| i.fingerprint))
            .bind(&doc)
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::classify)?;
        if inserted.is_none() {
            // Only the (customer, request_id) constraint is allowed to
            // conflict quietly: the caller registered this before.
            let Some(key) = idempotency else {
                return Err(StoreError::Conflict);
            };
            let row = sqlx::query(FIND_BY_REQUEST)
                .bind(order.customer_id().as_str())
                .bind(key.request_id)
                .fetch_one(&mut **tx)
                .await
                .map_err(StoreError::classify)?;
            let existing = decode(&row.try_get::<String, _>("doc")?)?;
            let fingerprint: Option<String> = row.try_get("request_fingerprint")?;
            return Ok(Inserted::Existing {
                order: Box::new(existing),
                fingerprint: fingerprint.unwrap_or_default(),
            });
        }
        sqlx::query(INSERT_VERSION)
            .bind(order.id().as_str())
            .bind(order.version())
            .bind(&doc)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::classify)?;
        Ok(Inserted::Created)
    }

    /// New versions of one order, inside the caller's transaction,
    /// provided it is still at `base_version`.
    async fn commit_in(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        base_version: i64,
        versions: &[Order],
    ) -> Result<()> {
        let Some(last) = versions.last() else {
            return Ok(());
        };
        let updated = sqlx::query(UPDATE_ORDER)
            .bind(last.status().code())
            .bind(last.version())
            .bind(serde_json::to_string(last)?)
            .bind(last.id().as_str())
            .bind(base_version)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::classify)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        for version in versions {
            sqlx::query(INSERT_VERSION)
                .bind(version.id().as_str())
                .bind(version.version())
                .bind(serde_json::to_string(version)?)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::classify)?;
        }
        Ok(())
    }

    /// Always the database: other replicas write too, so nothing in this
    /// process can know an order is current.
    async fn get_current(&self, id: &OrderId) -> Result<Option<Order>> {
        self.read_current(id).await
    }

    async fn write_insert(
        &self,
        order: &Order,
        idempotency: Option<Idempotency<'_>>,
    ) -> Result<Inserted> {
        let mut tx = self.pool.begin().await.map_err(StoreError::classify)?;
        let inserted = Self::insert_in(&mut tx, order, idempotency).await?;
        if matches!(inserted, Inserted::Created) {
            Self::announce(&mut tx, order).await?;
        }
        self.commit_point(tx).await?;
        Ok(inserted)
    }

    /// `COMMIT`, as the call's commit point (`grpc_platform::middleware::commit`):
    /// it runs as a task of its own, so a call dropped while it is under way
    /// neither leaves it half-sent nor misses its outcome. Until here a
    /// dropped call rolls the transaction back.
    async fn commit_point(&self, tx: sqlx::Transaction<'static, Postgres>) -> Result<()> {
        let call = commit::current_call();
        if call.as_ref().is_some_and(|call| !call.commit.begin()) {
            return Err(StoreError::Abandoned);
        }
        let written = self.written.clone();
        let commit = tokio::spawn(async move {
            let result = tx.commit().await;
            if result.is_ok() {
                written.committed(1);
            }
            if let Some(call) = call {
                call.commit.settle(result.is_ok());
            }
            result
        });
        match commit.await {
            Ok(result) => result.map_err(StoreError::classify),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    async fn write_commit(&self, base_version: i64, versions: &[Order]) -> Result<()> {
        let Some(last) = versions.last() else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(StoreError::classify)?;
        Self::commit_in(&mut tx, base_version, versions).await?;
        Self::announce(&mut tx, last).await?;
        self.commit_point(tx).await
    }

    /// `pg_notify` inside the writing transaction: delivered on commit, in
    /// commit order, to every replica's LISTEN (ours included).
    async fn announce(tx: &mut sqlx::Transaction<'static, Postgres>, order: &Order) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(Change::payload(order.id(), order.version()))
            .execute(&mut **tx)
            .await
            .map_err(StoreError::classify)?;
        Ok(())
    }
}

sql_store!(PostgresStore, Postgres);

/// Relays notifications to the in-process feed. When the LISTEN connection
/// drops, notifications sent meanwhile are lost, so watchers are told to
/// re-read (`Resync`) once it is back.
async fn listen(mut listener: PgListener, feed: broadcast::Sender<Change>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if let Some(change) = Change::parse_payload(notification.payload()) {
                    let _ = feed.send(change);
                }
            }
            Ok(None) => {
                tracing::warn!("change feed connection lost; reconnecting");
                let _ = feed.send(Change::Resync);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "change feed unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = feed.send(Change::Resync);
            }
        }
    }
}
