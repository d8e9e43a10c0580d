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
//! between threads each way, where sqlx's SQLite driver makes every
//! statement a round trip to its connection thread (under write load, mostly
//! context switches). No crate merges transactions (a pool hands out
//! connections), hence this small module. PostgreSQL needs none of it: there
//! every replica commits on many connections and the server's WAL writer
//! already flushes concurrent commits together.

use super::cache::OrderCache;
use super::checkpoint;
use super::contract::{Idempotency, Inserted};
use super::error::{Result, StoreError};
use super::feed::Feed;
use super::schema::{FIND_BY_REQUEST, INSERT_ORDER_ROW, INSERT_VERSION, UPDATE_ORDER, decode};
use super::stats::WriteCounter;
use crate::domain::Order;
use grpc_platform::middleware::{CallContext, commit};
use rusqlite::{Connection, TransactionBehavior, params};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most writes one transaction takes. Bounded so one group's latency
/// (and the time the write lock is held) stays short under a flood.
pub(super) const MAX_GROUP: usize = 256;
/// Writes waiting for the writer before callers wait to enqueue (the
/// concurrency limit and deadlines bound the wait).
const QUEUE: usize = 4 * MAX_GROUP;

/// One write, with the caller's answer channel and the call it is made for
/// (whose commit point the writer passes).
enum Write {
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
pub(super) struct Writer {
    /// Dropping it (with the store) ends the writer thread after its group.
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Starts the writer thread on `conn`. With `max_group = 1` every write
    /// is its own transaction (the baseline the benchmarks compare against).
    pub(super) fn start(
        conn: Connection,
        checkpoint_conn: Connection,
        feed: Arc<Feed>,
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

    pub(super) async fn insert(
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

    pub(super) async fn commit(&self, base_version: i64, versions: Vec<Order>) -> Result<()> {
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
    feed: Arc<Feed>,
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
            // One copy of each committed order, shared by the cache and the
            // change feed.
            let stored: Vec<Arc<Order>> = group
                .iter()
                .zip(&done)
                .filter_map(|(write, done)| match (write, done) {
                    (Write::Insert { order, .. }, Done::Inserted(Ok(Inserted::Created))) => {
                        Some(&**order)
                    }
                    (Write::Commit { versions, .. }, Done::Committed(Ok(()))) => versions.last(),
                    _ => None,
                })
                .map(|order| Arc::new(order.clone()))
                .collect();
            sinks.written.committed(stored.len() as u64);
            // Before anyone is answered: a caller then reads its own write.
            if let Some(cache) = &sinks.cache {
                cache.committed(&stored);
            }
            for order in &stored {
                sinks.feed.announce(order);
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
pub(super) fn open(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Per connection: every commit is fsynced before it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The savepoint around each write keeps the pages it changes in a
    // statement journal, only ever read to roll that write back inside the
    // open transaction: in memory rather than a temporary file, so the
    // writer does no file I/O for it. Durability is the WAL's and the
    // fsync's.
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
