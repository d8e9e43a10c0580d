//! Streams that survive a server going away.
//!
//! A server stream breaks when its server restarts, drains or recycles the
//! connection. Two kinds of stream can be carried across that by the client
//! alone, from what the typed client knows of its service: a server stream
//! that can start after a position ([`Resumable`], followed by [`Resumed`]),
//! and a bidirectional stream of subscriptions to keys ([`Subscribable`],
//! followed by [`Subscriptions`]). Both run in a task that reads one stream
//! at a time and passes items on through a queue; they share how reconnects
//! are paced, timed and counted ([`Reconnects`]).

use super::{Connection, Error, RetryPolicy, retryable};
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::Instrument;

/// Items waiting for the caller to read them; a full queue holds the
/// stream back (and the server, through flow control).
const QUEUE: usize = 64;

/// A server stream that can be reopened after a position: what a typed
/// client tells [`Resumed`] about one of its service's streams.
///
/// The server must send items in the order of their positions, and a
/// stream opened after a position must start with the first item after it
/// (or with an earlier one: items not after the last one passed on are
/// dropped).
///
/// ```no_run
/// use grpc_platform::client::{Connection, Error, Resumable, Resumed};
/// use tokio_stream::StreamExt;
///
/// #[derive(Debug)]
/// struct Version { number: u64, last: bool }
///
/// /// A thing's versions; the generated client would stand where
/// /// `open_stream` does.
/// struct Versions { connection: Connection, thing: String }
///
/// # async fn open_stream(_: &Connection, _: &str, _: u64) -> Result<tonic::Streaming<Version>, Error> { unimplemented!() }
/// impl Resumable for Versions {
///     type Message = Version;
///     type Item = Version;
///     type Cursor = u64;
///     type Stream = tonic::Streaming<Version>;
///
///     async fn open(&self, after: u64) -> Result<Self::Stream, Error> {
///         open_stream(&self.connection, &self.thing, after).await
///     }
///     fn item(&self, version: Version) -> Option<(u64, Version)> {
///         Some((version.number, version))
///     }
///     fn is_final(&self, version: &Version) -> bool {
///         version.last
///     }
/// }
///
/// # async fn demo(connection: Connection) -> Result<(), Error> {
/// let versions = Versions { connection: connection.clone(), thing: "thing-1".into() };
/// let mut stream = Resumed::start(&connection, versions, 0, 10).await?;
/// while let Some(version) = stream.next().await {
///     println!("version {}", version?.number);
/// }
/// # Ok(()) }
/// ```
pub trait Resumable: Send + Sync + 'static {
    /// What the server sends.
    type Message: Send + 'static;
    /// What the stream passes on.
    type Item: Send + 'static;
    /// Where an item is in the stream (a version, a sequence number); a
    /// reopen asks for the items after the last one passed on.
    type Cursor: Ord + Clone + Debug + Send + Sync + 'static;
    /// The server's stream, as the generated client returns it
    /// (`tonic::Streaming<Self::Message>`).
    type Stream: Stream<Item = Result<Self::Message, Status>> + Send + 'static;

    /// Opens the stream after `after`.
    fn open(&self, after: Self::Cursor)
    -> impl Future<Output = Result<Self::Stream, Error>> + Send;

    /// The item a message carries, and its position; `None` for a message
    /// that carries none, which is dropped.
    fn item(&self, message: Self::Message) -> Option<(Self::Cursor, Self::Item)>;

    /// Whether `item` is the stream's last: the stream ends after it.
    fn is_final(&self, item: &Self::Item) -> bool;
}

/// Every item of a [`Resumable`] stream, oldest first, each exactly once,
/// across reconnects; an error ends it as its last item.
///
/// A task on the current Tokio runtime reads the server's stream and passes
/// items on through a queue, which this reads; dropping this ends the task.
/// A broken stream is reopened after the position of the last item passed
/// on, so nothing is missed or repeated as long as the server keeps what
/// was made meanwhile. It is reopened when the error is one a new attempt
/// may cure ([`retryable`]: UNAVAILABLE, or a connection that broke), and
/// when the stream ends cleanly before its last item (a connection closed
/// at its maximum age). Each reopen waits a pause from the connection's
/// [`RetryPolicy::backoff`] and gets the connection's
/// [`timeout`](Connection::timeout) to be answered. After `attempts`
/// failures in a row (streams broken and reopens failed; any message
/// received resets the count) the stream gives up, passing on the last
/// error. Any other error is passed on at once, and ends the stream.
pub struct Resumed<T> {
    items: ReceiverStream<Result<T, Error>>,
}

impl<T: Send + 'static> Resumed<T> {
    /// Opens `source`'s stream after `after` and follows it in a task on the
    /// current Tokio runtime (its events in the tracing span current here).
    /// The first stream is opened before this returns, so an error opening
    /// it (the server's refusal, or no server) is returned here, not
    /// retried. Reconnects use `connection`'s retry policy and timeout; the
    /// stream gives up after `attempts` failures in a row.
    ///
    /// ```no_run
    /// # async fn demo<S: grpc_platform::client::Resumable<Cursor = u64>>(connection: grpc_platform::client::Connection, source: S) -> Result<(), grpc_platform::client::Error> {
    /// use grpc_platform::client::Resumed;
    /// let stream = Resumed::start(&connection, source, 0, 10).await?;
    /// # Ok(()) }
    /// ```
    pub async fn start<S: Resumable<Item = T>>(
        connection: &Connection,
        source: S,
        after: S::Cursor,
        attempts: u32,
    ) -> Result<Self, Error> {
        let first = source.open(after.clone()).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let reconnects = Reconnects::new(connection, attempts);
        tokio::spawn(
            follow(source, Box::pin(first), after, reconnects, tx)
                .instrument(tracing::Span::current()),
        );
        Ok(Self {
            items: ReceiverStream::new(rx),
        })
    }
}

impl<T> Stream for Resumed<T> {
    type Item = Result<T, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.items).poll_next(cx)
    }
}

/// A bidirectional stream whose requests subscribe to keys: what a typed
/// client tells [`Subscriptions`] about one of its service's streams.
///
/// The server must answer a subscription with the key's current item (or
/// its items from some earlier one on) and then each later one, in order;
/// when the request side ends, it should end the stream once every key
/// subscribed has had its last item.
pub trait Subscribable: Send + Sync + 'static {
    /// What a subscription is to (an id).
    type Key: Eq + Hash + Send + 'static;
    /// What the client sends.
    type Request: Send + 'static;
    /// What the server sends.
    type Message: Send + 'static;
    /// What the stream passes on.
    type Item: Send + 'static;
    /// Where an item is among its key's items (a version).
    type Cursor: Ord + Send + 'static;
    /// The server's stream, as the generated client returns it
    /// (`tonic::Streaming<Self::Message>`).
    type Stream: Stream<Item = Result<Self::Message, Status>> + Send + 'static;

    /// Opens the stream with `requests` as its request side.
    fn open(
        &self,
        requests: Requests<Self::Request>,
    ) -> impl Future<Output = Result<Self::Stream, Error>> + Send;

    /// The request that subscribes to `key`.
    fn subscribe(&self, key: &Self::Key) -> Self::Request;

    /// The request that ends the subscription to `key`.
    fn unsubscribe(&self, key: &Self::Key) -> Self::Request;

    /// The item a message carries, its key and its position; `None` for a
    /// message that carries none, which is dropped.
    fn item(&self, message: Self::Message) -> Option<(Self::Key, Self::Cursor, Self::Item)>;

    /// Whether `item` is its key's last: the key is no longer followed
    /// after it.
    fn is_final(&self, item: &Self::Item) -> bool;
}

/// The request side of a [`Subscriptions`] stream: a subscription to each
/// key followed when it was opened, then the requests made while it is
/// open. It ends when the subscriptions are closed
/// ([`Subscriptions::close`]), or the stream is replaced by a new one.
pub struct Requests<R> {
    replay: VecDeque<R>,
    live: ReceiverStream<R>,
}

// Neither field is ever pinned: the requests are moved out of them.
impl<R> Unpin for Requests<R> {}

impl<R> Stream for Requests<R> {
    type Item = R;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<R>> {
        let this = self.get_mut();
        match this.replay.pop_front() {
            Some(request) => Poll::Ready(Some(request)),
            None => Pin::new(&mut this.live).poll_next(cx),
        }
    }
}

enum Command<K> {
    Subscribe(K),
    Unsubscribe(K),
}

/// The items of the keys subscribed to on a [`Subscribable`] stream, across
/// reconnects; an error ends it as its last item.
///
/// On a new stream every key still followed is subscribed again; the
/// server then sends each one's current item, so items made while
/// disconnected may be coalesced into the current one, but none is
/// repeated: an item not after the last one passed on for its key is
/// dropped. The stream is reopened, paced, timed and given up on as a
/// [`Resumed`] stream is; it also reopens when the server ends it while
/// keys are followed. Dropping it ends the task that reads the server's
/// stream.
pub struct Subscriptions<K, T> {
    commands: Option<mpsc::Sender<Command<K>>>,
    items: ReceiverStream<Result<T, Error>>,
}

impl<K: Send + 'static, T: Send + 'static> Subscriptions<K, T> {
    /// Follows `source`'s stream in a task on the current Tokio runtime
    /// (which must exist; its events are in the tracing span current here),
    /// which opens it; errors, the first stream's included, arrive as
    /// items. Opens use `connection`'s retry policy and timeout; the stream
    /// gives up after `attempts` failures in a row.
    ///
    /// ```no_run
    /// # fn demo<S: grpc_platform::client::Subscribable<Key = String>>(connection: grpc_platform::client::Connection, source: S) {
    /// use grpc_platform::client::Subscriptions;
    /// let subscriptions = Subscriptions::start(&connection, source, 10);
    /// # }
    /// ```
    pub fn start<S: Subscribable<Key = K, Item = T>>(
        connection: &Connection,
        source: S,
        attempts: u32,
    ) -> Self {
        let (commands, command_rx) = mpsc::channel(QUEUE);
        let (tx, rx) = mpsc::channel(QUEUE);
        let reconnects = Reconnects::new(connection, attempts);
        tokio::spawn(
            track(source, command_rx, reconnects, tx).instrument(tracing::Span::current()),
        );
        Self {
            commands: Some(commands),
            items: ReceiverStream::new(rx),
        }
    }

    /// Follow `key`: its current item, then every later one. Waits while
    /// the queue of requests is full; does nothing after
    /// [`close`](Self::close).
    pub async fn subscribe(&self, key: K) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Subscribe(key)).await;
        }
    }

    /// Stop following `key`; items of it still on their way are dropped.
    /// Does nothing after [`close`](Self::close).
    pub async fn unsubscribe(&self, key: K) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Unsubscribe(key)).await;
        }
    }

    /// No more subscriptions: the request side ends, and the stream ends
    /// once the server has ended it with every followed key at its last
    /// item.
    pub fn close(&mut self) {
        self.commands = None;
    }
}

impl<K, T> Stream for Subscriptions<K, T> {
    type Item = Result<T, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.items).poll_next(cx)
    }
}

/// Pacing, timing and counting of reconnects: what both kinds of stream
/// share.
struct Reconnects {
    retry: RetryPolicy,
    timeout: Duration,
    attempts: u32,
    failures: u32,
}

impl Reconnects {
    fn new(connection: &Connection, attempts: u32) -> Self {
        Self {
            retry: connection.retry().clone(),
            timeout: connection.timeout(),
            attempts,
            failures: 0,
        }
    }

    /// A message arrived: the stream works.
    fn reset(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure (a broken stream, a failed reopen). `false` once
    /// more than `attempts` in a row have failed: give up. Otherwise waits
    /// the retry policy's pause before the next attempt.
    async fn failed(&mut self) -> bool {
        self.failures += 1;
        if self.failures > self.attempts {
            return false;
        }
        tokio::time::sleep(self.retry.backoff(self.failures)).await;
        true
    }

    /// Runs an open within the connection's timeout. One that gets no
    /// answer in time fails as UNAVAILABLE, so it counts as a failed
    /// attempt: a connection that went silent must not hold the stream for
    /// ever.
    async fn open<S>(&self, open: impl Future<Output = Result<S, Error>>) -> Result<S, Error> {
        tokio::time::timeout(self.timeout, open)
            .await
            .unwrap_or_else(|_| {
                Err(Status::unavailable("no answer to the stream's reopen in time").into())
            })
    }
}

/// Whether an error may be cured by opening the stream again.
fn resumable(error: &Error) -> bool {
    error.status().is_some_and(retryable)
}

/// `work`, unless the caller drops the stream first (`None`): a task must
/// not outlive its reader, holding a server stream open.
async fn unless_dropped<T, F: Future>(tx: &mpsc::Sender<T>, work: F) -> Option<F::Output> {
    tokio::select! {
        output = work => Some(output),
        () = tx.closed() => None,
    }
}

/// [`Resumed`]'s task: one stream at a time, reopened after `after`.
async fn follow<S: Resumable>(
    source: S,
    mut stream: Pin<Box<S::Stream>>,
    mut after: S::Cursor,
    mut reconnects: Reconnects,
    tx: mpsc::Sender<Result<S::Item, Error>>,
) {
    loop {
        let mut last_error: Error = loop {
            let Some(message) = unless_dropped(&tx, stream.next()).await else {
                return;
            };
            match message {
                Some(Ok(message)) => {
                    reconnects.reset();
                    let Some((position, item)) = source.item(message) else {
                        continue;
                    };
                    if position <= after {
                        continue; // passed on before a reconnect
                    }
                    after = position;
                    let done = source.is_final(&item);
                    if tx.send(Ok(item)).await.is_err() || done {
                        return;
                    }
                }
                Some(Err(status)) if retryable(&status) => {
                    tracing::debug!(?after, code = ?status.code(), message = status.message(), "stream broke; reopening");
                    break status.into();
                }
                Some(Err(status)) => {
                    let _ = tx.send(Err(status.into())).await;
                    return;
                }
                // Ended before its last item (a connection closed cleanly,
                // say at its maximum age): reopen.
                None => {
                    tracing::debug!(?after, "stream ended early; reopening");
                    break Status::unavailable("the stream ended before its last item").into();
                }
            }
        };
        stream = loop {
            let reopened = unless_dropped(&tx, async {
                if !reconnects.failed().await {
                    return None;
                }
                Some(reconnects.open(source.open(after.clone())).await)
            })
            .await;
            match reopened {
                None => return, // the caller is gone
                Some(None) => {
                    let _ = tx.send(Err(last_error)).await;
                    return;
                }
                Some(Some(Ok(stream))) => break Box::pin(stream),
                Some(Some(Err(e))) if resumable(&e) => {
                    tracing::debug!(?after, failures = reconnects.failures, error = %e, "stream reopen failed");
                    last_error = e;
                }
                Some(Some(Err(e))) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        };
    }
}

/// [`Subscriptions`]' task: one stream at a time, each subscribing to every
/// key followed.
async fn track<S: Subscribable>(
    source: S,
    mut commands: mpsc::Receiver<Command<S::Key>>,
    mut reconnects: Reconnects,
    tx: mpsc::Sender<Result<S::Item, Error>>,
) {
    // The keys followed, and the position of the last item passed on for
    // each (`None`: none yet).
    let mut followed: HashMap<S::Key, Option<S::Cursor>> = HashMap::new();
    let mut closed = false;
    loop {
        if closed && followed.is_empty() {
            return;
        }
        // The subscriptions are replayed ahead of the queue, not through
        // it: there may be more of them than it holds.
        let (live, live_rx) = mpsc::channel(QUEUE);
        let requests = Requests {
            replay: followed.keys().map(|k| source.subscribe(k)).collect(),
            live: ReceiverStream::new(live_rx),
        };
        // After `close`, the request side ends once the replay is sent.
        let mut live = (!closed).then_some(live);
        let opened = unless_dropped(&tx, reconnects.open(source.open(requests))).await;
        let mut stream = match opened {
            None => return,
            Some(Ok(stream)) => Box::pin(stream),
            Some(Err(e)) if resumable(&e) => {
                tracing::debug!(followed = followed.len(), failures = reconnects.failures, error = %e, "stream open failed");
                match unless_dropped(&tx, reconnects.failed()).await {
                    None => return,
                    Some(true) => continue,
                    Some(false) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let last_error: Error = loop {
            tokio::select! {
                command = commands.recv(), if !closed => match command {
                    // The key is followed before its request goes out, so
                    // that no item the request brings is dropped.
                    Some(Command::Subscribe(key)) => {
                        let request = source.subscribe(&key);
                        followed.entry(key).or_insert(None);
                        if let Some(l) = &live {
                            let _ = l.send(request).await;
                        }
                    }
                    Some(Command::Unsubscribe(key)) => {
                        followed.remove(&key);
                        if let Some(l) = &live {
                            let _ = l.send(source.unsubscribe(&key)).await;
                        }
                    }
                    None => {
                        closed = true;
                        live = None; // half-close: the server ends when all are final
                    }
                },
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        reconnects.reset();
                        let Some((key, position, item)) = source.item(message) else {
                            continue;
                        };
                        let Some(last) = followed.get_mut(&key) else {
                            continue; // not (or no longer) followed
                        };
                        if last.as_ref().is_some_and(|last| position <= *last) {
                            continue; // passed on before a reconnect
                        }
                        if source.is_final(&item) {
                            followed.remove(&key);
                        } else {
                            *last = Some(position);
                        }
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(status)) if retryable(&status) => {
                        tracing::debug!(followed = followed.len(), code = ?status.code(), message = status.message(), "stream broke; reopening");
                        break status.into();
                    }
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status.into())).await;
                        return;
                    }
                    None if closed && followed.is_empty() => return,
                    // Ended with keys still followed (a connection closed
                    // cleanly, say at its maximum age): reopen.
                    None => {
                        tracing::debug!(followed = followed.len(), "stream ended early; reopening");
                        break Status::unavailable("the stream ended with subscriptions open").into();
                    }
                },
                () = tx.closed() => return,
            }
        };
        drop(live);
        match unless_dropped(&tx, reconnects.failed()).await {
            None => return,
            Some(true) => {}
            Some(false) => {
                let _ = tx.send(Err(last_error)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use tonic::Code;

    /// A thing at a version; the last one a thing has is final.
    #[derive(Clone, Debug, PartialEq)]
    struct Thing {
        key: &'static str,
        version: u64,
        last: bool,
    }

    fn thing(version: u64) -> Result<Thing, Status> {
        Ok(Thing {
            key: "a",
            version,
            last: false,
        })
    }

    fn last(version: u64) -> Result<Thing, Status> {
        Ok(Thing {
            key: "a",
            version,
            last: true,
        })
    }

    fn broken(message: &str) -> Result<Thing, Status> {
        Err(Status::unavailable(message.to_owned()))
    }

    type Things = Pin<Box<dyn Stream<Item = Result<Thing, Status>> + Send>>;

    /// What one open of the stream does.
    enum Open {
        /// Fails with this status.
        Fails(Status),
        /// Never answers.
        Silent,
        /// Sends these, then ends (cleanly, unless the last is an error).
        Sends(Vec<Result<Thing, Status>>),
        /// Sends what arrives on this channel, ending when it closes.
        Channel(mpsc::Receiver<Result<Thing, Status>>),
    }

    /// A server whose opens follow a script, recording the cursor each
    /// open asked for.
    struct Script {
        opens: Mutex<VecDeque<Open>>,
        asked: Arc<Mutex<Vec<u64>>>,
    }

    impl Script {
        fn new(opens: Vec<Open>) -> (Self, Arc<Mutex<Vec<u64>>>) {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let script = Self {
                opens: Mutex::new(opens.into()),
                asked: asked.clone(),
            };
            (script, asked)
        }
    }

    impl Resumable for Script {
        type Message = Thing;
        type Item = Thing;
        type Cursor = u64;
        type Stream = Things;

        async fn open(&self, after: u64) -> Result<Things, Error> {
            self.asked.lock().unwrap().push(after);
            let open = self.opens.lock().unwrap().pop_front();
            match open.expect("no open left in the script") {
                Open::Fails(status) => Err(status.into()),
                Open::Silent => std::future::pending().await,
                Open::Sends(things) => Ok(Box::pin(tokio_stream::iter(things))),
                Open::Channel(rx) => Ok(Box::pin(ReceiverStream::new(rx))),
            }
        }

        fn item(&self, thing: Thing) -> Option<(u64, Thing)> {
            Some((thing.version, thing))
        }

        fn is_final(&self, thing: &Thing) -> bool {
            thing.last
        }
    }

    /// A connection that is never used for a call: only its retry policy
    /// (short pauses) and timeout count here.
    fn connection(timeout: Duration) -> Connection {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        Connection::from_channel(channel, None, timeout)
            .unwrap()
            .with_retry(
                RetryPolicy::default()
                    .initial_backoff(Duration::from_millis(1))
                    .max_backoff(Duration::from_millis(5)),
            )
    }

    /// Everything the stream passes on, to its end.
    async fn drain<T: Send + 'static>(
        stream: impl Stream<Item = Result<T, Error>>,
    ) -> Vec<Result<T, Error>> {
        tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
            .await
            .expect("the stream ends")
    }

    fn versions(items: &[Result<Thing, Error>]) -> Vec<u64> {
        items
            .iter()
            .map(|i| i.as_ref().expect("an item, not an error").version)
            .collect()
    }

    #[tokio::test]
    async fn every_item_passes_once_across_reconnects_each_resumed_after_the_last() {
        let (script, asked) = Script::new(vec![
            Open::Sends(vec![thing(1), thing(2), broken("draining")]),
            // Starts again at 2, then ends cleanly without a last item.
            Open::Sends(vec![thing(2), thing(3)]),
            Open::Fails(Status::unavailable("down")),
            // Starts from the beginning: all but 4 and 5 were passed on.
            Open::Sends(vec![thing(1), thing(3), thing(4), last(5)]),
        ]);
        let stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 3)
            .await
            .unwrap();
        let items = drain(stream).await;
        assert_eq!(versions(&items), [1, 2, 3, 4, 5]);
        assert_eq!(
            *asked.lock().unwrap(),
            [0, 2, 3, 3],
            "each open after the last passed on"
        );
    }

    #[tokio::test]
    async fn the_stream_ends_after_the_final_item() {
        let (script, asked) = Script::new(vec![Open::Sends(vec![thing(1), last(2), thing(3)])]);
        let stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 3)
            .await
            .unwrap();
        assert_eq!(versions(&drain(stream).await), [1, 2]);
        assert_eq!(asked.lock().unwrap().len(), 1, "not reopened");
    }

    #[tokio::test]
    async fn it_gives_up_after_the_attempts_fail_with_the_last_error() {
        let mut opens = vec![Open::Sends(vec![thing(1), broken("draining")])];
        for n in 1..=3 {
            opens.push(Open::Fails(Status::unavailable(format!("down {n}"))));
        }
        let (script, asked) = Script::new(opens);
        let stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 3)
            .await
            .unwrap();
        let mut items = drain(stream).await;
        let error = items.pop().unwrap().unwrap_err();
        assert_eq!(versions(&items), [1]);
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(
            error.status().unwrap().message(),
            "down 3",
            "the last error"
        );
        assert_eq!(
            *asked.lock().unwrap(),
            [0, 1, 1, 1],
            "three reopens, then no more"
        );
    }

    #[tokio::test]
    async fn streams_that_break_at_once_count_as_failures_and_an_item_resets_the_count() {
        let (script, asked) = Script::new(vec![
            Open::Sends(vec![broken("one")]),
            Open::Sends(vec![broken("two")]),
            // An item: the two failures before it are forgotten.
            Open::Sends(vec![thing(1), broken("three")]),
            Open::Sends(vec![broken("four")]),
            Open::Sends(vec![broken("five")]),
            Open::Sends(vec![broken("six")]),
        ]);
        let stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 2)
            .await
            .unwrap();
        let mut items = drain(stream).await;
        let error = items.pop().unwrap().unwrap_err();
        assert_eq!(versions(&items), [1]);
        assert_eq!(error.status().unwrap().message(), "five");
        assert_eq!(*asked.lock().unwrap(), [0, 0, 0, 1, 1]);
    }

    #[tokio::test]
    async fn an_error_no_reconnect_cures_is_passed_on_at_once() {
        // From the stream.
        let (script, asked) = Script::new(vec![Open::Sends(vec![
            thing(1),
            Err(Status::permission_denied("not yours")),
            thing(2),
        ])]);
        let stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 3)
            .await
            .unwrap();
        let mut items = drain(stream).await;
        assert_eq!(
            items.pop().unwrap().unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(versions(&items), [1]);
        assert_eq!(asked.lock().unwrap().len(), 1);

        // From a reopen.
        let (script, asked) = Script::new(vec![
            Open::Sends(vec![thing(1), broken("draining")]),
            Open::Fails(Status::not_found("gone")),
        ]);
        let stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 3)
            .await
            .unwrap();
        let mut items = drain(stream).await;
        assert_eq!(items.pop().unwrap().unwrap_err().code(), Code::NotFound);
        assert_eq!(versions(&items), [1]);
        assert_eq!(*asked.lock().unwrap(), [0, 1]);

        // From the first open, returned by `start`, even one a reopen would
        // retry.
        let (script, asked) = Script::new(vec![Open::Fails(Status::unavailable("down"))]);
        let refused = Resumed::start(&connection(Duration::from_secs(5)), script, 7, 3).await;
        assert_eq!(refused.err().unwrap().code(), Code::Unavailable);
        assert_eq!(*asked.lock().unwrap(), [7]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reopen_unanswered_within_the_timeout_is_a_failed_attempt() {
        let (script, asked) = Script::new(vec![
            Open::Sends(vec![thing(1), broken("draining")]),
            Open::Silent,
            Open::Sends(vec![last(2)]),
        ]);
        let stream = Resumed::start(&connection(Duration::from_secs(3)), script, 0, 3)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(versions(&drain(stream).await), [1, 2]);
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "waited the timeout"
        );
        assert_eq!(*asked.lock().unwrap(), [0, 1, 1]);
    }

    #[tokio::test]
    async fn dropping_the_stream_ends_its_task() {
        let (server, rx) = mpsc::channel(4);
        let (script, _) = Script::new(vec![Open::Channel(rx)]);
        let mut stream = Resumed::start(&connection(Duration::from_secs(5)), script, 0, 3)
            .await
            .unwrap();
        server.send(thing(1)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
        drop(stream);
        // The server's stream is dropped although nothing more is sent on it.
        tokio::time::timeout(Duration::from_secs(5), server.closed())
            .await
            .expect("the task ended and dropped the server's stream");
    }

    /// What a client sends on a subscription stream.
    #[derive(Debug, PartialEq, Eq, Hash, Clone)]
    enum Request {
        Subscribe(&'static str),
        Unsubscribe(&'static str),
    }

    /// One open of a subscription stream, as its server sees it.
    struct Opened {
        requests: Requests<Request>,
        replies: mpsc::Sender<Result<Thing, Status>>,
    }

    /// A subscription server the test plays: each open hands the test the
    /// requests and a sender of replies, or fails as the script says.
    struct Server {
        opened: mpsc::UnboundedSender<Opened>,
        /// Statuses the next opens fail with.
        failures: Arc<Mutex<VecDeque<Status>>>,
    }

    impl Server {
        fn new() -> (Self, mpsc::UnboundedReceiver<Opened>) {
            let (opened, rx) = mpsc::unbounded_channel();
            let server = Self {
                opened,
                failures: Arc::default(),
            };
            (server, rx)
        }
    }

    impl Subscribable for Server {
        type Key = &'static str;
        type Request = Request;
        type Message = Thing;
        type Item = Thing;
        type Cursor = u64;
        type Stream = ReceiverStream<Result<Thing, Status>>;

        async fn open(&self, requests: Requests<Request>) -> Result<Self::Stream, Error> {
            let failure = self.failures.lock().unwrap().pop_front();
            if let Some(status) = failure {
                return Err(status.into());
            }
            let (replies, rx) = mpsc::channel(QUEUE);
            let _ = self.opened.send(Opened { requests, replies });
            Ok(ReceiverStream::new(rx))
        }

        fn subscribe(&self, key: &&'static str) -> Request {
            Request::Subscribe(key)
        }

        fn unsubscribe(&self, key: &&'static str) -> Request {
            Request::Unsubscribe(key)
        }

        fn item(&self, thing: Thing) -> Option<(&'static str, u64, Thing)> {
            Some((thing.key, thing.version, thing))
        }

        fn is_final(&self, thing: &Thing) -> bool {
            thing.last
        }
    }

    fn of(key: &'static str, version: u64) -> Result<Thing, Status> {
        Ok(Thing {
            key,
            version,
            last: false,
        })
    }

    fn last_of(key: &'static str, version: u64) -> Result<Thing, Status> {
        Ok(Thing {
            key,
            version,
            last: true,
        })
    }

    async fn next_open(opened: &mut mpsc::UnboundedReceiver<Opened>) -> Opened {
        tokio::time::timeout(Duration::from_secs(5), opened.recv())
            .await
            .expect("the stream is opened")
            .unwrap()
    }

    async fn next_request(requests: &mut Requests<Request>) -> Option<Request> {
        tokio::time::timeout(Duration::from_secs(5), requests.next())
            .await
            .expect("a request, or the end of them")
    }

    async fn next_thing(
        subscriptions: &mut Subscriptions<&'static str, Thing>,
    ) -> (&'static str, u64) {
        let thing = tokio::time::timeout(Duration::from_secs(5), subscriptions.next())
            .await
            .expect("an item")
            .expect("not the end")
            .expect("not an error");
        (thing.key, thing.version)
    }

    #[tokio::test]
    async fn subscriptions_are_replayed_on_a_new_stream_and_nothing_is_repeated() {
        let (server, mut opened) = Server::new();
        let mut subscriptions =
            Subscriptions::start(&connection(Duration::from_secs(5)), server, 3);
        subscriptions.subscribe("a").await;
        subscriptions.subscribe("b").await;
        let mut first = next_open(&mut opened).await;
        assert_eq!(
            next_request(&mut first.requests).await,
            Some(Request::Subscribe("a"))
        );
        assert_eq!(
            next_request(&mut first.requests).await,
            Some(Request::Subscribe("b"))
        );
        first.replies.send(of("a", 1)).await.unwrap();
        first.replies.send(of("b", 1)).await.unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 1));
        assert_eq!(next_thing(&mut subscriptions).await, ("b", 1));
        first.replies.send(broken("draining")).await.unwrap();

        // The new stream subscribes to both again, and only then takes new
        // requests; the current versions it gets back were passed on.
        let mut second = next_open(&mut opened).await;
        let replayed: HashSet<Request> = [
            next_request(&mut second.requests).await.unwrap(),
            next_request(&mut second.requests).await.unwrap(),
        ]
        .into();
        assert_eq!(
            replayed,
            [Request::Subscribe("a"), Request::Subscribe("b")].into()
        );
        second.replies.send(of("a", 1)).await.unwrap();
        second.replies.send(of("b", 1)).await.unwrap();
        second.replies.send(of("a", 2)).await.unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 2));

        // Once unsubscribed, b's versions are dropped; c is new.
        subscriptions.unsubscribe("b").await;
        assert_eq!(
            next_request(&mut second.requests).await,
            Some(Request::Unsubscribe("b"))
        );
        second.replies.send(of("b", 2)).await.unwrap();
        subscriptions.subscribe("c").await;
        assert_eq!(
            next_request(&mut second.requests).await,
            Some(Request::Subscribe("c"))
        );
        second.replies.send(of("c", 1)).await.unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("c", 1));

        // Closed: the request side ends, and the stream ends with the
        // server's once every key followed is final.
        subscriptions.close();
        assert_eq!(next_request(&mut second.requests).await, None);
        second.replies.send(last_of("a", 3)).await.unwrap();
        second.replies.send(last_of("c", 2)).await.unwrap();
        drop(second.replies);
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 3));
        assert_eq!(next_thing(&mut subscriptions).await, ("c", 2));
        assert!(subscriptions.next().await.is_none());
        assert!(opened.try_recv().is_err(), "not opened again");
    }

    #[tokio::test]
    async fn a_clean_end_with_keys_followed_reopens_the_stream() {
        let (server, mut opened) = Server::new();
        let mut subscriptions =
            Subscriptions::start(&connection(Duration::from_secs(5)), server, 3);
        subscriptions.subscribe("a").await;
        let mut first = next_open(&mut opened).await;
        assert_eq!(
            next_request(&mut first.requests).await,
            Some(Request::Subscribe("a"))
        );
        first.replies.send(of("a", 1)).await.unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 1));
        drop(first.replies);
        let mut second = next_open(&mut opened).await;
        assert_eq!(
            next_request(&mut second.requests).await,
            Some(Request::Subscribe("a"))
        );
        second.replies.send(last_of("a", 2)).await.unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 2));
    }

    #[tokio::test]
    async fn more_subscriptions_than_the_queue_holds_are_all_replayed() {
        const KEYS: usize = 3 * QUEUE;
        let keys: Vec<&'static str> = (0..KEYS)
            .map(|n| &*Box::leak(format!("key-{n}").into_boxed_str()))
            .collect();
        let (server, mut opened) = Server::new();
        let subscriptions = Subscriptions::start(&connection(Duration::from_secs(5)), server, 3);
        let mut first = next_open(&mut opened).await;
        let reader = tokio::spawn(async move {
            for _ in 0..KEYS {
                next_request(&mut first.requests).await.unwrap();
            }
            first.replies.send(broken("draining")).await.unwrap();
        });
        for key in &keys {
            subscriptions.subscribe(key).await;
        }
        reader.await.unwrap();
        let mut second = next_open(&mut opened).await;
        let mut replayed = HashSet::new();
        for _ in 0..KEYS {
            replayed.insert(next_request(&mut second.requests).await.unwrap());
        }
        let expected: HashSet<Request> = keys.iter().map(|k| Request::Subscribe(k)).collect();
        assert_eq!(replayed, expected);
    }

    #[tokio::test]
    async fn subscriptions_give_up_after_the_attempts_fail_with_the_last_error() {
        let (server, mut opened) = Server::new();
        let failures = server.failures.clone();
        let mut subscriptions =
            Subscriptions::start(&connection(Duration::from_secs(5)), server, 3);
        subscriptions.subscribe("a").await;
        let first = next_open(&mut opened).await;
        first.replies.send(of("a", 1)).await.unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 1));
        // Every reopen fails from now on.
        failures
            .lock()
            .unwrap()
            .extend((1..=3).map(|n| Status::unavailable(format!("down {n}"))));
        first.replies.send(broken("draining")).await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(5), subscriptions.next())
            .await
            .expect("an item")
            .expect("not the end")
            .unwrap_err();
        assert_eq!(
            error.status().unwrap().message(),
            "down 3",
            "the last error"
        );
        assert!(subscriptions.next().await.is_none());
        assert!(failures.lock().unwrap().is_empty(), "three reopens");
        assert!(opened.try_recv().is_err(), "none of them opened");
    }

    #[tokio::test]
    async fn subscriptions_pass_on_an_error_no_reconnect_cures_at_once() {
        let (server, mut opened) = Server::new();
        let mut subscriptions =
            Subscriptions::start(&connection(Duration::from_secs(5)), server, 3);
        subscriptions.subscribe("a").await;
        let first = next_open(&mut opened).await;
        first.replies.send(of("a", 1)).await.unwrap();
        first
            .replies
            .send(Err(Status::permission_denied("not yours")))
            .await
            .unwrap();
        assert_eq!(next_thing(&mut subscriptions).await, ("a", 1));
        let error = subscriptions.next().await.unwrap().unwrap_err();
        assert_eq!(error.code(), Code::PermissionDenied);
        assert!(subscriptions.next().await.is_none());
        assert!(opened.try_recv().is_err(), "not reopened");
    }

    #[tokio::test]
    async fn dropping_the_subscriptions_ends_their_task() {
        let (server, mut opened) = Server::new();
        let subscriptions = Subscriptions::start(&connection(Duration::from_secs(5)), server, 3);
        subscriptions.subscribe("a").await;
        let first = next_open(&mut opened).await;
        drop(subscriptions);
        tokio::time::timeout(Duration::from_secs(5), first.replies.closed())
            .await
            .expect("the task ended and dropped the server's stream");
    }
}
