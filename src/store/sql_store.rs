//! What the two SQL stores share. Their reads are the same statements
//! (sqlx accepts `$N` placeholders on SQLite too), so that part of the
//! `Store` implementation is written once, in `sql_store!`, and stamped
//! out per backend (`sqlite.rs`, `postgres.rs`); each backend only says how
//! it writes, how it reads an order's current version, and how a change is
//! announced.

use std::time::Duration;

/// How long a call waits for a pooled connection before answering
/// UNAVAILABLE (during an outage, until the readiness check notices it and
/// calls fail at once).
pub(super) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A fresh page-token key, for the first replica to store one.
pub(super) fn new_cursor_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    // ThreadRng is a CSPRNG seeded from the OS.
    rand::rng().fill_bytes(&mut key);
    key
}

/// `impl Store` for `$store`, a backend on sqlx's `$db`. The backend
/// provides `reader()` (the pool reads go to), `get_current`,
/// `write_insert`, `write_commit`, and the fields `cursor_key`, `feed` and
/// `written`.
macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        // The impls in an unnamed const apply to the type as anywhere else;
        // the const only keeps the names they import out of the backend's file.
        const _: () = {
            use async_trait::async_trait;
            use sqlx::Row;
            use tokio::sync::broadcast;
            use $crate::domain::{Order, OrderId};
            use $crate::store::contract::{Idempotency, Inserted, ListQuery, Store};
            use $crate::store::error::{Result, StoreError};
            use $crate::store::feed::{Change, OrderChanges};
            use $crate::store::schema::{
                CURSOR_KEY_NAME, GET_KEY, GET_ORDER, HISTORY, INSERT_KEY, decode,
            };
            use $crate::store::sql_store::new_cursor_key;
            use $crate::store::stats::{PoolStats, WriteStats};

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

                async fn get(&self, id: &OrderId) -> Result<Option<std::sync::Arc<Order>>> {
                    self.get_current(id).await
                }

                async fn list(&self, query: &ListQuery) -> Result<Vec<Order>> {
                    let mut q =
                        sqlx::QueryBuilder::<$db>::new("SELECT doc FROM orders WHERE 1 = 1");
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

                fn order_changes(&self, id: &OrderId) -> OrderChanges {
                    self.feed.follow(id)
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
    };
}
pub(super) use sql_store;
