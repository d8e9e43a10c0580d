//! A request body within bounds: what a client sends can make the server
//! hold only so much memory, for only so long.
//!
//! What holds, for every call that reaches a handler:
//! - **Each method's limit.** No request message over its method's limit
//!   (`grpc_platform.v1.limits` in the proto, else `server.max_request_bytes`)
//!   is decoded: a message whose length prefix says more is refused at that
//!   prefix, before its bytes are buffered, and a compressed one (gzip or
//!   zstd) is decompressed, as it arrives, no further than the limit. A zstd
//!   frame that asks for a decoding window larger than common encoders use
//!   (16 MiB) is refused too. Both are [`MessageTooLarge`].
//! - **A budget for messages in transit.** A message that arrives in more
//!   than one piece is charged, from its length prefix to its last byte,
//!   against one server-wide budget (`server.max_request_memory_bytes`): the
//!   bytes that will be buffered for it, and for a compressed one the limit
//!   its decompression may reach and the decoder's own state. When the
//!   budget is spent the call is refused with [`MemoryBusy`], so many slow
//!   callers together cannot make the server hold more than the budget. A
//!   message that arrives whole in one piece is charged nothing: it is
//!   handed on at once.
//! - **A read timeout** (`server.request_read_timeout_ms`): a unary or
//!   server-streaming call's request must have fully arrived that long after
//!   the server starts waiting for it; in a client stream no gap between
//!   bytes may last longer, and in any stream a message begun must be
//!   complete within it. A bidirectional stream may otherwise wait for its
//!   client as long as its deadline allows. Past it, [`ReadTimeout`].
//!
//! Tonic still decodes (and decompresses) every message, with its own
//! per-service limit (`server.max_message_bytes`, the most any method may
//! declare): this body only ever lets through messages that fit their
//! method's limit, so a compressed message is decompressed twice, once here
//! into a counter and once by tonic. Compressed requests are rare and
//! small; the checks cost an uncompressed call a pass over each data
//! frame's length prefixes, and no clock read or timer unless the body has
//! to be waited for.
//!
//! Hand-written: the 5-byte message framing is the gRPC spec's, which no
//! crate exposes as a body adapter, and tonic's own limit is per service,
//! not per method.

use super::message_size::MessageTooLarge;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;

use crate::methods::RpcKind;

/// What a compressed message's decoder may hold besides its output: zstd's
/// context and its input and output buffers (the largest of the decoders),
/// rounded up.
const DECODER_BYTES: u32 = 512 * 1024;

/// The largest zstd window a request may ask for: 16 MiB, above what zstd's
/// and Go's encoders declare at their ordinary levels (zstd's own decoder
/// allows up to 128 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

const UNDECODABLE: &str = "compressed request message does not decompress";

/// The request did not arrive in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} did not arrive within the server's read timeout of {timeout:?}")]
pub(crate) struct ReadTimeout {
    what: &'static str,
    timeout: Duration,
}

impl ReadTimeout {
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    #[cfg(test)]
    pub(crate) fn for_tests(timeout: Duration) -> Self {
        ReadTimeout {
            what: "the request",
            timeout,
        }
    }
}

/// The server-wide budget for request messages in transit is spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server is receiving as many request bytes as it may hold at once ({budget} bytes); retry with backoff"
)]
pub(crate) struct MemoryBusy {
    budget: usize,
}

impl MemoryBusy {
    pub(crate) fn budget(&self) -> usize {
        self.budget
    }

    #[cfg(test)]
    pub(crate) fn for_tests(budget: usize) -> Self {
        MemoryBusy { budget }
    }
}

/// Why a request body was refused: kept for the layer, which answers the
/// call with it when the response has not started yet.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    TooLarge(MessageTooLarge),
    Timeout(ReadTimeout),
    Busy(MemoryBusy),
    /// A compressed message that does not decompress: INTERNAL, as the gRPC
    /// spec and tonic answer it.
    Undecodable,
}

impl Refusal {
    /// What the handler (or tonic) is told: the code and message the rescue
    /// layer would answer with, so a stream that already answered ends the
    /// same way.
    fn status(&self) -> Status {
        match self {
            Refusal::TooLarge(e) => Status::resource_exhausted(e.to_string()),
            Refusal::Timeout(e) => Status::deadline_exceeded(e.to_string()),
            Refusal::Busy(e) => Status::resource_exhausted(e.to_string()),
            Refusal::Undecodable => Status::internal(UNDECODABLE),
        }
    }

    pub(crate) fn into_error(self) -> super::rescue::BoxError {
        match self {
            Refusal::TooLarge(e) => e.into(),
            Refusal::Timeout(e) => e.into(),
            Refusal::Busy(e) => e.into(),
            Refusal::Undecodable => Box::new(Status::internal(UNDECODABLE)),
        }
    }
}

/// The server's settings for request bodies, shared by every call.
#[derive(Debug)]
pub(crate) struct BodyLimits {
    /// A method's limit when it declares none (`server.max_request_bytes`).
    pub(crate) default_max_request_bytes: u32,
    pub(crate) read_timeout: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

impl BodyLimits {
    pub(crate) fn new(
        default_max_request_bytes: u32,
        read_timeout: Duration,
        budget_bytes: usize,
    ) -> Self {
        Self {
            default_max_request_bytes,
            read_timeout,
            budget: Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS))),
            budget_bytes,
        }
    }

    /// Bytes of the budget not charged to any message now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.budget.available_permits()
    }
}

/// A request's content coding (`grpc-encoding`) that this body checks; any
/// other is left to tonic, which refuses what the service does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Gzip,
    Zstd,
}

impl Encoding {
    pub(crate) fn of(headers: &http::HeaderMap) -> Option<Self> {
        match headers.get(&super::names::GRPC_ENCODING)?.as_bytes() {
            b"gzip" => Some(Encoding::Gzip),
            b"zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }
}

/// Counts what a decoder writes, failing past the limit.
struct Counter {
    written: u64,
    limit: u64,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The decoder of the compressed message being received.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Counter>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Counter>>),
}

impl Decoder {
    fn new(encoding: Encoding, limit: u32) -> std::io::Result<Self> {
        let counter = Counter {
            written: 0,
            limit: u64::from(limit),
        };
        Ok(match encoding {
            Encoding::Gzip => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(counter))),
            Encoding::Zstd => {
                let mut decoder = zstd::stream::write::Decoder::new(counter)?;
                // Streaming encoders declare the window of their level, not
                // of the message (tonic's, at the default level: 2 MiB), so
                // the window cannot be held to the limit. The decoder only
                // touches as much of it as it writes, which the counter
                // bounds; frames asking for more than common encoders use
                // are refused.
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Decoder::Zstd(Box::new(decoder))
            }
        })
    }

    /// Feeds compressed bytes; `Err(true)` when the output went past the
    /// limit (or the frame asks for a window beyond it), `Err(false)` when
    /// the bytes do not decompress.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), bool> {
        while !data.is_empty() {
            let written = match self {
                Decoder::Gzip(d) => d.write(data),
                Decoder::Zstd(d) => d.write(data),
            };
            match written {
                // The compressed stream ended: tonic's decoder ignores what
                // follows it, and so does the check.
                Ok(0) => return Ok(()),
                Ok(n) => data = &data[n..],
                Err(e) => {
                    let over =
                        self.written() > self.limit() || e.to_string().contains("too much memory");
                    return Err(over);
                }
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        match self {
            Decoder::Gzip(d) => d.get_ref().written,
            Decoder::Zstd(d) => d.get_ref().written,
        }
    }

    fn limit(&self) -> u64 {
        match self {
            Decoder::Gzip(d) => d.get_ref().limit,
            Decoder::Zstd(d) => d.get_ref().limit,
        }
    }
}

/// Where the body is in the message framing.
#[derive(Default)]
struct Framing {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come; 0 between messages.
    remaining: u64,
    /// The current message is compressed with a checked encoding.
    decoder: Option<Decoder>,
    /// The current message's charge against the budget.
    charge: Option<OwnedSemaphorePermit>,
}

/// A request body held to its method's limit, the server's budget and the
/// read timeout (see the module documentation).
pub(crate) struct LimitedBody<B> {
    inner: B,
    limits: Arc<BodyLimits>,
    limit: u32,
    kind: RpcKind,
    encoding: Option<Encoding>,
    framing: Framing,
    /// When the body as a whole is due (unary and server-streaming calls),
    /// set when the server first has to wait for it.
    body_due: Option<Instant>,
    /// When the current message is due, set when the server first has to
    /// wait inside it.
    message_due: Option<Instant>,
    /// When the next byte is due (client streams), set when the server
    /// first has to wait after the last one.
    idle_due: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    refused: Arc<OnceLock<Refusal>>,
    ended: bool,
}

impl<B> LimitedBody<B> {
    pub(crate) fn new(
        inner: B,
        limits: Arc<BodyLimits>,
        limit: u32,
        kind: RpcKind,
        encoding: Option<Encoding>,
        refused: Arc<OnceLock<Refusal>>,
    ) -> Self {
        Self {
            inner,
            limits,
            limit,
            kind,
            encoding,
            framing: Framing::default(),
            body_due: None,
            message_due: None,
            idle_due: None,
            timer: None,
            refused,
            ended: false,
        }
    }

    /// Checks a data frame's bytes against the framing, the limit and the
    /// budget.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), Refusal> {
        let framing = &mut self.framing;
        while !data.is_empty() {
            if framing.remaining > 0 {
                let take = framing.remaining.min(data.len() as u64) as usize;
                if let Some(decoder) = framing.decoder.as_mut() {
                    decoder.feed(&data[..take]).map_err(|over| {
                        if over {
                            Refusal::TooLarge(MessageTooLarge::decompressed(self.limit))
                        } else {
                            Refusal::Undecodable
                        }
                    })?;
                }
                framing.remaining -= take as u64;
                data = &data[take..];
                if framing.remaining == 0 {
                    framing.decoder = None;
                    framing.charge = None;
                    self.message_due = None;
                }
                continue;
            }
            let take = (5 - framing.prefix_len).min(data.len());
            framing.prefix[framing.prefix_len..framing.prefix_len + take]
                .copy_from_slice(&data[..take]);
            framing.prefix_len += take;
            data = &data[take..];
            if framing.prefix_len < 5 {
                continue;
            }
            framing.prefix_len = 0;
            let [flag, a, b, c, d] = framing.prefix;
            let len = u32::from_be_bytes([a, b, c, d]);
            if len > self.limit {
                return Err(Refusal::TooLarge(MessageTooLarge::announced(
                    len, self.limit,
                )));
            }
            framing.remaining = u64::from(len);
            // Flag 1 with no checked encoding is tonic's to refuse.
            let encoding = self.encoding.filter(|_| flag == 1);
            let in_this_frame = data.len() as u64 >= framing.remaining;
            if !in_this_frame {
                let mut charge = len;
                if encoding.is_some() {
                    charge = charge
                        .saturating_add(self.limit)
                        .saturating_add(DECODER_BYTES);
                }
                match self.limits.budget.clone().try_acquire_many_owned(charge) {
                    Ok(permit) => framing.charge = Some(permit),
                    Err(_) => {
                        return Err(Refusal::Busy(MemoryBusy {
                            budget: self.limits.budget_bytes,
                        }));
                    }
                }
            }
            if let Some(encoding) = encoding {
                let decoder =
                    Decoder::new(encoding, self.limit).map_err(|_| Refusal::Undecodable)?;
                framing.decoder = Some(decoder);
            }
            if len == 0 {
                framing.charge = None;
                framing.decoder = None;
            }
        }
        Ok(())
    }

    /// The earliest time something is due now, setting what starts waiting.
    fn due(&mut self) -> Option<(Instant, &'static str)> {
        let now = || Instant::now() + self.limits.read_timeout;
        let mut due: Option<(Instant, &'static str)> = None;
        let mut consider = |at: Instant, what: &'static str| {
            if due.is_none_or(|(earliest, _)| at < earliest) {
                due = Some((at, what));
            }
        };
        match self.kind {
            RpcKind::Unary | RpcKind::ServerStream => {
                let at = *self.body_due.get_or_insert_with(now);
                consider(at, "the request");
            }
            RpcKind::ClientStream | RpcKind::BidiStream => {
                let in_message = self.framing.remaining > 0 || self.framing.prefix_len > 0;
                if in_message {
                    let at = *self.message_due.get_or_insert_with(now);
                    consider(at, "a request message");
                }
                if self.kind == RpcKind::ClientStream {
                    let at = *self.idle_due.get_or_insert_with(now);
                    consider(at, "more of the request stream");
                }
            }
        }
        due
    }

    fn refuse(&mut self, refusal: Refusal) -> Status {
        self.ended = true;
        self.framing = Framing::default();
        let status = refusal.status();
        let _ = self.refused.set(refusal);
        status
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !data.has_remaining() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    this.idle_due = None;
                    if let Err(refusal) = this.feed(data.chunk()) {
                        return Poll::Ready(Some(Err(this.refuse(refusal))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.ended = true;
                this.framing = Framing::default();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some((at, what)) = this.due() else {
                    return Poll::Pending;
                };
                let timer = match &mut this.timer {
                    Some(timer) => {
                        if timer.deadline() != at {
                            timer.as_mut().reset(at);
                        }
                        timer
                    }
                    None => this.timer.insert(Box::pin(tokio::time::sleep_until(at))),
                };
                if timer.as_mut().poll(cx).is_ready() {
                    let timeout = this.limits.read_timeout;
                    let status = this.refuse(Refusal::Timeout(ReadTimeout { what, timeout }));
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Code;

    const LIMIT: u32 = 64 * 1024;
    const TIMEOUT: Duration = Duration::from_secs(5);

    type Chunks = StreamBody<ReceiverStream<Result<Frame<Bytes>, Status>>>;

    /// A body fed by the test, piece by piece, and held to `LIMIT`.
    struct Fed {
        body: LimitedBody<Chunks>,
        send: mpsc::Sender<Result<Frame<Bytes>, Status>>,
        refused: Arc<OnceLock<Refusal>>,
    }

    fn fed(limits: &Arc<BodyLimits>, kind: RpcKind, encoding: Option<Encoding>) -> Fed {
        let (send, receive) = mpsc::channel(16);
        let refused = Arc::new(OnceLock::new());
        let inner = StreamBody::new(ReceiverStream::new(receive));
        let body = LimitedBody::new(
            inner,
            limits.clone(),
            LIMIT,
            kind,
            encoding,
            refused.clone(),
        );
        Fed {
            body,
            send,
            refused,
        }
    }

    fn limits() -> Arc<BodyLimits> {
        Arc::new(BodyLimits::new(LIMIT, TIMEOUT, 1 << 20))
    }

    fn message(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut framed = vec![flag];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    }

    fn gzip(payload: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(payload).unwrap();
        encoder.finish().unwrap()
    }

    impl Fed {
        async fn send(&self, bytes: &[u8]) {
            let frame = Frame::data(Bytes::copy_from_slice(bytes));
            self.send.send(Ok(frame)).await.unwrap();
        }

        /// The next frame's data, or the error the body ends with.
        async fn next(&mut self) -> Option<Result<Bytes, Status>> {
            let frame = self.body.frame().await?;
            Some(frame.map(|f| f.into_data().unwrap()))
        }

        fn refusal(&self) -> Refusal {
            self.refused
                .get()
                .cloned()
                .expect("a refusal kept for the layer")
        }
    }

    fn assert_too_large(refusal: Refusal, says: &str) {
        let Refusal::TooLarge(too_large) = refusal else {
            panic!("not MessageTooLarge: {refusal:?}");
        };
        assert_eq!(too_large.limit(), Some(u64::from(LIMIT)));
        assert!(too_large.to_string().contains(says), "{too_large}");
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_unchanged_compressed_or_not() {
        let mut plain = fed(&limits(), RpcKind::ClientStream, None);
        let bytes = message(0, &vec![7; LIMIT as usize]);
        plain.send(&bytes).await;
        assert_eq!(plain.next().await.unwrap().unwrap(), bytes);

        let mut zipped = fed(&limits(), RpcKind::Unary, Some(Encoding::Gzip));
        let bytes = message(1, &gzip(&vec![7; LIMIT as usize]));
        zipped.send(&bytes).await;
        drop(zipped.send.clone());
        assert_eq!(zipped.next().await.unwrap().unwrap(), bytes);
        assert!(zipped.refused.get().is_none());
    }

    #[tokio::test]
    async fn zstd_as_tonic_and_common_encoders_write_it_passes() {
        // Tonic's encoder streams at the default level, declaring a 2 MiB
        // window whatever the message; level 19 declares 8 MiB.
        for level in [0, 3, 19] {
            let payload = b"a small message".repeat(100);
            let mut compressed = Vec::new();
            let mut encoder = zstd::stream::read::Encoder::new(&payload[..], level).unwrap();
            std::io::copy(&mut encoder, &mut compressed).unwrap();
            let mut body = fed(&limits(), RpcKind::Unary, Some(Encoding::Zstd));
            let bytes = message(1, &compressed);
            body.send(&bytes).await;
            assert_eq!(body.next().await.unwrap().unwrap(), bytes, "level {level}");
        }
    }

    #[tokio::test]
    async fn a_length_prefix_over_the_limit_is_refused_before_its_bytes_come() {
        let mut body = fed(&limits(), RpcKind::Unary, None);
        // Only the prefix: it announces one byte over the limit.
        body.send(&[0, 0, 1, 0, 1]).await;
        let status = body.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_too_large(
            body.refusal(),
            "65537 bytes is over the method's limit of 65536",
        );
        assert!(body.next().await.is_none(), "the body ends there");
    }

    #[tokio::test]
    async fn a_gzip_bomb_is_decompressed_no_further_than_the_limit() {
        // A few kilobytes that would decompress to 16 MiB.
        let bomb = gzip(&vec![0; 16 << 20]);
        assert!(bomb.len() < 32 * 1024, "{}", bomb.len());
        let mut body = fed(&limits(), RpcKind::Unary, Some(Encoding::Gzip));
        body.send(&message(1, &bomb)).await;
        let status = body.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_too_large(body.refusal(), "decompresses to more than");
    }

    #[tokio::test]
    async fn a_zstd_bomb_and_a_zstd_frame_asking_for_a_huge_window_are_refused() {
        let bomb = zstd::encode_all(&vec![0u8; 16 << 20][..], 19).unwrap();
        assert!(bomb.len() < 2048, "{}", bomb.len());
        let mut body = fed(&limits(), RpcKind::Unary, Some(Encoding::Zstd));
        body.send(&message(1, &bomb)).await;
        assert_eq!(
            body.next().await.unwrap().unwrap_err().code(),
            Code::ResourceExhausted
        );
        assert_too_large(body.refusal(), "decompresses to more than");

        // A small message whose frame declares a 128 MiB window and no
        // content size, more than common encoders ask for.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
            .unwrap();
        encoder.include_contentsize(false).unwrap();
        encoder.write_all(b"a small message").unwrap();
        let wide = encoder.finish().unwrap();
        let mut body = fed(&limits(), RpcKind::Unary, Some(Encoding::Zstd));
        body.send(&message(1, &wide)).await;
        assert_eq!(
            body.next().await.unwrap().unwrap_err().code(),
            Code::ResourceExhausted
        );
        assert_too_large(body.refusal(), "decompresses to more than");
    }

    #[tokio::test]
    async fn bytes_that_do_not_decompress_are_internal() {
        let mut body = fed(&limits(), RpcKind::Unary, Some(Encoding::Gzip));
        body.send(&message(1, b"this is not gzip at all")).await;
        let status = body.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(matches!(body.refusal(), Refusal::Undecodable));
    }

    #[tokio::test]
    async fn messages_in_transit_are_charged_to_the_budget_until_their_last_byte() {
        let limits = limits();
        let budget = limits.available();
        let payload = vec![1u8; 60 * 1024];
        let framed = message(0, &payload);
        let (head, tail) = framed.split_at(1000);

        // Callers each send the start of a 60 KiB message: the budget
        // (1 MiB) takes seventeen of them, not eighteen.
        let mut bodies = Vec::new();
        for _ in 0..17 {
            let mut body = fed(&limits, RpcKind::Unary, None);
            body.send(head).await;
            body.next().await.unwrap().unwrap();
            bodies.push(body);
        }
        assert_eq!(limits.available(), budget - 17 * payload.len());
        let mut eighteenth = fed(&limits, RpcKind::Unary, None);
        eighteenth.send(head).await;
        let status = eighteenth.next().await.unwrap().expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let Refusal::Busy(busy) = eighteenth.refusal() else {
            panic!("not MemoryBusy");
        };
        assert_eq!(busy.budget(), 1 << 20);

        // A message that arrives whole costs nothing.
        let mut whole = fed(&limits, RpcKind::Unary, None);
        whole.send(&framed).await;
        whole.next().await.unwrap().unwrap();

        // The rest arrives: each message gives its charge back.
        for body in &mut bodies {
            body.send(tail).await;
            body.next().await.unwrap().unwrap();
        }
        assert_eq!(limits.available(), budget);

        // A call that goes away mid-message gives it back too.
        let mut gone = fed(&limits, RpcKind::Unary, None);
        gone.send(head).await;
        gone.next().await.unwrap().unwrap();
        assert!(limits.available() < budget);
        drop(gone);
        assert_eq!(limits.available(), budget);
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_request_that_never_finishes_is_refused_after_the_read_timeout() {
        let mut body = fed(&limits(), RpcKind::Unary, None);
        // The prefix and a few bytes, then nothing more.
        body.send(&message(0, &[1; 100])[..50]).await;
        body.next().await.unwrap().unwrap();
        let started = Instant::now();
        let status = body.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(started.elapsed(), TIMEOUT);
        let Refusal::Timeout(late) = body.refusal() else {
            panic!("not ReadTimeout");
        };
        assert_eq!(late.timeout(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_stream_must_keep_sending_and_a_bidi_stream_may_wait() {
        // A client stream: trickling keeps it alive, silence does not.
        let mut stream = fed(&limits(), RpcKind::ClientStream, None);
        for _ in 0..3 {
            stream.send(&message(0, b"update")).await;
            stream.next().await.unwrap().unwrap();
            tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        }
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("more of the request stream"));

        // A bidirectional stream between messages waits as long as the
        // call's deadline allows...
        let mut chat = fed(&limits(), RpcKind::BidiStream, None);
        chat.send(&message(0, b"hello")).await;
        chat.next().await.unwrap().unwrap();
        let waited = tokio::time::timeout(TIMEOUT * 10, chat.next()).await;
        assert!(waited.is_err(), "still waiting, not refused");
        // ...but a message it has begun must be complete in time.
        chat.send(&message(0, b"a message cut short")[..8]).await;
        chat.next().await.unwrap().unwrap();
        let status = chat.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("a request message"));
    }
}
