//! WatchOrder streams: fan-out with delivery latency (`--call watch`), and
//! followers that only count events and resume after a broken stream
//! (`--call mix`, for soaks across connection recycling).
//!
//! Delivery latency is measured from the moment the load generator sends
//! the UpdateOrder that makes a version to the moment a watcher receives
//! that version. Each watched order has one updater with one update in
//! flight, so the version an update will make is known before it is sent
//! (every change is exactly `version + 1`, and nothing else changes these
//! orders), and its send time is in the table before any watcher can see it.

use crate::stats::{Op, Stats, histogram, micros};
use crate::target::Target;
use crate::workload;
use hdrhistogram::Histogram;
use orders::pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tonic::Code;

/// When each version of one order was sent, and whether it falls in the
/// measured window.
type Sent = Mutex<HashMap<i64, (Instant, bool)>>;

/// Shared by the updaters, the watchers and the controller.
pub struct Fanout {
    pub orders: Vec<String>,
    /// Per order (same index as `orders`).
    sent: Vec<Sent>,
    /// Watchers per order.
    pub watchers_on: Vec<u64>,
    pub opened: AtomicUsize,
    pub open_failed: AtomicUsize,
    pub all_open: Notify,
    pub measuring: AtomicBool,
    pub events_sent: AtomicU64,
    pub deliveries_expected: AtomicU64,
    pub deliveries_received: AtomicU64,
    /// Every event received, measured or not (progress).
    pub events_seen: AtomicU64,
    pub stream_errors: Mutex<[u64; 17]>,
    /// Streams re-opened after they broke (followers only).
    pub resumed: AtomicU64,
    /// Events that did not follow the previous one received by the same
    /// watcher (a version skipped or repeated across a resume): must be 0.
    pub out_of_order: AtomicU64,
    /// Stream opens sent again because they never left this client.
    pub resent: AtomicU64,
}

impl Fanout {
    pub fn new(orders: Vec<String>, watchers: usize) -> Self {
        let k = orders.len().max(1);
        let watchers_on = (0..k)
            .map(|i| (watchers / k + usize::from(i < watchers % k)) as u64)
            .collect();
        Self {
            sent: orders.iter().map(|_| Mutex::new(HashMap::new())).collect(),
            orders,
            watchers_on,
            opened: AtomicUsize::new(0),
            open_failed: AtomicUsize::new(0),
            all_open: Notify::new(),
            measuring: AtomicBool::new(false),
            events_sent: AtomicU64::new(0),
            deliveries_expected: AtomicU64::new(0),
            deliveries_received: AtomicU64::new(0),
            events_seen: AtomicU64::new(0),
            stream_errors: Mutex::new([0; 17]),
            resumed: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            resent: AtomicU64::new(0),
        }
    }

    fn stream_error(&self, code: Code) {
        self.stream_errors.lock().expect("errors lock")[code as usize] += 1;
    }

    fn opened_one(&self, total: usize) {
        if self.opened.fetch_add(1, Ordering::AcqRel) + 1 + self.open_failed.load(Ordering::Acquire)
            >= total
        {
            self.all_open.notify_one();
        }
    }

    fn failed_one(&self, total: usize) {
        if self.open_failed.fetch_add(1, Ordering::AcqRel) + 1 + self.opened.load(Ordering::Acquire)
            >= total
        {
            self.all_open.notify_one();
        }
    }
}

/// One watcher of order `k`: opens its stream, reports when the first event
/// (the current order) arrives, then records the delivery latency of each
/// later version until `stop`. With `resume`, a broken stream is opened
/// again after the last version seen; otherwise the watcher ends.
pub async fn watcher(
    target: Arc<Target>,
    fanout: Arc<Fanout>,
    k: usize,
    connection: usize,
    total: usize,
    resume: bool,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut latency = histogram();
    let mut client = target.client(connection);
    let mut last = 0i64;
    let mut first = true;
    loop {
        let request = target.stream_request(pb::WatchOrderRequest {
            order_id: fanout.orders[k].clone(),
            after_version: last,
        });
        let opened = tokio::select! {
            r = client.watch_order(request) => r,
            _ = stop.changed() => return latency,
        };
        let mut stream = match opened {
            Ok(r) => r.into_inner(),
            Err(status) if orders::sdk::never_sent(&status) && !*stop.borrow() => {
                fanout.resent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(status) => {
                fanout.stream_error(status.code());
                if first {
                    fanout.failed_one(total);
                }
                if resume && !*stop.borrow() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return latency;
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => return latency,
            };
            match message {
                Ok(Some(pb::OrderEvent { order: Some(order) })) => {
                    let now = Instant::now();
                    if last > 0 && order.version != last + 1 {
                        fanout.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last = order.version;
                    fanout.events_seen.fetch_add(1, Ordering::Relaxed);
                    if first {
                        first = false;
                        fanout.opened_one(total);
                        continue;
                    }
                    let sent = fanout.sent[k]
                        .lock()
                        .expect("sent lock")
                        .get(&order.version)
                        .copied();
                    if let Some((at, true)) = sent {
                        latency.saturating_record(micros(now - at));
                        fanout.deliveries_received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(pb::OrderEvent { order: None })) => {}
                // The server ended the stream (final status, or shutting down).
                Ok(None) => break,
                Err(status) => {
                    fanout.stream_error(status.code());
                    break;
                }
            }
        }
        if first {
            fanout.failed_one(total);
            first = false;
        }
        if !resume || *stop.borrow() {
            return latency;
        }
        fanout.resumed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Updates order `k` every `period` (one update in flight), noting each
/// version's send time before sending it. Returns the UpdateOrder calls'
/// own stats.
pub async fn updater(
    target: Arc<Target>,
    fanout: Arc<Fanout>,
    k: usize,
    period: Duration,
    offset: Duration,
    mut stop: watch::Receiver<bool>,
) -> Stats {
    let mut stats = Stats::default();
    let mut client = target.client(0);
    // Every order starts at version 1 (just registered, never changed).
    let mut next = 2i64;
    let mut tick = tokio::time::interval_at(Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return stats,
        }
        let measured = fanout.measuring.load(Ordering::Acquire);
        let update = pb::UpdateOrderRequest {
            order_id: fanout.orders[k].clone(),
            address: Some(workload::address(1 + next % 1000)),
            expected_version: 0,
        };
        let start = Instant::now();
        fanout.sent[k]
            .lock()
            .expect("sent lock")
            .insert(next, (start, measured));
        // Counted before sending, so whoever waits for the deliveries never
        // sees a total that an update still in flight will raise.
        if measured {
            fanout.events_sent.fetch_add(1, Ordering::AcqRel);
            fanout
                .deliveries_expected
                .fetch_add(fanout.watchers_on[k], Ordering::AcqRel);
        }
        let result = client
            .update_order(target.request(tokio_stream::once(update)))
            .await;
        let code = match result {
            Ok(response) => {
                if let Some(order) = response.into_inner().order {
                    // Normally `next`; follow the server if it says otherwise.
                    next = order.version + 1;
                }
                Code::Ok
            }
            Err(status) => {
                // Nothing was applied: no event to wait for.
                if measured {
                    fanout.events_sent.fetch_sub(1, Ordering::AcqRel);
                    fanout
                        .deliveries_expected
                        .fetch_sub(fanout.watchers_on[k], Ordering::AcqRel);
                }
                status.code()
            }
        };
        if measured {
            stats.record(Op::Update, start.elapsed(), code);
        }
    }
}
