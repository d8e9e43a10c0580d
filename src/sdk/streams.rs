//! Streams that survive a server going away. The platform's streams
//! ([`Resumed`], [`Subscriptions`]) reconnect, back off, give each reopen
//! the client's deadline to be answered, and give up; what is here is what
//! only the orders service knows: which RPC to open, where a version is,
//! which statuses are final, and the requests that follow an order.
//!
//! [`OrderWatch`] reopens `WatchOrder` after the last version it passed on,
//! so it misses and repeats nothing. [`Tracker`] reopens `TrackOrders` and
//! subscribes every followed order again; the server then sends each order's
//! current version (`TrackOrders` has no per-order resume point), so versions
//! made while disconnected are coalesced into the current one, and nothing is
//! repeated. Follow an order with `watch_order` when every version matters.
//! Both back off between attempts and give up, with the last error, after
//! [`RESUME_ATTEMPTS`] failed reconnects in a row.

use super::{Client, Error, pb};
use grpc_platform::client::{Requests, Resumable, Resumed, Subscribable, Subscriptions};
use pb::track_orders_request::Action;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tracing::Instrument;

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
    versions: Resumed<pb::Order>,
}

/// One order's `WatchOrder`, resumed after a version.
struct Watch {
    client: Client,
    order_id: String,
}

impl Resumable for Watch {
    type Message = pb::OrderEvent;
    type Item = pb::Order;
    type Cursor = i64;
    type Stream = tonic::Streaming<pb::OrderEvent>;

    async fn open(&self, after_version: i64) -> Result<Self::Stream, Error> {
        self.client
            .watch_order_stream(&self.order_id, after_version)
            .await
    }

    fn item(&self, event: pb::OrderEvent) -> Option<(i64, pb::Order)> {
        event.order.map(|order| (order.version, order))
    }

    fn is_final(&self, order: &pb::Order) -> bool {
        is_final(order)
    }
}

impl OrderWatch {
    pub(super) async fn start(
        client: Client,
        order_id: String,
        after_version: i64,
    ) -> Result<Self, Error> {
        // The first stream is opened here, so refusals surface at once.
        let span = tracing::debug_span!("watch_order", order_id = %order_id);
        let conn = client.conn.clone();
        let watch = Watch { client, order_id };
        let versions = Resumed::start(&conn, watch, after_version, RESUME_ATTEMPTS)
            .instrument(span)
            .await?;
        Ok(Self { versions })
    }
}

impl Stream for OrderWatch {
    type Item = Result<pb::Order, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.versions).poll_next(cx)
    }
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
    orders: Subscriptions<String, pb::Order>,
}

/// `TrackOrders`, with orders as the keys subscribed to.
struct Track {
    client: Client,
}

impl Subscribable for Track {
    type Key = String;
    type Request = pb::TrackOrdersRequest;
    type Message = pb::OrderEvent;
    type Item = pb::Order;
    type Cursor = i64;
    type Stream = tonic::Streaming<pb::OrderEvent>;

    async fn open(
        &self,
        requests: Requests<pb::TrackOrdersRequest>,
    ) -> Result<Self::Stream, Error> {
        self.client.track_orders_stream(requests).await
    }

    fn subscribe(&self, order_id: &String) -> pb::TrackOrdersRequest {
        pb::TrackOrdersRequest {
            action: Some(Action::Subscribe(order_id.clone())),
        }
    }

    fn unsubscribe(&self, order_id: &String) -> pb::TrackOrdersRequest {
        pb::TrackOrdersRequest {
            action: Some(Action::Unsubscribe(order_id.clone())),
        }
    }

    fn item(&self, event: pb::OrderEvent) -> Option<(String, i64, pb::Order)> {
        event
            .order
            .map(|order| (order.id.clone(), order.version, order))
    }

    fn is_final(&self, order: &pb::Order) -> bool {
        is_final(order)
    }
}

impl Tracker {
    pub(super) fn start(client: Client) -> Self {
        let _span = tracing::debug_span!("track_orders").entered();
        let conn = client.conn.clone();
        Self {
            orders: Subscriptions::start(&conn, Track { client }, RESUME_ATTEMPTS),
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
        self.orders.subscribe(order_id.to_owned()).await;
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
        self.orders.unsubscribe(order_id.to_owned()).await;
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
        self.orders.close();
    }
}

impl Stream for Tracker {
    type Item = Result<pb::Order, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.orders).poll_next(cx)
    }
}
