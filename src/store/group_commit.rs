//! Group commit for SQLite: every write of the process goes through one
//! writer thread, which takes all the writes waiting at that moment and runs
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
//! abandoned call does not write later behind the caller's back; the turn
//! is the call's commit point (`grpc_platform::middleware::commit`), so a caller
//! that goes away after it finds its change made and recorded as made. If the
//! transaction itself fails (BEGIN, a savepoint, COMMIT), every write in the
//! group fails and none is stored.
//!
//! The writer is a plain thread with its own `rusqlite` connection: the
//! statements of a group run synchronously, so a group costs one hand-off
//! between threads each way. Through sqlx every statement was a round trip
//! to its connection thread, and the profile of `RegisterOrder` was half
//! context switches. No crate merges transactions (a pool hands out
//! connections), hence this small module. PostgreSQL needs none of it: there
//! every replica commits on many connections and the server's WAL writer
//! already flushes concurrent commits together.

use super::cache::OrderCache;
use super::checkpoint;
use super::feed::Change;
use super::schema::{FIND_BY_REQUEST, INSERT_ORDER_ROW, INSERT_VERSION, UPDATE_ORDER, decode};
use super::{Idempotency, Inserted, Result, StoreError, WriteCounter};
use crate::domain::Order;
use grpc_platform::middleware::{CallContext, commit};
use rusqlite::{Connection, TransactionBehavior, params};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The most writes one transaction takes. Bounded so one group's latency
/// (and the time the write lock is held) stays short under a flood.
pub(crate) const MAX_GROUP: usize = 256;
/// Writes waiting for the writer before callers wait to enqueue (the
/// concurrency limit and deadlines bound the wait).
const QUEUE: usize = 4 * MAX_GROUP;

/// One write, with the caller's answer channel and the call it is made for
/// (whose commit point the writer passes).
pub(crate) enum Write {
    Insert {
        order: Box<Order>,
        /// `(request_id, fingerprint)`.
        idempotency: Option<(String, String)>,
        reply: oneshot::Sender<Result<Inserted>>,
        call: Option<Arc<CallContext>>,
    },
    Commit {
        base_version: i64,
        versions: Vec<Order>,
        reply: oneshot::Sender<Result<()>>,
        call: Option<Arc<CallContext>>,
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

    fn call(&self) -> Option<&Arc<CallContext>> {
        match self {
            Write::Insert { call, .. } | Write::Commit { call, .. } => call.as_ref(),
        }
    }

    /// The write's commit point, just before it runs: false if its caller
    /// has gone or its call was abandoned (then nothing is written for it).
    /// Once it returns true, the call's `CommitPoint` waits for
    /// [`Write::settle`], and a caller that goes away from then on finds its
    /// change made (`grpc_platform::middleware::commit`).
    fn begin(&self) -> bool {
        !self.abandoned() && self.call().is_none_or(|call| call.commit.begin())
    }

    /// Tells the call whether its write was committed.
    fn settle(&self, committed: bool) {
        if let Some(call) = self.call() {
            call.commit.settle(committed);
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
    /// Dropping it (with the store) ends the writer thread after its group.
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Starts the writer thread on `conn`. With `max_group = 1` every write
    /// is its own transaction (the baseline the benchmarks compare against).
    pub(crate) fn start(
        conn: Connection,
        checkpoint_conn: Connection,
        feed: broadcast::Sender<Change>,
        written: Arc<WriteCounter>,
        cache: Option<Arc<OrderCache>>,
        max_group: usize,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let sinks = Sinks {
            feed,
            written,
            cache,
        };
        let max_group = max_group.max(1);
        let io = |e| StoreError::Database(sqlx::Error::Io(e));
        let committed = checkpoint::start(checkpoint_conn).map_err(io)?;
        std::thread::Builder::new()
            .name("orders-sqlite-writer".into())
            .spawn(move || run(conn, rx, sinks, max_group, committed))
            .map_err(io)?;
        Ok(Self { tx })
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
            call: commit::current_call(),
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
            call: commit::current_call(),
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

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Write>,
    sinks: Sinks,
    max_group: usize,
    committed: checkpoint::Committed,
) {
    let mut group = Vec::with_capacity(max_group);
    // Wait for one write, then take every write already queued (up to the
    // limit): the group is whatever arrived while the last commit was being
    // flushed, so an idle server commits a lone write at once.
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        group.retain(|w: &Write| !w.abandoned());
        if !group.is_empty() {
            write_group(&mut conn, &mut group, &sinks);
            committed.notify();
        }
        group.clear();
    }
}

fn write_group(conn: &mut Connection, group: &mut Vec<Write>, sinks: &Sinks) {
    match run_group(conn, group) {
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
                match &done {
                    Done::Inserted(result) => write.settle(result.is_ok()),
                    Done::Committed(result) => write.settle(result.is_ok()),
                    Done::Skipped => {}
                }
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
                write.settle(false);
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
fn run_group(conn: &mut Connection, group: &[Write]) -> Result<Vec<Done>> {
    // BEGIN IMMEDIATE takes the write lock up front, so the transaction never
    // fails half-way trying to upgrade a read lock.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The savepoint statements, prepared once per connection (rusqlite's
    // `Savepoint` parses its SQL anew each time: two parses per write).
    let savepoint = |sql: &str| -> Result<()> {
        tx.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    let mut done = Vec::with_capacity(group.len());
    for write in group {
        // Checked again here: BEGIN may have waited for the lock. This is
        // the write's commit point.
        if !write.begin() {
            done.push(Done::Skipped);
            continue;
        }
        savepoint("SAVEPOINT write")?;
        let (outcome, ok) = match write {
            Write::Insert {
                order, idempotency, ..
            } => {
                let key = idempotency.as_ref().map(|(r, f)| Idempotency {
                    request_id: r,
                    fingerprint: f,
                });
                let result = insert(&tx, order, key);
                let ok = result.is_ok();
                (Done::Inserted(result), ok)
            }
            Write::Commit {
                base_version,
                versions,
                ..
            } => {
                let result = commit(&tx, *base_version, versions);
                let ok = result.is_ok();
                (Done::Committed(result), ok)
            }
        };
        // A failed write leaves nothing behind; the others go on.
        if !ok {
            savepoint("ROLLBACK TO write")?;
        }
        savepoint("RELEASE write")?;
        done.push(outcome);
    }
    tx.commit()?;
    Ok(done)
}

/// A registration: the new order at version 1, or the caller's earlier
/// order with this key. (The statements are `schema.rs`'s, shared with the
/// PostgreSQL store, which runs them through sqlx.)
fn insert(conn: &Connection, order: &Order, key: Option<Idempotency<'_>>) -> Result<Inserted> {
    let doc = serde_json::to_string(order)?;
    // Without `RETURNING` (which SQLite answers through a temporary table):
    // the count of rows inserted tells a conflict just as well.
    let inserted = conn.prepare_cached(INSERT_ORDER_ROW)?.execute(params![
        order.id().as_str(),
        order.customer_id().as_str(),
        order.status().code(),
        order.version(),
        key.map(|k| k.request_id),
        key.map(|k| k.fingerprint),
        &doc,
    ])?;
    if inserted == 0 {
        // Only the (customer, request_id) constraint is allowed to conflict
        // quietly: the caller registered this before.
        let Some(key) = key else {
            return Err(StoreError::Conflict);
        };
        let (doc, fingerprint): (String, Option<String>) = conn
            .prepare_cached(FIND_BY_REQUEST)?
            .query_row(params![order.customer_id().as_str(), key.request_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        return Ok(Inserted::Existing {
            order: Box::new(decode(&doc)?),
            fingerprint: fingerprint.unwrap_or_default(),
        });
    }
    conn.prepare_cached(INSERT_VERSION)?.execute(params![
        order.id().as_str(),
        order.version(),
        &doc
    ])?;
    Ok(Inserted::Created)
}

/// New versions of one order, provided it is still at `base_version`.
fn commit(conn: &Connection, base_version: i64, versions: &[Order]) -> Result<()> {
    let Some(last) = versions.last() else {
        return Ok(());
    };
    let updated = conn.prepare_cached(UPDATE_ORDER)?.execute(params![
        last.status().code(),
        last.version(),
        serde_json::to_string(last)?,
        last.id().as_str(),
        base_version,
    ])?;
    if updated == 0 {
        return Err(StoreError::Conflict);
    }
    let mut insert_version = conn.prepare_cached(INSERT_VERSION)?;
    for version in versions {
        insert_version.execute(params![
            version.id().as_str(),
            version.version(),
            serde_json::to_string(version)?
        ])?;
    }
    Ok(())
}

/// Opens the writer's connection with the store's durability settings.
pub(crate) fn open(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Per connection: every commit is fsynced before it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The savepoint around each write keeps the pages it changes in a
    // statement journal, only ever read to roll that write back inside the
    // open transaction: in memory rather than a temporary file (a profile
    // showed a sixth of the writer's time writing it). Durability is the
    // WAL's and the fsync's, unchanged.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints mostly run on their own thread; the writer's own, rarer,
    // copies the rest and rewinds the log (see `checkpoint`).
    conn.pragma_update(None, "wal_autocheckpoint", checkpoint::WRITER_FRAMES)?;
    // WAL is a property of the file (set when the store opened it); check.
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
    }
    Ok(conn)
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
