//! The change feed: "order X reached version V", with that version itself
//! when the store has it in hand.
//!
//! Every change goes two ways: to a broadcast, for streams that follow many
//! orders (`TrackOrders`), and to a channel of its own order, for streams
//! that follow one (`WatchOrder`), so a change wakes only who follows its
//! order. With one broadcast for all, a thousand watchers spread over ten
//! orders meant a thousand wake-ups per change, nine in ten of them for
//! nothing, and those wake-ups were most of the CPU a change cost.
//!
//! An order's channel is a `tokio::sync::watch`: it keeps only the latest
//! change, which is all a follower needs, because followers read the stored
//! versions after the last one they sent whenever an announcement skips
//! ahead (see `service/streams.rs`). The channels live in a map while the
//! order has followers; the last follower to go removes its order's entry.
//! No crate offers a keyed publish-subscribe of this shape (a map of
//! `watch` senders whose entries go with their last receiver), hence these
//! few lines.

use crate::domain::{Order, OrderId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::{broadcast, watch};

/// Capacity of the in-process broadcast. A receiver that falls further behind
/// gets `Lagged` and re-reads what it follows from the database, so this
/// bounds memory, never correctness.
const FEED_CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An order was committed at this version.
    Order {
        id: OrderId,
        version: i64,
        /// The order at `version`, as committed, when the announcing store
        /// holds it (SQLite's writer does; PostgreSQL's NOTIFY carries only
        /// the id and version). A follower whose last event is the version
        /// before sends it as it is instead of reading the database: with
        /// many watchers on one order, that read per watcher per change was
        /// most of a delivery's time. It is shared, not copied, per watcher.
        order: Option<Arc<Order>>,
    },
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
            order: None,
        })
    }
}

/// Where a store announces its committed changes, and where streams follow
/// them.
pub(super) struct Feed {
    all: broadcast::Sender<Change>,
    orders: Mutex<HashMap<OrderId, watch::Sender<Change>>>,
}

impl Feed {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            all: broadcast::channel(FEED_CAPACITY).0,
            orders: Mutex::new(HashMap::new()),
        })
    }

    /// The map of followed orders. A panic while it was held cannot leave
    /// it half-changed (every change to it is one insert or remove), so a
    /// poisoned lock is taken as it is.
    fn orders(&self) -> MutexGuard<'_, HashMap<OrderId, watch::Sender<Change>>> {
        self.orders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Announces a change as it came (PostgreSQL's NOTIFY, or `Resync`,
    /// which goes to every followed order).
    pub(super) fn send(&self, change: Change) {
        match &change {
            Change::Order { id, .. } => {
                if let Some(follower) = self.orders().get(id) {
                    follower.send_replace(change.clone());
                }
            }
            Change::Resync => {
                for follower in self.orders().values() {
                    follower.send_replace(Change::Resync);
                }
            }
        }
        // No receivers is fine: nobody follows many orders.
        let _ = self.all.send(change);
    }

    /// Announces `order` as committed, carrying it, when anyone follows it;
    /// with nobody following, it costs no copy.
    pub(super) fn announce(&self, order: &Arc<Order>) {
        let followed = self.all.receiver_count() > 0 || self.orders().contains_key(order.id());
        if followed {
            self.send(Change::Order {
                id: order.id().clone(),
                version: order.version(),
                order: Some(order.clone()),
            });
        }
    }

    /// Every change, for a stream that follows many orders.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.all.subscribe()
    }

    /// The changes of `id` from now on.
    pub(super) fn follow(self: &Arc<Self>, id: &OrderId) -> OrderChanges {
        let mut orders = self.orders();
        let changes = match orders.get(id) {
            Some(follower) => follower.subscribe(),
            None => {
                // Nothing announced yet: the first value counts as seen.
                let (follower, changes) = watch::channel(Change::Resync);
                orders.insert(id.clone(), follower);
                changes
            }
        };
        OrderChanges {
            changes: Some(changes),
            id: id.clone(),
            feed: Arc::downgrade(self),
        }
    }
}

/// The changes of one order, as [`Feed::follow`] subscribed to them.
pub struct OrderChanges {
    /// `None` only while being dropped.
    changes: Option<watch::Receiver<Change>>,
    id: OrderId,
    /// Weak: a follower does not keep the store's feed alive, so the feed
    /// closes with the store, as the broadcast does.
    feed: Weak<Feed>,
}

impl OrderChanges {
    /// The latest change of the order since the last one returned (earlier
    /// ones may have been replaced by it); `None` once the feed has closed.
    pub async fn changed(&mut self) -> Option<Change> {
        let changes = self.changes.as_mut()?;
        changes.changed().await.ok()?;
        Some(changes.borrow_and_update().clone())
    }
}

impl Drop for OrderChanges {
    fn drop(&mut self) {
        let Some(feed) = self.feed.upgrade() else {
            return;
        };
        // Under the map's lock, so no follower can subscribe in between.
        let mut orders = feed.orders();
        drop(self.changes.take());
        if orders
            .get(&self.id)
            .is_some_and(|f| f.receiver_count() == 0)
        {
            orders.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{now, order};
    use std::time::Duration;

    /// The next change `changes` holds, or `None` if none comes soon.
    async fn next(changes: &mut OrderChanges) -> Option<Change> {
        tokio::time::timeout(Duration::from_millis(50), changes.changed())
            .await
            .ok()
            .flatten()
    }

    fn version_of(change: Option<Change>) -> Option<i64> {
        match change? {
            Change::Order { version, order, .. } => {
                assert_eq!(order.map(|o| o.version()), Some(version));
                Some(version)
            }
            Change::Resync => None,
        }
    }

    #[tokio::test]
    async fn a_follower_hears_its_own_order_only_and_carries_the_committed_version() {
        let feed = Feed::new();
        let (a, b) = (order(), Arc::new(order()));
        let mut follows_a = feed.follow(a.id());
        let mut all = feed.subscribe();
        feed.announce(&b);
        assert_eq!(
            next(&mut follows_a).await,
            None,
            "b's change woke a's follower"
        );
        let a2 = Arc::new(a.advance(1, now()).unwrap());
        feed.announce(&a2);
        assert_eq!(version_of(next(&mut follows_a).await), Some(2));
        // The broadcast has both, in order.
        for want in [&b, &a2] {
            match all.recv().await.unwrap() {
                Change::Order { id, order, .. } => {
                    assert_eq!(&id, want.id());
                    assert_eq!(order.as_ref(), Some(want));
                }
                Change::Resync => panic!("no resync was sent"),
            }
        }
    }

    #[tokio::test]
    async fn a_late_follower_sees_later_changes_and_coalesced_ones_as_the_latest() {
        let feed = Feed::new();
        let v1 = order();
        let mut first = feed.follow(v1.id());
        let v2 = Arc::new(v1.advance(1, now()).unwrap());
        feed.announce(&v2);
        // Subscribed after v2: it is not news to the second follower.
        let mut second = feed.follow(v1.id());
        assert_eq!(next(&mut second).await, None);
        let v3 = Arc::new(v2.advance(2, now()).unwrap());
        feed.announce(&v3);
        assert_eq!(version_of(next(&mut second).await), Some(3));
        // The first follower did not look in between: it gets the latest.
        assert_eq!(version_of(next(&mut first).await), Some(3));
        assert_eq!(next(&mut first).await, None);
    }

    #[tokio::test]
    async fn resync_reaches_every_follower_and_the_last_to_go_removes_its_order() {
        let feed = Feed::new();
        let (a, b) = (order(), order());
        let mut on_a = feed.follow(a.id());
        let on_a_too = feed.follow(a.id());
        let mut on_b = feed.follow(b.id());
        feed.send(Change::Resync);
        assert_eq!(next(&mut on_a).await, Some(Change::Resync));
        assert_eq!(next(&mut on_b).await, Some(Change::Resync));
        assert_eq!(feed.orders().len(), 2);
        drop(on_a);
        assert!(feed.orders().contains_key(a.id()), "a still has a follower");
        drop((on_a_too, on_b));
        assert!(feed.orders().is_empty());
    }

    #[tokio::test]
    async fn followers_hear_the_feed_close_with_its_store() {
        let feed = Feed::new();
        let mut changes = feed.follow(order().id());
        drop(feed);
        assert_eq!(changes.changed().await, None);
    }

    #[test]
    fn payload_round_trips_and_garbage_is_ignored() {
        let id = OrderId::generate();
        let p = Change::payload(&id, 42);
        assert_eq!(
            Change::parse_payload(&p),
            Some(Change::Order {
                id,
                version: 42,
                order: None
            })
        );
        assert_eq!(Change::parse_payload("nope"), None);
        assert_eq!(Change::parse_payload("x:1"), None);
    }
}
