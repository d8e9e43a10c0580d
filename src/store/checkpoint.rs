//! Checkpoints of SQLite's write-ahead log, off the writer thread.
//!
//! SQLite copies the log back into the database file (a checkpoint) by
//! default inside the commit that takes the log past 1,000 pages: that
//! commit, and every write queued behind it, waits for the copy and for an
//! `fsync` of the database file, and the hot pages (the tables' last
//! leaves, the B-tree interiors) are copied once per thousand pages written.
//! Under sustained writes that puts a copy and an `fsync` on the path of the
//! group commits; taking them off the writer shortens the group commits
//! (the figures are in `bench/results/choices.md`).
//!
//! Here a thread with its own connection runs `PASSIVE` checkpoints, at
//! most every [`INTERVAL`], after writes. A passive checkpoint never takes
//! the write lock, so the writer commits meanwhile. The log is only rewound
//! to its start by a checkpoint that copies all of it with no commit in
//! between, which under continuous writes only the writer can be sure of:
//! so the writer keeps SQLite's automatic checkpoint, at [`WRITER_FRAMES`]
//! pages, and once the log is half that long this thread checkpoints every
//! [`NEAR_INTERVAL`], so the writer's own checkpoint finds only the last
//! few commits to copy, and the next commit starts the log again. (A
//! `RESTART` checkpoint from this thread would wait for the write lock,
//! sleeping in the busy handler while the writer commits and the log keeps
//! growing, so this thread never runs one.)
//!
//! What this does not remove: a checkpoint's `fsync` of the database file
//! can delay the writer's `fsync` of the log on the same disk, so now and
//! then a commit is slow; that sets `RegisterOrder`'s tail latency.
//!
//! Durability does not depend on where checkpoints run: commits are fsynced
//! by the writer before anyone is answered (`synchronous = FULL`), and a
//! checkpoint fsyncs the log before copying and the database after,
//! whichever connection runs it.

use rusqlite::Connection;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// The least time between two checkpoints while writes go on: long enough
/// that a hot page is copied once for many commits, short enough that a
/// passive checkpoint has little to copy.
const INTERVAL: Duration = Duration::from_millis(1000);
/// The interval once the log is half way to [`WRITER_FRAMES`].
const NEAR_INTERVAL: Duration = Duration::from_millis(50);
/// Log pages (4 KiB each) at which the writer checkpoints (and so rewinds
/// the log) itself.
#[cfg(not(test))]
pub(super) const WRITER_FRAMES: i64 = 16_000;
/// Small in unit tests, so a test takes the log past it many times in
/// seconds (`the_log_stays_bounded_under_continuous_writes`).
#[cfg(test)]
pub(super) const WRITER_FRAMES: i64 = 500;

/// Tells the checkpointer that a transaction committed. Dropping it (when
/// the writer thread ends) ends the checkpointer after a last checkpoint.
pub(super) struct Committed(SyncSender<()>);

impl Committed {
    pub(super) fn notify(&self) {
        // Full means a notice is already waiting: one is enough.
        let _ = self.0.try_send(());
    }
}

/// Starts the checkpointer on `conn` (opened like the writer's).
pub(super) fn start(conn: Connection) -> std::io::Result<Committed> {
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("orders-sqlite-ckpt".into())
        .spawn(move || run(&conn, &rx))?;
    Ok(Committed(tx))
}

fn run(conn: &Connection, rx: &Receiver<()>) {
    // The first checkpoint is due at once (no underflow near boot).
    let mut last = Instant::now()
        .checked_sub(INTERVAL)
        .unwrap_or_else(Instant::now);
    let mut interval = INTERVAL;
    // Each round: wait for a commit, then for the interval to pass (taking
    // the commits that arrive meanwhile), then checkpoint.
    while rx.recv().is_ok() {
        let mut open = true;
        let due = last + interval;
        while let Some(wait) = due.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(wait) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let log = checkpoint(conn);
        last = Instant::now();
        // Close to the writer's checkpoint, which rewinds the log: keep the
        // pages it will have to copy itself few.
        interval = if log.is_some_and(|frames| frames >= WRITER_FRAMES / 2) {
            NEAR_INTERVAL
        } else {
            INTERVAL
        };
        if !open {
            return;
        }
    }
    // The writer is gone: copy what it left.
    checkpoint(conn);
}

/// One passive checkpoint; the log's length in pages. A failure is logged
/// and retried next round: the writer's own checkpoint is the backstop.
fn checkpoint(conn: &Connection) -> Option<i64> {
    run_checkpoint(conn, "PASSIVE").ok().map(|(_, log, _)| log)
}

/// `(busy, log frames, checkpointed frames)`, as SQLite reports them.
fn run_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    let started = Instant::now();
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    });
    match &result {
        Ok((busy, log, done)) => {
            tracing::debug!(mode, busy, log, done, took = ?started.elapsed(), "sqlite checkpoint");
        }
        Err(error) => tracing::warn!(mode, %error, "sqlite checkpoint failed"),
    }
    result
}
