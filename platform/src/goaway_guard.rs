//! A guard between TLS and HTTP/2 that drops the one kind of frame h2
//! mistakes for a protocol error while a connection goes away.
//!
//! # The defect it covers
//!
//! A graceful GOAWAY is two steps (RFC 9113 §6.8, hyper's
//! `graceful_shutdown`): GOAWAY with the largest stream id and a PING; when
//! the PING is answered, a second GOAWAY naming the last stream the server
//! processed. Streams the client opens after that are to be ignored, and
//! the client sends them again elsewhere. h2 (0.4) ignores their HEADERS,
//! DATA and RST_STREAM, but not their WINDOW_UPDATE: `recv_window_update`
//! lacks the `id > max_stream_id` check its siblings have, finds the stream
//! idle, and ends the whole connection with GOAWAY(PROTOCOL_ERROR). Every
//! call still in flight on it dies with UNAVAILABLE, usually after its change
//! was committed, and UNAVAILABLE tells the client a retry is safe.
//!
//! gRPC's C core (Python, C++, Ruby, PHP, C#) trips it at every recycling:
//! when it reads the first GOAWAY and the PING, it writes the PING's ACK
//! first, then the streams it had already started, each HEADERS followed by
//! a WINDOW_UPDATE (its stream windows are larger than the default). h2 reads
//! the ACK, decides the last stream, and the next frames are over it.
//!
//! # What the guard does
//!
//! It reads the frame headers going both ways; it never decodes HPACK and
//! never holds back more than a partial frame header.
//! - Outbound, it notes the server's GOAWAY frames, and the first PING sent
//!   after a GOAWAY with the largest stream id: h2 sends its shutdown PING
//!   right after that GOAWAY, before any other.
//! - Inbound, it keeps the highest stream id the client opened with HEADERS.
//!   When the client's ACK of the shutdown PING passes, h2 will name exactly
//!   the streams opened so far as processed, so that id becomes the last
//!   stream; a GOAWAY the server writes with a lower id lowers it.
//! - From then on, a WINDOW_UPDATE for a client stream above the last stream
//!   is dropped: RFC 9113 §6.8 says such frames may be ignored, and h2
//!   ignores every other frame of those streams itself.
//!
//! Dropping a WINDOW_UPDATE changes no flow-control state h2 keeps: stream
//! windows of streams h2 never opened do not exist for it, and the
//! connection window (stream 0) is never touched.
//!
//! Written by hand because it is a fix of h2's behaviour at the byte level:
//! no crate filters HTTP/2 frames, and the project keeps no patched h2. It
//! can go once h2's `recv_window_update` ignores stream ids above
//! `max_stream_id` after GOAWAY, as `recv_headers`, `recv_data` and
//! `recv_reset` do.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, which the client sends first.
const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

/// A frame header, parsed.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_STREAM_ID,
        }
    }
}

/// The first bytes of a frame's payload that one direction wants to read.
#[derive(Debug, Default)]
struct Peek {
    buf: [u8; 8],
    len: usize,
    want: usize,
}

impl Peek {
    fn start(want: usize) -> Self {
        Self {
            want,
            ..Self::default()
        }
    }

    /// Takes what it still wants from `data`; true once complete.
    fn feed(&mut self, data: &[u8]) -> bool {
        let take = (self.want - self.len).min(data.len());
        self.buf[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        self.len == self.want
    }
}

/// What the payload being skipped is for.
#[derive(Debug)]
enum Payload {
    Pass,
    Drop,
    /// A PING ACK from the client (inbound) or a PING or GOAWAY of ours
    /// (outbound), whose first bytes matter.
    Peek(u8, Peek),
}

/// Where one direction's parser is.
#[derive(Debug)]
struct Cursor {
    /// Payload bytes of the current frame still to come.
    left: usize,
    payload: Payload,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            left: 0,
            payload: Payload::Pass,
        }
    }
}

/// What the guard knows of the connection's going away.
#[derive(Debug, Default)]
struct State {
    /// The highest client stream id opened with HEADERS so far.
    highest_opened: u32,
    /// A GOAWAY with the largest stream id went out: the next PING is h2's
    /// shutdown PING.
    awaiting_shutdown_ping: bool,
    shutdown_ping: Option<[u8; 8]>,
    /// The last stream the server processes; client streams above it are
    /// ignored by h2, and so are their WINDOW_UPDATEs here.
    last_stream: Option<u32>,
}

impl State {
    fn lower_last_stream(&mut self, id: u32) {
        self.last_stream = Some(self.last_stream.map_or(id, |last| last.min(id)));
    }

    /// Whether an inbound frame is one h2 would mistake for an error.
    fn drops(&self, header: &FrameHeader) -> bool {
        header.kind == WINDOW_UPDATE
            && header.stream % 2 == 1
            && self.last_stream.is_some_and(|last| header.stream > last)
    }
}

/// An HTTP/2 server connection's transport, with the guard in between.
pub(crate) struct GoawayGuard<IO> {
    io: IO,
    state: State,
    preface_left: usize,
    inbound: Cursor,
    outbound: Cursor,
    /// A partial inbound frame header, not yet handed to h2 (its type and
    /// stream decide whether it passes).
    held: Vec<u8>,
    /// Inbound bytes already judged that did not fit the reader's buffer.
    spill: Vec<u8>,
    /// A partial outbound frame header.
    out_header: [u8; HEADER_LEN],
    out_header_len: usize,
}

impl<IO> GoawayGuard<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            state: State::default(),
            preface_left: PREFACE_LEN,
            inbound: Cursor::default(),
            outbound: Cursor::default(),
            held: Vec::with_capacity(HEADER_LEN),
            spill: Vec::new(),
            out_header: [0; HEADER_LEN],
            out_header_len: 0,
        }
    }

    /// Judges the inbound bytes `data[..]` in place: what h2 may see is
    /// compacted to the front and its length returned; a partial frame
    /// header at the end goes to `held`.
    fn judge(&mut self, data: &mut [u8]) -> usize {
        let (mut read, mut write) = (0, 0);
        let pass = |data: &mut [u8], from: usize, len: usize, write: &mut usize| {
            if from != *write {
                data.copy_within(from..from + len, *write);
            }
            *write += len;
        };
        while read < data.len() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len() - read);
                pass(data, read, n, &mut write);
                self.preface_left -= n;
                read += n;
                continue;
            }
            if self.inbound.left > 0 {
                let n = self.inbound.left.min(data.len() - read);
                match &mut self.inbound.payload {
                    Payload::Pass => pass(data, read, n, &mut write),
                    Payload::Drop => {}
                    Payload::Peek(_, peek) => {
                        if peek.feed(&data[read..read + n])
                            && self.state.shutdown_ping.as_ref() == Some(&peek.buf)
                        {
                            // h2 now decides the last stream: every stream
                            // opened so far, none after.
                            let opened = self.state.highest_opened;
                            self.state.lower_last_stream(opened);
                        }
                        pass(data, read, n, &mut write);
                    }
                }
                self.inbound.left -= n;
                read += n;
                continue;
            }
            if data.len() - read < HEADER_LEN {
                self.held.clear();
                self.held.extend_from_slice(&data[read..]);
                break;
            }
            let bytes: &[u8; HEADER_LEN] = data[read..read + HEADER_LEN]
                .try_into()
                .expect("a header's length");
            let header = FrameHeader::parse(bytes);
            let drop = self.state.drops(&header);
            if drop {
                tracing::debug!(
                    stream = header.stream,
                    "WINDOW_UPDATE for a stream opened after GOAWAY: ignored"
                );
            } else {
                if header.kind == HEADERS && header.stream % 2 == 1 {
                    self.state.highest_opened = self.state.highest_opened.max(header.stream);
                }
                pass(data, read, HEADER_LEN, &mut write);
            }
            read += HEADER_LEN;
            self.inbound = Cursor {
                left: header.len,
                payload: if drop {
                    Payload::Drop
                } else if header.kind == PING && header.flags & ACK != 0 && header.len == 8 {
                    Payload::Peek(PING, Peek::start(8))
                } else {
                    Payload::Pass
                },
            };
        }
        write
    }

    /// Notes what the server wrote: GOAWAY frames and the shutdown PING.
    fn observe_written(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.outbound.left > 0 {
                let n = self.outbound.left.min(data.len());
                if let Payload::Peek(kind, peek) = &mut self.outbound.payload
                    && peek.feed(&data[..n])
                {
                    let kind = *kind;
                    let bytes = peek.buf;
                    self.outbound.payload = Payload::Pass;
                    self.wrote(kind, bytes);
                }
                self.outbound.left -= n;
                data = &data[n..];
                continue;
            }
            let take = (HEADER_LEN - self.out_header_len).min(data.len());
            self.out_header[self.out_header_len..self.out_header_len + take]
                .copy_from_slice(&data[..take]);
            self.out_header_len += take;
            data = &data[take..];
            if self.out_header_len < HEADER_LEN {
                break;
            }
            self.out_header_len = 0;
            let header = FrameHeader::parse(&self.out_header);
            let payload = match header.kind {
                GOAWAY if header.len >= 8 => Payload::Peek(GOAWAY, Peek::start(4)),
                PING if header.flags & ACK == 0
                    && header.len == 8
                    && self.state.awaiting_shutdown_ping =>
                {
                    Payload::Peek(PING, Peek::start(8))
                }
                _ => Payload::Pass,
            };
            self.outbound = Cursor {
                left: header.len,
                payload,
            };
        }
    }

    /// A GOAWAY's last stream id, or a PING's payload, has been written.
    fn wrote(&mut self, kind: u8, bytes: [u8; 8]) {
        match kind {
            GOAWAY => {
                let last =
                    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) & MAX_STREAM_ID;
                if last == MAX_STREAM_ID {
                    if self.state.shutdown_ping.is_none() {
                        self.state.awaiting_shutdown_ping = true;
                    }
                } else {
                    self.state.lower_last_stream(last);
                }
            }
            _ => {
                self.state.awaiting_shutdown_ping = false;
                self.state.shutdown_ping = Some(bytes);
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GoawayGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.spill.is_empty() {
                let n = this.spill.len().min(buf.remaining());
                buf.put_slice(&this.spill[..n]);
                this.spill.drain(..n);
                return Poll::Ready(Ok(()));
            }
            // The held partial header is judged again with the bytes that
            // complete it; the reader's buffer needs room for both.
            let start = buf.filled().len();
            if buf.remaining() > HEADER_LEN {
                buf.put_slice(&this.held);
                let before = buf.filled().len();
                match Pin::new(&mut this.io).poll_read(cx, buf) {
                    Poll::Pending => {
                        buf.set_filled(start);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        buf.set_filled(start);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {}
                }
                if buf.filled().len() == before {
                    // End of stream: a partial header is h2's to complain about.
                    this.held.clear();
                    return Poll::Ready(Ok(()));
                }
                this.held.clear();
                let end = buf.filled().len();
                let kept = this.judge(&mut buf.filled_mut()[start..end]);
                buf.set_filled(start + kept);
            } else {
                // A reader's buffer too small for a frame header: read into
                // our own, and hand over what fits.
                let mut own = [0u8; 64];
                let mut small = ReadBuf::new(&mut own);
                small.put_slice(&this.held);
                let before = small.filled().len();
                match Pin::new(&mut this.io).poll_read(cx, &mut small) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                if small.filled().len() == before {
                    // End of stream: the partial header goes to h2 as it is.
                    this.spill.extend_from_slice(small.filled());
                    this.held.clear();
                    if this.spill.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                this.held.clear();
                let kept = this.judge(small.filled_mut());
                this.spill.extend_from_slice(&small.filled()[..kept]);
                continue;
            }
            if buf.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            // Everything read was dropped or held: read on, or h2 would take
            // an empty read for the end of the stream.
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GoawayGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.observe_written(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut left = std::task::ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let written = left;
        for slice in bufs {
            if left == 0 {
                break;
            }
            let n = left.min(slice.len());
            this.observe_written(&slice[..n]);
            left -= n;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn window_update(stream: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &1000u32.to_be_bytes())
    }

    fn goaway(last: u32) -> Vec<u8> {
        let mut p = last.to_be_bytes().to_vec();
        p.extend_from_slice(&[0; 4]);
        frame(GOAWAY, 0, 0, &p)
    }

    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SHUTDOWN: &[u8; 8] = b"shutdown";

    /// A transport that yields the given chunks one read at a time and
    /// keeps what is written.
    #[derive(Default)]
    struct Chunks {
        reads: VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.reads.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.reads.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunks {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // At most 5 bytes at a time: frame headers arrive in pieces.
            let n = buf.len().min(5);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs the server's writes, then the client's bytes split into
    /// `chunk`-byte reads through a reader buffer of `buf` bytes; returns
    /// what h2 would have read.
    async fn through(server_writes: &[u8], client: &[u8], chunk: usize, buf: usize) -> Vec<u8> {
        let io = Chunks {
            reads: client.chunks(chunk).map(<[u8]>::to_vec).collect(),
            ..Chunks::default()
        };
        let mut guard = GoawayGuard::new(io);
        guard.write_all(server_writes).await.unwrap();
        assert_eq!(guard.io.written, server_writes);
        let mut out = Vec::new();
        let mut b = vec![0u8; buf];
        loop {
            let n = guard.read(&mut b).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&b[..n]);
        }
    }

    /// The C core's answer to GOAWAY and the shutdown PING: the ACK, then a
    /// stream it had started, with a window; then more frames.
    fn c_core_answer() -> (Vec<u8>, Vec<u8>) {
        let mut before = PREFACE.to_vec();
        before.extend(frame(0x4, 0, 0, &[]));
        before.extend(frame(HEADERS, 0x4, 1, b"hpack-of-stream-1"));
        before.extend(window_update(1));
        let mut after = frame(PING, ACK, 0, SHUTDOWN);
        after.extend(frame(HEADERS, 0x4, 3, b"hpack-of-stream-3"));
        let dropped = window_update(3);
        let mut tail = window_update(1);
        tail.extend(window_update(0));
        tail.extend(frame(0x0, 0x1, 3, b"data of an ignored stream"));
        tail.extend(frame(0x3, 0, 5, &8u32.to_be_bytes()));
        let mut client = before.clone();
        client.extend(&after);
        client.extend(&dropped);
        client.extend(&tail);
        let mut expected = before;
        expected.extend(after);
        expected.extend(tail);
        (client, expected)
    }

    fn shutdown_writes() -> Vec<u8> {
        let mut w = frame(0x4, 0, 0, &[]);
        w.extend(goaway(MAX_STREAM_ID));
        w.extend(frame(PING, 0, 0, SHUTDOWN));
        w
    }

    #[tokio::test]
    async fn a_window_update_for_a_stream_opened_after_the_shutdown_ping_is_dropped() {
        let (client, expected) = c_core_answer();
        let server = shutdown_writes();
        for chunk in [1, 2, 5, 9, 10, 17, client.len()] {
            for buf in [1, 3, 9, 10, 11, 64, 16 * 1024] {
                assert_eq!(
                    through(&server, &client, chunk, buf).await,
                    expected,
                    "reads of {chunk} bytes into a buffer of {buf}"
                );
            }
        }
    }

    #[tokio::test]
    async fn without_a_goaway_every_frame_passes() {
        let (client, _) = c_core_answer();
        let server = frame(0x4, 0, 0, &[]);
        assert_eq!(through(&server, &client, 7, 4096).await, client);
    }

    #[tokio::test]
    async fn the_ack_of_another_ping_decides_nothing() {
        // A keepalive PING went out before the GOAWAY; its ACK arrives after.
        let mut server = frame(PING, 0, 0, b"keepaliv");
        server.extend(goaway(MAX_STREAM_ID));
        server.extend(frame(PING, 0, 0, SHUTDOWN));
        let mut client = PREFACE.to_vec();
        client.extend(frame(PING, ACK, 0, b"keepaliv"));
        client.extend(frame(HEADERS, 0x4, 1, b"x"));
        client.extend(window_update(1));
        assert_eq!(through(&server, &client, 4, 4096).await, client);
    }

    #[tokio::test]
    async fn a_final_goaway_of_the_server_bounds_the_streams_too() {
        let mut server = goaway(1);
        server.extend(frame(0x0, 0, 1, b"payload"));
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, 0x4, 1, b"x"));
        let mut expected = client.clone();
        client.extend(window_update(3));
        client.extend(window_update(1));
        expected.extend(window_update(1));
        assert_eq!(through(&server, &client, 3, 4096).await, expected);
    }

    #[tokio::test]
    async fn vectored_writes_are_read_like_plain_ones() {
        let mut guard = GoawayGuard::new(Chunks::default());
        let w = shutdown_writes();
        let (a, b) = w.split_at(13);
        let mut slices = [IoSlice::new(a), IoSlice::new(b)];
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut guard).poll_write_vectored(cx, rest))
                .await
                .unwrap();
            IoSlice::advance_slices(&mut rest, n);
        }
        assert_eq!(guard.io.written, w);
        assert_eq!(guard.state.shutdown_ping, Some(*SHUTDOWN));
    }
}
