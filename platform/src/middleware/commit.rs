//! The commit point of a call that changes state, so that what the server
//! did, what it answered and what its records say agree when a call ends
//! without its answer (the client cancelled or its connection closed, or its
//! deadline passed).
//!
//! A call can be dropped at any await. Before its change is committed that
//! is a clean cancel: nothing changes. But the store commits on its own
//! schedule (the SQLite writer thread takes a write whenever its turn comes;
//! a PostgreSQL `COMMIT` half-sent when its future is dropped may land or
//! not), so "dropped" and "committed" could both be true, and the call be
//! recorded CANCELLED (or answered DEADLINE_EXCEEDED) for a change that was
//! made.
//!
//! The [`CommitPoint`] in each call's [`CallContext`] settles that race with
//! one atomic state:
//! - the store calls [`CommitPoint::begin`] at its commit point, the moment
//!   after which its write cannot be taken back; it writes nothing if the
//!   call was abandoned first;
//! - whoever ends a call without its answer (the observe layer when the
//!   client has gone, the deadline layer when the deadline passes) calls
//!   [`CommitPoint::abandon`] first: either nothing was committed and now
//!   nothing will be, or a change stands (or is landing), and the call is
//!   recorded as the change it made: OK, never CANCELLED, and the deadline
//!   layer lets the call finish instead of answering DEADLINE_EXCEEDED.
//!
//! The store finds the call through the task-local of `super::call_scope`:
//! writes made outside a call (tools, tests) have no commit point.
//!
//! A client that cancels after the commit point gets CANCELLED from its own
//! library while the change stands; a retry is made safe by the method's own
//! means (`request_id`, `expected_version`), not by the cancel.

use super::CallContext;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::Notify;

/// A change has been handed to the store past its commit point.
const IN_FLIGHT: u8 = 1;
/// A change of the call was committed.
const COMMITTED: u8 = 2;
/// The call ended without its answer before any commit point: nothing may
/// be committed for it any more.
const ABANDONED: u8 = 4;

/// Where a call stands with respect to its changes (in its [`CallContext`]).
#[derive(Debug, Default)]
pub struct CommitPoint {
    state: AtomicU8,
    settled: Notify,
}

/// What stands of a call's changes when it ends without its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing was committed, and nothing will be.
    Nothing,
    /// A change is being committed: wait for [`CommitPoint::settled`].
    InFlight,
    /// A change was committed.
    Committed,
}

impl CommitPoint {
    /// Called by the store at its commit point: true if the write may go
    /// ahead (then [`CommitPoint::settle`] must follow), false if the call
    /// was abandoned and nothing may be written for it.
    pub fn begin(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & ABANDONED == 0).then_some(s | IN_FLIGHT)
            })
            .is_ok()
    }

    /// Called by the store once a write that began has ended: whether it
    /// was committed.
    pub fn settle(&self, committed: bool) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s & !IN_FLIGHT | if committed { COMMITTED } else { 0 })
            });
        self.settled.notify_waiters();
    }

    /// The call is ending without its answer: from now on nothing may be
    /// committed for it, unless something already is.
    pub fn abandon(&self) -> Standing {
        match self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & (IN_FLIGHT | COMMITTED) == 0).then_some(s | ABANDONED)
            }) {
            Ok(_) => Standing::Nothing,
            Err(s) if s & IN_FLIGHT != 0 => Standing::InFlight,
            Err(_) => Standing::Committed,
        }
    }

    /// Once no change is in flight: whether one was committed.
    pub async fn settled(&self) -> bool {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = self.state.load(Ordering::Acquire);
            if state & IN_FLIGHT == 0 {
                return state & COMMITTED != 0;
            }
            notified.await;
        }
    }
}

/// The call being polled on this task, if any: the store's way to its
/// [`CommitPoint`].
pub fn current_call() -> Option<Arc<CallContext>> {
    super::call_scope::current()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abandoned_call_commits_nothing() {
        let point = CommitPoint::default();
        assert_eq!(point.abandon(), Standing::Nothing);
        assert!(!point.begin(), "the store must not write for it");
        assert_eq!(point.abandon(), Standing::Nothing);
    }

    #[tokio::test]
    async fn a_call_abandoned_during_its_commit_waits_for_the_outcome() {
        let point = Arc::new(CommitPoint::default());
        assert!(point.begin());
        assert_eq!(point.abandon(), Standing::InFlight);
        let waiter = tokio::spawn({
            let point = point.clone();
            async move { point.settled().await }
        });
        tokio::task::yield_now().await;
        point.settle(true);
        assert!(waiter.await.unwrap());
        assert_eq!(point.abandon(), Standing::Committed);
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_call_free_to_try_again_or_be_abandoned() {
        let point = CommitPoint::default();
        assert!(point.begin());
        point.settle(false);
        assert!(!point.settled().await);
        // A retry (after a conflict, say) may begin again.
        assert!(point.begin());
        point.settle(true);
        assert!(point.settled().await);
        assert_eq!(point.abandon(), Standing::Committed);
    }
}
