//! The server-streaming `WatchOrder` and bidirectional `TrackOrders`.
//!
//! Both follow the same recipe, which is what makes them lossless:
//! 1. subscribe to the change feed *before* reading anything, so no change
//!    committed after the read can go unannounced;
//! 2. send what is stored (the current order, or the versions after the
//!    client's `after_version`), remembering the last version sent;
//! 3. on every announcement for a followed order (or a `Resync`, or after
//!    lagging behind the feed), read the stored versions after the last one
//!    sent and send those: events arrive once each and in order, however the
//!    announcements were coalesced, delayed or dropped. When the announcement
//!    carries the committed order and it is the very next version, it is
//!    sent without the read: it is what the read would start with, and any
//!    later version has an announcement of its own still to come.
//!
//! Each stream runs as a task feeding a bounded channel; when the client goes
//! away the channel closes and the task ends.

use super::{EventStream, MAX_TRACKED_ORDERS, Orders, ServiceError};
use crate::domain::{Caller, Order, OrderId};
use crate::pb;
use crate::store::{Change, OrderChanges};
use grpc_platform::streams::{Ending, StreamEnd};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Events buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 64;

type Tx = mpsc::Sender<Result<pb::OrderEvent, Status>>;

/// Sends `orders`; `Err(())` when the client is gone.
async fn send_all(tx: &Tx, orders: &[Order]) -> Result<(), ()> {
    for order in orders {
        tx.send(Ok(order.into())).await.map_err(|_| ())?;
    }
    Ok(())
}

/// What the feed says to a stream following some orders.
enum Wake {
    /// This order may have new versions; the announced one, if the feed
    /// carried it.
    Order(OrderId, i64, Option<Arc<Order>>),
    /// Anything may have changed: re-read everything followed.
    Everything,
    /// The stream must end with this status (the feed is gone, the server
    /// is stopping, or the connection is being recycled).
    Closed(Status),
}

impl From<Change> for Wake {
    fn from(change: Change) -> Self {
        match change {
            Change::Order { id, version, order } => Wake::Order(id, version, order),
            Change::Resync => Wake::Everything,
        }
    }
}

/// The feed is gone: the store is closing with the server.
fn feed_closed() -> Wake {
    Wake::Closed(Ending::ShuttingDown.status(super::DOMAIN))
}

/// The next change of any order.
async fn next_wake(feed: &mut broadcast::Receiver<Change>) -> Wake {
    match feed.recv().await {
        Ok(change) => change.into(),
        Err(broadcast::error::RecvError::Lagged(_)) => Wake::Everything,
        Err(broadcast::error::RecvError::Closed) => feed_closed(),
    }
}

/// Versions of `id` after `last_sent`, sent in order. Returns the new last
/// version sent and whether the order reached a final status. `announced`
/// is the order as the feed carried it: if it is the next version, it is
/// sent as it is, and the database is read only otherwise.
async fn catch_up(
    svc: &Orders,
    tx: &Tx,
    id: &OrderId,
    last_sent: i64,
    announced: Option<&Order>,
) -> Result<Option<(i64, bool)>, ServiceError> {
    let versions = match next_version(announced, id, last_sent) {
        Some(order) => vec![order.clone()],
        None => svc.store.history(id, last_sent).await?,
    };
    if send_all(tx, &versions).await.is_err() {
        return Ok(None);
    }
    Ok(Some(match versions.last() {
        Some(o) => (o.version(), o.status().is_final()),
        None => (last_sent, false),
    }))
}

/// The announced order, if it is the version right after `last_sent` of
/// `id`: then it is all a read would find that this announcement covers.
fn next_version<'a>(
    announced: Option<&'a Order>,
    id: &OrderId,
    last_sent: i64,
) -> Option<&'a Order> {
    announced.filter(|order| order.id() == id && order.version() == last_sent + 1)
}

pub(super) async fn watch(
    svc: Orders,
    caller: Caller,
    mut end: StreamEnd,
    raw_id: String,
    after_version: i64,
) -> Result<EventStream, ServiceError> {
    if after_version < 0 {
        let mut v = crate::domain::Violations::default();
        v.add("after_version", "must not be negative");
        return Err(ServiceError::Invalid(v));
    }
    // Followed before it is read (step 1 above).
    let id = svc.order_id(&raw_id)?;
    let mut feed = svc.store.order_changes(&id);
    let current = svc.visible_id(&caller, &id, &raw_id).await?;
    if after_version > current.version() {
        return Err(ServiceError::OutOfRange(
            "after_version is newer than the order's current version",
        ));
    }
    // Errors before the first event are returned as the call's status; from
    // here on they travel in the stream.
    let final_now = current.status().is_final();
    let initial = if after_version == 0 {
        vec![Order::clone(&current)]
    } else {
        svc.store.history(&id, after_version).await?
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        let (last_sent, done) = match initial.last() {
            Some(last) => (last.version(), last.status().is_final()),
            // The client already has the current version.
            None => (after_version, final_now),
        };
        if send_all(&tx, &initial).await.is_err() || done {
            return;
        }
        follow(&svc, &tx, &mut end, &mut feed, id, last_sent).await;
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Streams every later version of `id` until it is final or the client leaves.
async fn follow(
    svc: &Orders,
    tx: &Tx,
    end: &mut StreamEnd,
    feed: &mut OrderChanges,
    id: OrderId,
    mut last_sent: i64,
) {
    // Made once, not per change: each registers with what it waits on.
    let gone = tx.closed();
    let ending = end.wait();
    tokio::pin!(gone, ending);
    loop {
        let wake = tokio::select! {
            _ = &mut gone => return,
            status = &mut ending => Wake::Closed(status),
            change = feed.changed() => change.map_or_else(feed_closed, Wake::from),
        };
        let announced = match wake {
            Wake::Order(changed, version, order) if changed == id && version > last_sent => order,
            Wake::Order(..) => continue,
            Wake::Everything => None,
            Wake::Closed(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        match catch_up(svc, tx, &id, last_sent, announced.as_deref()).await {
            Ok(Some((last, done))) => {
                last_sent = last;
                if done {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
}

pub(super) fn track(
    svc: Orders,
    caller: Caller,
    mut end: StreamEnd,
    inbound: Streaming<pb::TrackOrdersRequest>,
) -> EventStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        if let Err(status) = run_track(&svc, &caller, &mut end, inbound, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The TrackOrders loop. Ends with OK once the client has half-closed and
/// nothing it follows can change any more (all final or unsubscribed).
async fn run_track(
    svc: &Orders,
    caller: &Caller,
    end: &mut StreamEnd,
    mut inbound: Streaming<pb::TrackOrdersRequest>,
    tx: &Tx,
) -> Result<(), Status> {
    use pb::track_orders_request::Action;

    let mut feed = svc.store.changes();
    // Followed orders and the last version sent of each.
    let mut followed: HashMap<OrderId, i64> = HashMap::new();
    let mut half_closed = false;
    loop {
        if half_closed && followed.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            status = end.wait() => return Err(status),
            msg = inbound.message(), if !half_closed => match msg {
                Ok(Some(req)) => match req.action {
                    Some(Action::Subscribe(raw)) => {
                        let order = svc.visible(caller, &raw).await?;
                        if followed.contains_key(order.id()) {
                            continue;
                        }
                        if followed.len() >= MAX_TRACKED_ORDERS {
                            return Err(ServiceError::Exhausted("too many tracked orders (at most 1000)").into());
                        }
                        if send_all(tx, std::slice::from_ref(&order)).await.is_err() {
                            return Ok(());
                        }
                        if !order.status().is_final() {
                            followed.insert(order.id().clone(), order.version());
                        }
                    }
                    Some(Action::Unsubscribe(raw)) => {
                        if let Some(id) = OrderId::parse(&raw) {
                            followed.remove(&id);
                        }
                    }
                    None => {
                        let mut v = crate::domain::Violations::default();
                        v.add("action", "subscribe or unsubscribe is required");
                        return Err(ServiceError::Invalid(v).into());
                    }
                },
                Ok(None) => half_closed = true,
                // The client cancelled or broke its side: nobody to answer.
                Err(_) => return Ok(()),
            },
            wake = next_wake(&mut feed) => {
                let (due, announced): (Vec<OrderId>, _) = match wake {
                    Wake::Order(id, version, order) => match followed.get(&id) {
                        Some(&last) if version > last => (vec![id], order),
                        _ => continue,
                    },
                    Wake::Everything => (followed.keys().cloned().collect(), None),
                    Wake::Closed(status) => return Err(status),
                };
                for id in due {
                    let last = followed[&id];
                    match catch_up(svc, tx, &id, last, announced.as_deref()).await? {
                        None => return Ok(()),
                        Some((_, true)) => {
                            followed.remove(&id);
                        }
                        Some((last, false)) => {
                            followed.insert(id, last);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{now, order};

    #[test]
    fn only_the_very_next_version_of_the_followed_order_skips_the_read() {
        let v1 = order();
        let v2 = v1.advance(1, now()).unwrap();
        let id = v1.id().clone();
        // The next version of this order: sent as announced.
        assert_eq!(next_version(Some(&v2), &id, 1), Some(&v2));
        // A gap (the stream is further behind) or an old version: read.
        assert_eq!(next_version(Some(&v2), &id, 0), None);
        assert_eq!(next_version(Some(&v2), &id, 2), None);
        // Another order's version, or an announcement without the order.
        assert_eq!(next_version(Some(&order()), &id, 0), None);
        assert_eq!(next_version(None, &id, 1), None);
    }
}
