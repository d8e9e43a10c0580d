//! The `server` section: the gRPC port, its limits and its connections.

use super::duration::secs_or_never;
use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};
use std::net::SocketAddr;
use std::time::Duration;

#[serde_as]
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub addr: SocketAddr,
    /// Serve gRPC reflection (v1 and v1alpha) so grpcurl works without protos.
    pub reflection: bool,
    /// Serve gRPC-Web and the Connect protocol beside gRPC on the same port,
    /// under the same policy, with CORS for the origins `cors` allows and
    /// HTTP/1.1 for them. Off: gRPC over HTTP/2 only; any other request is
    /// answered 415, and a connection that negotiates HTTP/1.1 is closed.
    pub web_protocols: bool,
    /// The deadline of a call that sends none (`default_timeout_ms`).
    #[serde(rename = "default_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub default_timeout: Duration,
    /// The longest deadline a call may ask for (`max_timeout_ms`).
    #[serde(rename = "max_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub max_timeout: Duration,
    /// The largest message either way, and the most a method may declare
    /// for its requests (`grpc_platform.v1.limits`).
    pub max_message_bytes: usize,
    /// The largest request message of a method that declares no limit of
    /// its own, in bytes after decompression: a larger one is refused before
    /// it is decoded, and decompression stops there.
    pub max_request_bytes: u32,
    /// The request bytes all calls together may be receiving at once (a
    /// message that arrives in pieces is charged from its first piece to its
    /// last); past it, RESOURCE_EXHAUSTED (`REQUEST_MEMORY_BUSY`).
    pub max_request_memory_bytes: usize,
    /// How long the server waits for a unary request, for a message begun,
    /// and between bytes of a client stream (`request_read_timeout_ms`);
    /// past it, DEADLINE_EXCEEDED (`REQUEST_READ_TIMEOUT`).
    #[serde(rename = "request_read_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub request_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub concurrency_limit: usize,
    /// Calls in flight one authenticated caller (token subject) may have,
    /// so one caller cannot take every slot of `concurrency_limit`; past
    /// it, RESOURCE_EXHAUSTED (`CALLER_QUOTA_EXCEEDED`). At or above
    /// `concurrency_limit`, it never binds first.
    pub max_calls_per_caller: usize,
    /// Calls a second one authenticated caller may make, sustained; past
    /// it (its burst spent), RESOURCE_EXHAUSTED (`CALLER_RATE_EXCEEDED`)
    /// with a `RetryInfo` saying when its next call is due. 0 turns the
    /// rate off, a deliberate choice for a deployment whose gateway already
    /// limits each client's rate, or whose one caller stands in for many
    /// (a load generator); the count of calls in flight still binds.
    pub max_call_rate_per_caller: u32,
    /// Calls one caller may make at once above its rate, after a quiet
    /// spell: its burst, refilled at the rate. At least 1 while a rate is
    /// set.
    pub call_burst_per_caller: u32,
    /// Calls without a token (public methods, health, reflection) one
    /// HTTP/2 connection may have in flight, a health Watch for as long as
    /// it is open; past it, RESOURCE_EXHAUSTED (`CONNECTION_QUOTA_EXCEEDED`).
    /// Such calls have no caller to count against, and health and
    /// reflection go around `concurrency_limit`. A gateway that sends many
    /// calls to public methods at once over one connection needs it raised.
    pub max_anonymous_calls_per_connection: usize,
    /// Connections are asked to go away (GOAWAY) after this age, ±10% per
    /// connection (`max_connection_age_secs`; 0: never).
    #[serde(rename = "max_connection_age_secs", with = "secs_or_never")]
    pub max_connection_age: Option<Duration>,
    /// How long a connection past its age may finish the calls and streams
    /// it carries before it is closed (`max_connection_age_grace_secs`).
    #[serde(rename = "max_connection_age_grace_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 keepalive PINGs this often (`keepalive_interval_secs`; 0: none).
    #[serde(rename = "keepalive_interval_secs", with = "secs_or_never")]
    pub keepalive_interval: Option<Duration>,
    /// Largest request metadata (the header block) a call may carry, in
    /// bytes as HTTP/2 counts them: past it the call is RESOURCE_EXHAUSTED
    /// (`METADATA_TOO_LARGE`). HTTP/2 itself refuses a header block over
    /// four times this (its `SETTINGS_MAX_HEADER_LIST_SIZE`), with 431.
    pub max_header_list_bytes: u32,
    /// Streams a client may open and reset before the server accepts them,
    /// then GOAWAY: the HTTP/2 rapid-reset defence (CVE-2023-44487).
    pub http2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of a client's protocol errors,
    /// then GOAWAY (the "MadeYouReset" defence, CVE-2025-8671).
    pub http2_max_local_error_reset_streams: usize,
    /// A client that has not finished its TLS handshake by then is dropped
    /// (`handshake_timeout_secs`).
    #[serde(rename = "handshake_timeout_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub handshake_timeout: Duration,
    /// A connection on which no byte moves for this long is closed
    /// (`idle_timeout_secs`; 0: never). HTTP/2 keepalive PINGs count as
    /// traffic (see `tls::IdleTimeout`).
    #[serde(rename = "idle_timeout_secs", with = "secs_or_never")]
    pub idle_timeout: Option<Duration>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            reflection: true,
            web_protocols: true,
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(60),
            max_message_bytes: 4 * 1024 * 1024,
            max_request_bytes: 64 * 1024,
            max_request_memory_bytes: 64 * 1024 * 1024,
            request_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 200,
            concurrency_limit: 1_000,
            max_calls_per_caller: 100,
            // Far above what one real client sends (its calls, retries and
            // health checks); a caller in a loop, or a stolen token, is
            // held to a share of the server's throughput.
            max_call_rate_per_caller: 1_000,
            call_burst_per_caller: 2_000,
            // A client holds one health Watch per service name it follows,
            // and a reflection stream while a tool lists the methods.
            max_anonymous_calls_per_connection: 32,
            max_connection_age: Some(Duration::from_secs(300)),
            max_connection_age_grace: Duration::from_secs(30),
            keepalive_interval: Some(Duration::from_secs(30)),
            max_header_list_bytes: 16 * 1024,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

impl ServerSettings {
    /// Adds this section's problems, each naming its key.
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.default_timeout.is_zero() {
            problems.push("server.default_timeout_ms: must be more than 0".into());
        }
        if self.max_timeout < self.default_timeout {
            problems
                .push("server.max_timeout_ms: must be at least server.default_timeout_ms".into());
        }
        if self.max_message_bytes < 1024 {
            problems.push("server.max_message_bytes: must be at least 1024".into());
        }
        if self.max_request_bytes < 1024 || self.max_request_bytes as usize > self.max_message_bytes
        {
            problems.push(
                "server.max_request_bytes: must be at least 1024 and at most server.max_message_bytes"
                    .into(),
            );
        }
        // One message of the largest size, compressed, must fit the budget.
        if self.max_request_memory_bytes < 2 * self.max_message_bytes + 1024 * 1024 {
            problems.push(
                "server.max_request_memory_bytes: must be at least twice server.max_message_bytes plus 1 MiB"
                    .into(),
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300))
            .contains(&self.request_read_timeout)
        {
            problems.push("server.request_read_timeout_ms: must be 100 to 300000".into());
        }
        if self.max_concurrent_streams == 0 {
            problems.push("server.max_concurrent_streams: must be more than 0".into());
        }
        if self.max_calls_per_caller == 0 {
            problems.push("server.max_calls_per_caller: must be more than 0".into());
        }
        if self.max_call_rate_per_caller > 1_000_000 {
            problems.push(
                "server.max_call_rate_per_caller: must be at most 1000000 (0 for no rate limit)"
                    .into(),
            );
        }
        if self.max_call_rate_per_caller > 0 && self.call_burst_per_caller == 0 {
            problems.push(
                "server.call_burst_per_caller: must be more than 0 while \
                 server.max_call_rate_per_caller is set (0 there turns the rate off)"
                    .into(),
            );
        }
        if self.max_anonymous_calls_per_connection == 0 {
            problems.push("server.max_anonymous_calls_per_connection: must be more than 0".into());
        }
        if self.concurrency_limit == 0 {
            problems.push("server.concurrency_limit: must be more than 0".into());
        }
        // Abuse limits: zero would disable a defence or refuse every call.
        if !(4 * 1024..=1024 * 1024).contains(&self.max_header_list_bytes) {
            problems.push("server.max_header_list_bytes: must be 4096 to 1048576".into());
        }
        for (key, value) in [
            (
                "server.http2_max_pending_accept_reset_streams",
                self.http2_max_pending_accept_reset_streams,
            ),
            (
                "server.http2_max_local_error_reset_streams",
                self.http2_max_local_error_reset_streams,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be more than 0"));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.handshake_timeout) {
            problems.push("server.handshake_timeout_secs: must be 1 to 300".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(edit: impl FnOnce(&mut ServerSettings)) -> Vec<String> {
        let mut server = ServerSettings::default();
        edit(&mut server);
        let mut problems = Vec::new();
        server.validate(&mut problems);
        problems
    }

    #[test]
    fn the_defaults_are_valid_and_a_rate_of_zero_turns_the_rate_off() {
        assert_eq!(problems(|_| {}), Vec::<String>::new());
        // No rate, and then no burst is needed.
        let none = problems(|s| {
            s.max_call_rate_per_caller = 0;
            s.call_burst_per_caller = 0;
        });
        assert_eq!(none, Vec::<String>::new());
    }

    #[test]
    fn a_rate_without_a_burst_and_a_connection_bound_of_zero_are_refused() {
        let found = problems(|s| {
            s.call_burst_per_caller = 0;
            s.max_anonymous_calls_per_connection = 0;
        });
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("server.call_burst_per_caller: must be more than 0"),
            "{found:?}"
        );
        assert_eq!(
            found[1],
            "server.max_anonymous_calls_per_connection: must be more than 0"
        );
        let too_fast = problems(|s| s.max_call_rate_per_caller = 2_000_000);
        assert_eq!(
            too_fast,
            ["server.max_call_rate_per_caller: must be at most 1000000 (0 for no rate limit)"]
        );
    }
}
