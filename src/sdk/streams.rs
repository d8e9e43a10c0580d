//! Streams that survive a server going away.
//!
//! [`OrderWatch`] reopens `WatchOrder` after the last version it passed on,
//! so it misses and repeats nothing. [`Tracker`] reopens `TrackOrders` and
//! subscribes every followed order again; the server then sends each order's
//! current version (`TrackOrders` has no per-order resume point), so versions
//! made while disconnected are coalesced into the current one, and nothing is
//! repeated. Follow an order with `watch_order` when every version matters. Both back off between
//! attempts and give up, with the last error, after [`RESUME_ATTEMPTS`]
//! failed reconnects in a row.

use super::{Client, Error, pb};
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// Failed reconnects in a row before a stream gives up. [`OrderWatch`] and
/// [`Tracker`] then pass on an error (UNAVAILABLE, typically) as their last
/// item. Any version received resets the count.
///
/// ```no_run
/// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
/// use tokio_stream::StreamExt;
/// let mut watch = client.watch_order("0193…", 0).await?;
/// while let Some(item) = watch.next().await {
///     match item {
///         Ok(order) => println!("version {}", order.version),
///         Err(e) => return Err(e), // the server stayed away for 10 reconnects
///     }
/// }
/// # Ok(()) }
/// ```
pub const RESUME_ATTEMPTS: u32 = 10;

fn is_final(order: &pb::Order) -> bool {
    matches!(
        pb::OrderStatus::try_from(order.status),
        Ok(pb::OrderStatus::Delivered | pb::OrderStatus::Cancelled)
    )
}

/// A stream error that a reconnect may cure: the server went away (its
/// UNAVAILABLE when draining, or a broken connection).
fn resumable(status: &tonic::Status) -> bool {
    grpc_platform::client::retryable(status)
}

/// Every version of one order, across reconnects. Items are orders, oldest
/// first, each version exactly once; the stream ends after a final status.
///
/// ```no_run
/// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
/// use tokio_stream::StreamExt;
/// let mut watch = client.watch_order("0193…", 0).await?;
/// while let Some(order) = watch.next().await {
///     let order = order?;
///     println!("version {} is {:?}", order.version, order.status());
/// }
/// # Ok(()) }
/// ```
pub struct OrderWatch {
    events: ReceiverStream<Result<pb::Order, Error>>,
}

impl OrderWatch {
    pub(super) async fn start(
        client: Client,
        order_id: String,
        after_version: i64,
    ) -> Result<Self, Error> {
        // The first stream is opened here, so refusals surface at once.
        let first = client.watch_order_stream(&order_id, after_version).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = after_version;
            let mut stream = Some(first);
            let mut failures = 0;
            loop {
                let mut events = match stream.take() {
                    Some(s) => s,
                    // A reopen that gets no answer within the client's
                    // deadline counts as a failed attempt: a connection that
                    // went silent must not hold the watch for ever.
                    None => match tokio::time::timeout(
                        client.conn.timeout(),
                        client.watch_order_stream(&order_id, last),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(
                            tonic::Status::unavailable("no answer to the watch's reopen in time")
                                .into(),
                        )
                    }) {
                        Ok(s) => s,
                        Err(e)
                            if e.status().is_some_and(resumable) && failures < RESUME_ATTEMPTS =>
                        {
                            failures += 1;
                            tracing::debug!(order_id = %order_id, failures, error = %e, "watch reopen failed");
                            tokio::time::sleep(client.conn.retry().backoff(failures)).await;
                            continue;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                };
                loop {
                    match events.next().await {
                        Some(Ok(event)) => {
                            failures = 0;
                            let Some(order) = event.order else { continue };
                            if order.version <= last {
                                continue; // already passed on before a reconnect
                            }
                            last = order.version;
                            let done = is_final(&order);
                            if tx.send(Ok(order)).await.is_err() || done {
                                return;
                            }
                        }
                        Some(Err(status)) if resumable(&status) => {
                            tracing::debug!(order_id = %order_id, last, code = ?status.code(), message = status.message(), "watch broke; reopening");
                            break;
                        }
                        Some(Err(status)) => {
                            let _ = tx.send(Err(status.into())).await;
                            return;
                        }
                        // Ended without a final version (a connection closed
                        // cleanly, say at its maximum age): reopen.
                        None => {
                            tracing::debug!(order_id = %order_id, last, "watch ended early; reopening");
                            break;
                        }
                    }
                }
                failures += 1;
                if failures > RESUME_ATTEMPTS {
                    let _ = tx
                        .send(Err(tonic::Status::unavailable(
                            "the watch could not be resumed",
                        )
                        .into()))
                        .await;
                    return;
                }
                tokio::time::sleep(client.conn.retry().backoff(failures)).await;
            }
        });
        Ok(Self {
            events: ReceiverStream::new(rx),
        })
    }
}

impl Stream for OrderWatch {
    type Item = Result<pb::Order, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// Many orders on one stream, across reconnects. Subscribe and unsubscribe
/// at any time; read the versions as a stream. Dropping the `Tracker` ends
/// it; [`Tracker::close`] stops subscribing and lets the stream end once
/// every followed order is final.
///
/// ```no_run
/// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
/// use tokio_stream::StreamExt;
/// let mut tracker = client.track_orders();
/// tracker.subscribe("0193…a").await;
/// tracker.subscribe("0193…b").await;
/// tracker.close();
/// while let Some(order) = tracker.next().await {
///     let order = order?;
///     println!("{} is at version {}", order.id, order.version);
/// }
/// # Ok(()) }
/// ```
pub struct Tracker {
    commands: Option<mpsc::Sender<Command>>,
    events: ReceiverStream<Result<pb::Order, Error>>,
}

impl Tracker {
    pub(super) fn start(client: Client) -> Self {
        let (commands, command_rx) = mpsc::channel(64);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(track(client, command_rx, tx));
        Self {
            commands: Some(commands),
            events: ReceiverStream::new(rx),
        }
    }

    /// Follow `order_id`: its current version, then every change. Waits
    /// while the tracker's queue of requests is full; does nothing after
    /// [`close`](Self::close).
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) {
    /// let tracker = client.track_orders();
    /// for id in ["0193…a", "0193…b"] {
    ///     tracker.subscribe(id).await;
    /// }
    /// # }
    /// ```
    pub async fn subscribe(&self, order_id: &str) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Subscribe(order_id.to_owned())).await;
        }
    }

    /// Stop following `order_id`; versions of it still on their way are
    /// dropped. Does nothing after [`close`](Self::close).
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) {
    /// let tracker = client.track_orders();
    /// tracker.subscribe("0193…").await;
    /// tracker.unsubscribe("0193…").await;
    /// # }
    /// ```
    pub async fn unsubscribe(&self, order_id: &str) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Unsubscribe(order_id.to_owned())).await;
        }
    }

    /// No more subscriptions: the stream ends once every followed order is final.
    ///
    /// ```no_run
    /// # async fn demo(client: orders::sdk::Client) -> Result<(), orders::sdk::Error> {
    /// use tokio_stream::StreamExt;
    /// let mut tracker = client.track_orders();
    /// tracker.subscribe("0193…").await;
    /// tracker.close();
    /// let versions: Vec<_> = tracker.collect().await; // ends when the order is final
    /// # Ok(()) }
    /// ```
    pub fn close(&mut self) {
        self.commands = None;
    }
}

impl Stream for Tracker {
    type Item = Result<pb::Order, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

fn subscribe(id: &str) -> pb::TrackOrdersRequest {
    pb::TrackOrdersRequest {
        action: Some(pb::track_orders_request::Action::Subscribe(id.to_owned())),
    }
}

/// The tracker's task: one `TrackOrders` stream at a time.
async fn track(
    client: Client,
    mut commands: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Result<pb::Order, Error>>,
) {
    // Followed ids and the last version passed on (0: none yet).
    let mut followed: HashMap<String, i64> = HashMap::new();
    let mut closed = false;
    let mut failures = 0;
    loop {
        if closed && followed.is_empty() {
            return;
        }
        let (requests, request_rx) = mpsc::channel(64);
        for id in followed.keys() {
            let _ = requests.send(subscribe(id)).await;
        }
        let mut requests = (!closed).then_some(requests);
        let mut events = match client
            .track_orders_stream(ReceiverStream::new(request_rx))
            .await
        {
            Ok(s) => s,
            Err(e) if e.status().is_some_and(resumable) && failures < RESUME_ATTEMPTS => {
                failures += 1;
                tokio::time::sleep(client.conn.retry().backoff(failures)).await;
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        loop {
            tokio::select! {
                command = commands.recv(), if !closed => match command {
                    Some(Command::Subscribe(id)) => {
                        followed.entry(id.clone()).or_insert(0);
                        if let Some(r) = &requests { let _ = r.send(subscribe(&id)).await; }
                    }
                    Some(Command::Unsubscribe(id)) => {
                        followed.remove(&id);
                        if let Some(r) = &requests {
                            let _ = r.send(pb::TrackOrdersRequest {
                                action: Some(pb::track_orders_request::Action::Unsubscribe(id)),
                            }).await;
                        }
                    }
                    None => {
                        closed = true;
                        requests = None; // half-close: the server ends when all are final
                    }
                },
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        failures = 0;
                        let Some(order) = event.order else { continue };
                        let Some(last) = followed.get_mut(&order.id) else { continue };
                        if order.version <= *last {
                            continue; // seen before a reconnect
                        }
                        *last = order.version;
                        if is_final(&order) {
                            followed.remove(&order.id);
                        }
                        if tx.send(Ok(order)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(status)) if resumable(&status) => break,
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status.into())).await;
                        return;
                    }
                    None if closed && followed.is_empty() => return,
                    None => break,
                },
            }
        }
        drop(requests);
        failures += 1;
        if failures > RESUME_ATTEMPTS {
            let _ = tx
                .send(Err(tonic::Status::unavailable(
                    "tracking could not be resumed",
                )
                .into()))
                .await;
            return;
        }
        tokio::time::sleep(client.conn.retry().backoff(failures)).await;
    }
}
