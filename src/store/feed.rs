//! The change feed: a broadcast of "order X reached version V".

use crate::domain::OrderId;
use tokio::sync::broadcast;

/// Capacity of the in-process broadcast. A receiver that falls further behind
/// gets `Lagged` and re-reads what it follows from the database, so this
/// bounds memory, never correctness.
const FEED_CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An order was committed at this version.
    Order { id: OrderId, version: i64 },
    /// Announcements may have been missed (the feed connection was lost and
    /// re-established): every watcher should re-read what it follows.
    Resync,
}

impl Change {
    /// The NOTIFY payload: `id:version`.
    pub(super) fn payload(id: &OrderId, version: i64) -> String {
        format!("{id}:{version}")
    }

    pub(super) fn parse_payload(payload: &str) -> Option<Change> {
        let (id, version) = payload.rsplit_once(':')?;
        Some(Change::Order {
            id: OrderId::parse(id)?,
            version: version.parse().ok()?,
        })
    }
}

pub(super) fn channel() -> broadcast::Sender<Change> {
    broadcast::channel(FEED_CAPACITY).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_garbage_is_ignored() {
        let id = OrderId::generate();
        let p = Change::payload(&id, 42);
        assert_eq!(
            Change::parse_payload(&p),
            Some(Change::Order { id, version: 42 })
        );
        assert_eq!(Change::parse_payload("nope"), None);
        assert_eq!(Change::parse_payload("x:1"), None);
    }
}
