//! Group commit for SQLite: every write of the process goes through one
//! writer task, which takes all the writes waiting at that moment and runs
//! them in one transaction, so one `fsync` of the write-ahead log makes the
//! whole group durable.
//!
//! Why: with `synchronous = FULL` (an acknowledged order survives power
//! loss), a commit costs one `fsync`, and SQLite has one writer, so one
//! transaction per call caps writes at the disk's fsync rate. Batching
//! changes what an fsync buys, not what it guarantees: nobody is answered
//! before the transaction holding their write has committed.
//!
//! Each write runs inside its own `SAVEPOINT`, so a write that fails (an
//! order that changed concurrently, say) is rolled back alone and the others
//! in its group still commit; writes later in a group see the earlier ones,
//! exactly as if they had run one after another. A write whose caller has
//! gone (deadline passed, client cancelled) before its turn is skipped, so an
//! abandoned call does not write later behind the caller's back. If the
//! transaction itself fails (BEGIN, a savepoint, COMMIT), every write in the
//! group fails and none is stored.
//!
//! No crate does this for sqlx (its pool hands out connections, it does not
//! merge transactions), hence this small task. PostgreSQL needs none of it:
//! there every replica commits on many connections and the server's WAL
//! writer already flushes concurrent commits together.

use super::cache::OrderCache;
use super::feed::Change;
use super::{Inserted, Result, StoreError, WriteCounter};
use crate::domain::Order;
use sqlx::SqlitePool;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The most writes one transaction takes. Bounded so one group's latency
/// (and the time the write lock is held) stays short under a flood.
pub(crate) const MAX_GROUP: usize = 256;
/// Writes waiting for the writer before callers wait to enqueue (the
/// concurrency limit and deadlines bound the wait).
const QUEUE: usize = 4 * MAX_GROUP;

/// One write, with the caller's answer channel.
pub(crate) enum Write {
    Insert {
        order: Box<Order>,
        /// `(request_id, fingerprint)`.
        idempotency: Option<(String, String)>,
        reply: oneshot::Sender<Result<Inserted>>,
    },
    Commit {
        base_version: i64,
        versions: Vec<Order>,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Write {
    /// The caller stopped waiting (its future was dropped).
    fn abandoned(&self) -> bool {
        match self {
            Write::Insert { reply, .. } => reply.is_closed(),
            Write::Commit { reply, .. } => reply.is_closed(),
        }
    }

    fn order_id(&self) -> Option<&crate::domain::OrderId> {
        match self {
            Write::Insert { order, .. } => Some(order.id()),
            Write::Commit { versions, .. } => versions.first().map(Order::id),
        }
    }

    fn fail(self, err: StoreError) {
        // The caller may be gone; then nobody needs the answer.
        match self {
            Write::Insert { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Write::Commit { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// What one write did inside the group, kept until the group commits.
enum Done {
    Inserted(Result<Inserted>),
    Committed(Result<()>),
    Skipped,
}

/// The handle the store keeps: sends writes to the writer task.
pub(crate) struct Writer {
    tx: mpsc::Sender<Write>,
    /// Stops the writer task with the store.
    _task: crate::AbortOnDrop,
}

impl Writer {
    /// Starts the writer task on `pool` (a pool of one connection). With
    /// `max_group = 1` every write is its own transaction (the baseline the
    /// benchmarks compare against).
    pub(crate) fn start(
        pool: SqlitePool,
        feed: broadcast::Sender<Change>,
        written: Arc<WriteCounter>,
        cache: Option<Arc<OrderCache>>,
        max_group: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sinks = Sinks {
            feed,
            written,
            cache,
        };
        let task = tokio::spawn(run(pool, rx, sinks, max_group.max(1)));
        Self {
            tx,
            _task: crate::AbortOnDrop(task),
        }
    }

    pub(crate) async fn insert(
        &self,
        order: Order,
        idempotency: Option<(String, String)>,
    ) -> Result<Inserted> {
        let (reply, answer) = oneshot::channel();
        self.submit(Write::Insert {
            order: Box::new(order),
            idempotency,
            reply,
        })
        .await?;
        answer.await.map_err(|_| writer_gone())?
    }

    pub(crate) async fn commit(&self, base_version: i64, versions: Vec<Order>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.submit(Write::Commit {
            base_version,
            versions,
            reply,
        })
        .await?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn submit(&self, write: Write) -> Result<()> {
        self.tx.send(write).await.map_err(|_| writer_gone())
    }
}

/// The writer task ended (the store is being dropped).
fn writer_gone() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// Who hears about committed writes.
struct Sinks {
    feed: broadcast::Sender<Change>,
    written: Arc<WriteCounter>,
    cache: Option<Arc<OrderCache>>,
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Write>, sinks: Sinks, max_group: usize) {
    let mut group = Vec::with_capacity(max_group);
    // `recv_many` waits for one write, then takes every write already queued
    // (up to the limit): the group is whatever arrived while the last commit
    // was being flushed, so an idle server commits a lone write at once.
    while rx.recv_many(&mut group, max_group).await > 0 {
        group.retain(|w: &Write| !w.abandoned());
        if !group.is_empty() {
            write_group(&pool, &mut group, &sinks).await;
        }
        group.clear();
    }
}

async fn write_group(pool: &SqlitePool, group: &mut Vec<Write>, sinks: &Sinks) {
    match run_group(pool, group).await {
        Ok(done) => {
            let stored: Vec<&Order> = group
                .iter()
                .zip(&done)
                .filter_map(|(write, done)| match (write, done) {
                    (Write::Insert { order, .. }, Done::Inserted(Ok(Inserted::Created))) => {
                        Some(&**order)
                    }
                    (Write::Commit { versions, .. }, Done::Committed(Ok(()))) => versions.last(),
                    _ => None,
                })
                .collect();
            sinks.written.committed(stored.len() as u64);
            // Before anyone is answered: a caller then reads its own write.
            if let Some(cache) = &sinks.cache {
                cache.committed(stored.iter().copied());
            }
            for order in stored {
                // No receivers is fine: nobody is watching.
                let _ = sinks.feed.send(Change::Order {
                    id: order.id().clone(),
                    version: order.version(),
                });
            }
            for (write, done) in group.drain(..).zip(done) {
                match (write, done) {
                    (Write::Insert { reply, .. }, Done::Inserted(result)) => {
                        let _ = reply.send(result);
                    }
                    (Write::Commit { reply, .. }, Done::Committed(result)) => {
                        let _ = reply.send(result);
                    }
                    // Skipped: its caller is gone; nothing was written for it.
                    _ => {}
                }
            }
        }
        Err(err) => {
            if let Some(cache) = &sinks.cache {
                cache.forget(group.iter().filter_map(Write::order_id));
            }
            let transient = err.is_transient();
            let cause = Arc::new(err);
            for write in group.drain(..) {
                write.fail(StoreError::Group {
                    transient,
                    cause: cause.clone(),
                });
            }
        }
    }
}

/// Runs the group in one transaction; `Err` means the transaction failed and
/// nothing of the group is stored.
async fn run_group(pool: &SqlitePool, group: &[Write]) -> Result<Vec<Done>> {
    // BEGIN IMMEDIATE takes the write lock up front, so the transaction never
    // fails half-way trying to upgrade a read lock.
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(StoreError::classify)?;
    let mut done = Vec::with_capacity(group.len());
    for write in group {
        // Checked again here: BEGIN may have waited for the lock.
        if write.abandoned() {
            done.push(Done::Skipped);
            continue;
        }
        exec(&mut tx, "SAVEPOINT write").await?;
        let (outcome, ok) = match write {
            Write::Insert {
                order, idempotency, ..
            } => {
                let key = idempotency.as_ref().map(|(r, f)| super::Idempotency {
                    request_id: r,
                    fingerprint: f,
                });
                let result = super::SqliteStore::insert_in(&mut tx, order, key).await;
                let ok = result.is_ok();
                (Done::Inserted(result), ok)
            }
            Write::Commit {
                base_version,
                versions,
                ..
            } => {
                let result = super::SqliteStore::commit_in(&mut tx, *base_version, versions).await;
                let ok = result.is_ok();
                (Done::Committed(result), ok)
            }
        };
        if !ok {
            exec(&mut tx, "ROLLBACK TO write").await?;
        }
        exec(&mut tx, "RELEASE write").await?;
        done.push(outcome);
    }
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(done)
}

async fn exec(tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>, sql: &str) -> Result<()> {
    sqlx::query(sql)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::classify)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Address, CustomerId, LineItem, NewOrder, OrderId, Violations};
    use crate::store::{Idempotency, SqliteStore, Store, StoreOptions};
    use chrono::Utc;

    fn new_order(customer: &str) -> Order {
        let mut v = Violations::default();
        let item = LineItem::parse("APPLE".into(), 1, 100, "items[0]", &mut v).unwrap();
        let address = Address::parse(
            "Main".into(),
            1,
            "Utrecht".into(),
            "3511 AB".into(),
            "address",
            &mut v,
        )
        .unwrap();
        Order::register(
            OrderId::generate(),
            CustomerId::new(customer).unwrap(),
            NewOrder::new(vec![item], address, None).unwrap(),
            Utc::now(),
        )
    }

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
        let orders: Vec<Order> = (0..n).map(|_| new_order("alice")).collect();
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
                reopened.get(order.id()).await.unwrap().as_ref(),
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
            crate::store::WriteStats {
                transactions: 50,
                writes: 50
            }
        );
    }

    #[tokio::test]
    async fn a_failing_write_is_rolled_back_alone_and_later_writes_see_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir, true).await;
        let order = new_order("alice");
        store.insert(&order, None).await.unwrap();
        let now = Utc::now();
        let v2 = order.advance(1, now).unwrap();
        let v3 = v2.advance(2, now).unwrap();
        let stale = order.cancel(1, now).unwrap();
        let other = new_order("bob");
        let retry = new_order("bob");
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
        assert_eq!(store.get(order.id()).await.unwrap().unwrap(), v3);
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
                Change::Order { id, version } => {
                    assert_eq!(version, 1);
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
