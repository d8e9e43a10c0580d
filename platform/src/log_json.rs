//! The production log line: one JSON object per event, written straight
//! into the line buffer.
//!
//! `{"timestamp":"…","level":"INFO",<the event's fields>,"target":"…",
//! "span":{<the current span's fields>,"name":"…"}}`: the shape
//! `tracing_subscriber`'s JSON formatter gives with `flatten_event(true)` and
//! `with_current_span(true)`, so log pipelines see no difference.
//!
//! Hand-written rather than that formatter because of what it costs per
//! line: it keeps each span's fields as JSON text and, on every line, parses
//! that text back into a map (`serde_json::from_str`) to serialize it again,
//! and builds the line through serde's map serializer; with an access-log
//! line per call, all of that is paid on every call.
//! Here span fields are kept as ready-to-splice `"key":value` text and the
//! line is written directly.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events (see the module docs).
pub(crate) struct JsonEvents;

/// Formats span fields as `"key":value,…`, without braces, so a line can
/// splice them in.
pub(crate) struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = Fields::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = Fields::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events forwarded from the `log` crate carry their real target and
        // level in `log.*` fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", meta.level())?;
        let mut fields = Fields::new(&mut writer, false);
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                && !fields.is_empty()
            {
                writer.write_str(fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            string(&mut writer, span.name())?;
            writer.write_char('}')?;
        } else {
            // A call's scope stands in for its span (see
            // `middleware::call_scope`), with the same shape.
            crate::middleware::call_scope::with_request_id(|id| match id {
                Some(id) => {
                    writer.write_str(",\"span\":{\"request_id\":")?;
                    string(&mut writer, id)?;
                    writer.write_str(",\"name\":\"rpc\"}")
                }
                None => Ok(()),
            })?;
        }
        writer.write_str("}\n")
    }
}

/// The access log's line (`middleware::access_log`), written straight into
/// the log buffer when the process's logs are this module's JSON lines
/// (`telemetry::CallTelemetry`); the same bytes the `tracing` event would
/// give.
///
/// Through `tracing` the line would also cost the event's dispatch through
/// the subscriber stack, its fields visited one by one, its span looked up
/// in the registry and a second copy into the writer, on every call.
pub(crate) struct AccessLine<'a> {
    pub method: &'a str,
    pub code: &'static str,
    pub client_gone: bool,
    pub latency_ms: f64,
    pub peer: Option<std::net::SocketAddr>,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub subject: &'a str,
}

impl AccessLine<'_> {
    /// Appends the line (newline included) to `out`, as [`JsonEvents`]
    /// formats the `tracing` event `middleware::access_log` emits outside
    /// any span: the message, the fields in the event's order, the target.
    pub(crate) fn format(&self, out: &mut String) -> fmt::Result {
        let mut w = Writer::new(out);
        w.write_str("{\"timestamp\":\"")?;
        timestamp(&mut w)?;
        w.write_str("\",\"level\":\"INFO\",\"message\":\"rpc finished\",\"method\":")?;
        string(&mut w, self.method)?;
        w.write_str(",\"code\":")?;
        string(&mut w, self.code)?;
        w.write_str(if self.client_gone {
            ",\"client_gone\":true"
        } else {
            ",\"client_gone\":false"
        })?;
        w.write_str(",\"latency_ms\":")?;
        if self.latency_ms.is_finite() {
            write!(w, "{}", self.latency_ms)?;
        } else {
            w.write_str("null")?;
        }
        w.write_str(",\"peer\":\"")?;
        if let Some(peer) = self.peer {
            // An address needs no escaping.
            write!(w, "{peer}")?;
        }
        w.write_str("\",\"request_id\":")?;
        string(&mut w, self.request_id)?;
        w.write_str(",\"trace_id\":")?;
        string(&mut w, self.trace_id)?;
        w.write_str(",\"subject\":")?;
        string(&mut w, self.subject)?;
        w.write_str(",\"target\":\"access\"}\n")
    }

    /// Formats the line in this thread's buffer and appends it to `writer`.
    pub(crate) fn write_to(&self, writer: &crate::log_writer::LogWriter) {
        use std::cell::RefCell;
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            if self.format(&mut line).is_ok() {
                writer.append(line.as_bytes());
            }
        });
    }
}

/// Writes the time now as RFC 3339 UTC with microseconds
/// (`2026-11-22T09:30:00.123456Z`). The date and time of day are formatted
/// once a second per thread; only the microseconds are written every time
/// (chrono's `format` parses its pattern anew each time it is used).
fn timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let second = now.timestamp();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            cached.1.clear();
            write!(cached.1, "{}", now.format("%Y-%m-%dT%H:%M:%S"))?;
            cached.0 = second;
        }
        write!(
            writer,
            "{}.{:06}Z",
            cached.1,
            now.timestamp_subsec_micros().min(999_999)
        )
    })
}

/// Writes fields as `"key":value` pairs, separated by commas.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    /// No pair written yet (no comma before the next one).
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> Fields<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            writer,
            first,
            result: Ok(()),
        }
    }

    /// Writes `"name":` (after a comma unless first); false for fields left out.
    fn key(&mut self, field: &Field) -> bool {
        // `log.target` and the like: already in the line's own keys.
        if self.result.is_err() || field.name().starts_with("log.") {
            return false;
        }
        let comma = if self.first { "" } else { "," };
        self.first = false;
        self.result = self
            .writer
            .write_str(comma)
            .and_then(|()| string(self.writer, field.name()))
            .and_then(|()| self.writer.write_char(':'));
        self.result.is_ok()
    }

    fn raw(&mut self, field: &Field, value: impl fmt::Display) {
        if self.key(field) {
            self.result = write!(self.writer, "{value}");
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = string(self.writer, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = self
                .writer
                .write_char('"')
                .and_then(|()| write!(Escaped(self.writer), "{value:?}"))
                .and_then(|()| self.writer.write_char('"'));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.result = self
                .writer
                .write_char('"')
                .and_then(|()| write!(Escaped(self.writer), "{value}"))
                .and_then(|()| self.writer.write_char('"'));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.raw(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.raw(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, value);
        } else if self.key(field) {
            // JSON has no NaN or infinity.
            self.result = self.writer.write_str("null");
        }
    }
}

/// Writes `s` as a JSON string.
fn string(writer: &mut Writer<'_>, s: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(writer).write_str(s)?;
    writer.write_char('"')
}

/// Characters a log line must not hold as they are, though JSON allows
/// them: other control characters (DEL, C1), the line and paragraph
/// separators, and the invisible marks and bidirectional controls
/// (Trojan Source, CVE-2021-42574) with which text a client sent could
/// make a line read differently from what it holds.
pub(crate) fn unsafe_in_logs(c: char) -> bool {
    matches!(c,
        '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}'
        | '\u{feff}')
}

/// Escapes what JSON strings may not hold as is (quote, backslash, control
/// characters) and what a log line must not ([`unsafe_in_logs`]), as
/// `\uXXXX`.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Almost every string (ids, method paths, addresses) is plain ASCII
        // that needs no escaping: one branch-free pass over its bytes that
        // the compiler vectorizes, then one copy, instead of a branch per
        // character.
        if !s.bytes().fold(false, |any, b| {
            any | !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')
        }) {
            return self.0.write_str(s);
        }
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let escape = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\0'..='\u{1f}' => "",
                c if unsafe_in_logs(c) => "",
                _ => continue,
            };
            self.0.write_str(&s[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", u32::from(c))?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + c.len_utf8();
        }
        self.0.write_str(&s[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        text(f)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// What `f`'s events write, as text.
    fn text(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields)
            .event_format(JsonEvents)
            .with_writer(move || Capture(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_json_objects_with_typed_fields_and_their_span() {
        let got = lines(|| {
            let span = tracing::info_span!("rpc", request_id = "r-1");
            let _in = span.enter();
            tracing::info!(
                target: "access",
                method = "/things.v1.ThingService/GetThing",
                code = "OK",
                latency_ms = 1.25,
                calls = 3u64,
                ok = true,
                peer = %"127.0.0.1:5000",
                "rpc finished"
            );
        });
        assert_eq!(got.len(), 1);
        let line = &got[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "access");
        assert_eq!(line["message"], "rpc finished");
        assert_eq!(line["method"], "/things.v1.ThingService/GetThing");
        assert_eq!(line["latency_ms"], 1.25);
        assert_eq!(line["calls"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["peer"], "127.0.0.1:5000");
        assert_eq!(line["span"]["name"], "rpc");
        assert_eq!(line["span"]["request_id"], "r-1");
        let ts = line["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }

    #[test]
    fn strings_are_escaped_and_non_finite_numbers_are_null() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} é ✓";
        let got = lines(|| {
            let span = tracing::info_span!("outer", note = nasty);
            let _in = span.enter();
            span.record("note", "recorded later");
            tracing::warn!(text = nasty, ratio = f64::NAN, "said {nasty}");
        });
        let line = &got[0];
        assert_eq!(line["text"], nasty);
        assert_eq!(line["message"], format!("said {nasty}"));
        assert!(line["ratio"].is_null());
        assert_eq!(line["level"], "WARN");
        // A field recorded after creation is appended, still valid JSON.
        assert_eq!(line["span"]["name"], "outer");
        assert!(line["span"]["note"].is_string());
    }

    #[test]
    fn an_event_outside_any_span_has_no_span_key() {
        let got = lines(|| tracing::error!(n = -4i64, "plain"));
        assert_eq!(got[0]["n"], -4);
        assert!(got[0].get("span").is_none());
    }

    #[test]
    fn a_direct_access_line_is_the_line_its_tracing_event_gives() {
        let line = AccessLine {
            method: "/things.v1.ThingService/GetThing",
            code: "NOT_FOUND",
            client_gone: true,
            latency_ms: 0.407,
            peer: Some("127.0.0.1:37042".parse().unwrap()),
            request_id: "01a20419-5cd5-730e-9449-0d85db0cde32",
            trace_id: "",
            subject: "al\"ice\n\u{202e}gnp.exe\u{7f}",
        };
        let via_tracing = text(|| {
            tracing::info!(
                target: "access",
                method = line.method,
                code = line.code,
                client_gone = line.client_gone,
                latency_ms = line.latency_ms,
                peer = %line.peer.unwrap(),
                request_id = line.request_id,
                trace_id = line.trace_id,
                subject = line.subject,
                "rpc finished"
            )
        });
        let mut direct = String::new();
        line.format(&mut direct).unwrap();
        // Byte for byte, but for the time: `{"timestamp":"<27 bytes>"`.
        let time = 14..14 + "2026-11-22T09:30:00.123456Z".len();
        for l in [&direct, &via_tracing] {
            assert!(
                chrono::DateTime::parse_from_rfc3339(&l[time.clone()]).is_ok(),
                "{l}"
            );
        }
        assert_eq!(direct[time.end..], via_tracing[time.end..]);
        assert_eq!(direct.lines().count(), 1);
        let parsed: serde_json::Value = serde_json::from_str(&direct).unwrap();
        assert_eq!(parsed["subject"], "al\"ice\n\u{202e}gnp.exe\u{7f}");
        assert!(
            direct.contains(r#"al\"ice\n\u202egnp.exe\u007f"#),
            "bidi and control characters are escaped on the line: {direct}"
        );
        assert_eq!(parsed["peer"], "127.0.0.1:37042");
    }

    #[test]
    fn a_line_in_a_calls_scope_carries_its_request_id_as_the_rpc_span_would() {
        use crate::middleware::{CallContext, call_scope};
        let context = std::sync::Arc::new(CallContext {
            request_id: "r-7".into(),
            ..Default::default()
        });
        let in_scope = text(|| {
            futures::executor::block_on(call_scope::scope(context, async {
                tracing::warn!(n = 1u64, "in the handler");
            }))
        });
        let in_span = text(|| {
            let span = tracing::info_span!("rpc", request_id = "r-7");
            let _in = span.enter();
            tracing::warn!(n = 1u64, "in the handler");
        });
        let time = 14..14 + "2026-11-22T09:30:00.123456Z".len();
        assert_eq!(in_scope[time.end..], in_span[time.end..]);
        assert!(
            in_scope.contains(r#""span":{"request_id":"r-7","name":"rpc"}"#),
            "{in_scope}"
        );
    }
}
