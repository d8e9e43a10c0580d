//! One access-log event per finished call (target `access`), with the
//! fields `method`, `code`, `latency_ms`, `peer`, `request_id`, `trace_id`,
//! `subject` and `client_gone`. Never the token: only the
//! subject auth verified.
//!
//! `code` is the code the client was sent. When the client left before its
//! answer was complete (it cancelled, or its connection closed),
//! `client_gone` is true and `code` is CANCELLED, unless the call had
//! already committed its change: then `code` is OK, for the change was made
//! ([`super::commit`]). The metrics' `grpc_code` follows the same rule.
//!
//! In production (JSON logs) the line is written straight into the log
//! buffer ([`AccessLine`] says why); otherwise, and whenever someone else's
//! subscriber is installed (tests, an embedding program), it is a `tracing`
//! event with the same fields.
//!
//! Written by [`super::observe`], outside auth and deadlines, so refused and
//! timed-out calls are logged too, and after the request id is known.

use super::{CallContext, code_name};
use crate::log_json::AccessLine;
use crate::log_writer::LogWriter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(&super::names::TRACEPARENT)?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then(|| trace.to_ascii_lowercase())
}

/// The remote address, over TLS or plaintext.
pub(crate) fn peer<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let ext = request.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
}

/// The remote address, or nothing, as a log field.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => Ok(()),
        }
    }
}

/// Text a client chose (a method path, a token's subject), for a log
/// line that is not JSON: control characters and the invisible and
/// bidirectional marks (`crate::log_json::unsafe_in_logs`) escaped, so the
/// line reads as what it holds. The JSON lines escape the same.
struct Printable<'a>(&'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() || crate::log_json::unsafe_in_logs(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

pub(super) struct Entry {
    /// The request's own, whose path is the method: a reference to the
    /// bytes HTTP/2 decoded, not a copy of the path.
    uri: http::Uri,
    /// Formatted only when the line is written (by the log writer's layer).
    peer: Peer,
    trace_id: String,
    context: Arc<CallContext>,
    /// Where the line goes directly, if the logs are JSON lines of ours.
    direct: Option<LogWriter>,
}

impl Entry {
    /// Starts the entry of `request`; `trace_id` is the call's span's when
    /// traces are recorded (made there if the caller sent none), else the
    /// caller's `traceparent` is used.
    pub(super) fn start(
        request: &http::Request<tonic::body::Body>,
        context: Arc<CallContext>,
        trace_id: Option<String>,
        direct: Option<LogWriter>,
    ) -> Self {
        Entry {
            uri: request.uri().clone(),
            peer: Peer(peer(request)),
            trace_id: trace_id
                .or_else(|| self::trace_id(request.headers()))
                .unwrap_or_default(),
            context,
            direct,
        }
    }

    pub(super) fn context(&self) -> &Arc<CallContext> {
        &self.context
    }

    /// Writes the line: `code` as the call ended, `took` after it started,
    /// `client_gone` when the client left before its answer was complete.
    pub(super) fn finish(self, code: Code, took: Duration, client_gone: bool) {
        // The log filter decides either way (`telemetry.log_level`,
        // `RUST_LOG`: `access=off` turns the access log off).
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let latency_ms = took.as_secs_f64() * 1000.0;
        let line = AccessLine {
            method: self.uri.path(),
            code: code_name(code),
            client_gone,
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            peer: self.peer.0,
            request_id: &self.context.request_id,
            trace_id: &self.trace_id,
            subject: self.context.subject.get().map(String::as_str).unwrap_or(""),
        };
        match &self.direct {
            Some(writer) => line.write_to(writer),
            None => tracing::info!(
                target: "access",
                method = %Printable(line.method),
                code = line.code,
                client_gone = line.client_gone,
                latency_ms = line.latency_ms,
                peer = %self.peer,
                request_id = line.request_id,
                trace_id = line.trace_id,
                subject = %Printable(line.subject),
                "rpc finished"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_printed_with_controls_and_bidi_marks_escaped() {
        let shown = Printable("/x.Y/\u{202e}gnp.exe\n\u{1b}[31mred").to_string();
        assert_eq!(shown, "/x.Y/\\u{202e}gnp.exe\\u{a}\\u{1b}[31mred");
        assert_eq!(Printable("/ok.v1.S/Get é").to_string(), "/ok.v1.S/Get é");
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        h.insert("traceparent", "00-xyz-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_id(&h), None);
        h.insert(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32))
                .parse()
                .unwrap(),
        );
        assert_eq!(trace_id(&h), None);
    }
}
