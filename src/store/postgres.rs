//! The PostgreSQL store: one database shared by every replica, each writing
//! on its own connections and hearing the others' changes through
//! `LISTEN/NOTIFY`.

use super::contract::{Idempotency, Inserted, StoreOptions};
use super::error::{Result, StoreError};
use super::feed::{Change, Feed};
use super::schema::{self, FIND_BY_REQUEST, INSERT_ORDER, INSERT_VERSION, UPDATE_ORDER, decode};
use super::sql_store::{ACQUIRE_TIMEOUT, sql_store};
use super::stats::WriteCounter;
use crate::domain::{Order, OrderId};
use grpc_platform::middleware::commit;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, Postgres};
use std::time::Duration;

/// The PostgreSQL NOTIFY channel of the change feed.
const CHANNEL: &str = "orders_changes";

/// PostgreSQL: one database shared by every replica. Changes are announced
/// with `pg_notify` inside the writing transaction (delivered on commit, in
/// commit order) and heard by a `LISTEN` task on every replica.
pub(super) struct PostgresStore {
    pool: PgPool,
    written: std::sync::Arc<WriteCounter>,
    feed: std::sync::Arc<Feed>,
    cursor_key: Vec<u8>,
    /// Stops the LISTEN task (and frees its connection) with the store.
    _listener: tokio_util::task::AbortOnDropHandle<()>,
}

impl PostgresStore {
    pub(super) async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(StoreError::classify)?;
        schema::migrate_postgres(&pool).await?;
        let cursor_key = Self::load_cursor_key(&pool).await?;
        let feed = Feed::new();
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
    async fn get_current(&self, id: &OrderId) -> Result<Option<std::sync::Arc<Order>>> {
        Ok(self.read_current(id).await?.map(std::sync::Arc::new))
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
async fn listen(mut listener: PgListener, feed: std::sync::Arc<Feed>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if let Some(change) = Change::parse_payload(notification.payload()) {
                    feed.send(change);
                }
            }
            Ok(None) => {
                tracing::warn!("change feed connection lost; reconnecting");
                feed.send(Change::Resync);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "change feed unavailable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                feed.send(Change::Resync);
            }
        }
    }
}
