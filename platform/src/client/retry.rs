//! Retries: exponential backoff with full jitter, bounded attempts, and a
//! retry budget (tower's `TpsBudget`) so a struggling server is not buried
//! under retries. Only calls that are safe to repeat are retried: reads, and
//! writes whose request id makes a repeat return the first result; the typed
//! client says which. They are retried on UNAVAILABLE (the server or the
//! connection is down), and on CANCELLED or UNKNOWN when the client's
//! transport produced them (a connection closed or reset under an in-flight
//! call, as when a server restarts), never when the caller cancelled or the
//! server answered them.

use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tower::retry::budget::{Budget, TpsBudget};

/// How calls are retried. Which calls is the typed client's choice: only
/// those safe to repeat (reads, and writes whose request id makes a repeat
/// return the first result), on UNAVAILABLE or when the connection broke
/// under them. The policy sets how often and how patiently, and a budget
/// that stops retry storms; clones share the budget. The same backoff paces
/// the reconnects of the streams a typed client resumes
/// ([`Resumed`](super::Resumed), [`Subscriptions`](super::Subscriptions)),
/// and the health checks of a connection with several endpoints
/// ([`ConnectionBuilder::health_checks`](super::ConnectionBuilder::health_checks)).
///
/// ```
/// use grpc_platform::client::RetryPolicy;
/// use std::time::Duration;
/// let policy = RetryPolicy::default().max_attempts(8).initial_backoff(Duration::from_millis(20));
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) budget: Arc<TpsBudget>,
}

impl Default for RetryPolicy {
    /// 5 attempts, backoff from 50 ms doubling to at most 2 s, and a budget
    /// of 10 retries per second plus 20% of recent calls.
    ///
    /// ```
    /// use grpc_platform::client::RetryPolicy;
    /// let policy = RetryPolicy::default();
    /// ```
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        }
    }
}

impl RetryPolicy {
    /// Never retry: each call is made once. [`Resumed`](super::Resumed) and
    /// [`Subscriptions`](super::Subscriptions) streams still reconnect, with
    /// this policy's backoff.
    ///
    /// ```
    /// use grpc_platform::client::RetryPolicy;
    /// let once = RetryPolicy::none();
    /// ```
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Attempts in all, the first included (default 5; 0 counts as 1). A
    /// retry also needs the budget to allow it and the deadline to have time
    /// left.
    ///
    /// ```
    /// use grpc_platform::client::RetryPolicy;
    /// let policy = RetryPolicy::default().max_attempts(3);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The longest pause before the first retry (default 50 ms). The limit
    /// doubles with each further retry, up to [`max_backoff`](Self::max_backoff);
    /// each pause is a random time up to it ("full jitter").
    ///
    /// ```
    /// use grpc_platform::client::RetryPolicy;
    /// use std::time::Duration;
    /// let policy = RetryPolicy::default().initial_backoff(Duration::from_millis(100));
    /// ```
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The longest any pause may be (default 2 s).
    ///
    /// ```
    /// use grpc_platform::client::RetryPolicy;
    /// use std::time::Duration;
    /// let policy = RetryPolicy::default().max_backoff(Duration::from_millis(500));
    /// ```
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// The pause before attempt `attempt` (1 = the first retry): a random
    /// time up to `initial * 2^(attempt-1)`, capped ("full jitter"). A typed
    /// client's resuming streams ([`Resumed`](super::Resumed),
    /// [`Subscriptions`](super::Subscriptions)) pause this long before their
    /// `attempt`th reconnect in a row.
    ///
    /// ```
    /// use grpc_platform::client::RetryPolicy;
    /// use std::time::Duration;
    /// let policy = RetryPolicy::default().initial_backoff(Duration::from_millis(100));
    /// assert!(policy.backoff(1) <= Duration::from_millis(100));
    /// ```
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Records a call's first attempt (funds the budget).
    pub(crate) fn record_call(&self) {
        self.budget.deposit();
    }

    /// Whether a failed attempt may be tried again.
    pub(crate) fn may_retry(&self, status: &tonic::Status, attempt: u32) -> bool {
        retryable(status) && attempt < self.max_attempts && self.budget.withdraw()
    }
}

/// How many times a call that never left the client is sent again before
/// its failure is returned (see [`never_sent`]).
pub const TRANSPARENT_RETRIES: u32 = 3;

/// Whether a failed call never left this client: it was still queued for a
/// connection that closed before sending it (the server recycling the
/// connection with GOAWAY, or the connection dying), which hyper reports as
/// a canceled request. The server never saw it, so any call, whatever it
/// does, can be sent again: what gRPC's own clients do as "transparent
/// retry" (gRFC A6). [`Connection::unary`](super::Connection::unary) does
/// so up to [`TRANSPARENT_RETRIES`] times without a pause, outside the retry
/// policy and its budget.
///
/// ```
/// let status = tonic::Status::cancelled("the caller gave up");
/// assert!(!grpc_platform::client::never_sent(&status));
/// ```
pub fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != Code::Cancelled && status.code() != Code::Unavailable {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        if let Some(err) = s.downcast_ref::<hyper::Error>() {
            return err.is_canceled();
        }
        source = s.source();
    }
    false
}

/// UNAVAILABLE, or a CANCELLED/UNKNOWN that came from the connection: a
/// failure a new attempt may cure (the server went away, or the connection
/// broke), which a safe call is retried on and a broken stream is resumed
/// on. A status the server answered (other than UNAVAILABLE) is final.
///
/// ```
/// use grpc_platform::client::retryable;
/// assert!(retryable(&tonic::Status::unavailable("draining")));
/// assert!(!retryable(&tonic::Status::cancelled("the caller gave up")));
/// ```
pub fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        // Produced by the client's transport (the error has a transport or
        // HTTP/2 source), not sent by the server: a connection closed or
        // reset under the call. A connection that dies while a response
        // (or a stream) is being read surfaces as UNKNOWN with the
        // `hyper::Error` itself as the source, not wrapped in tonic's.
        Code::Cancelled | Code::Unknown => {
            let mut source = std::error::Error::source(status);
            while let Some(s) = source {
                if s.is::<tonic::transport::Error>() || s.is::<hyper::Error>() {
                    return true;
                }
                source = s.source();
            }
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            assert!(p.backoff(attempt) <= Duration::from_secs(2));
        }
        assert!(p.backoff(1) <= Duration::from_millis(50));
    }

    #[test]
    fn only_transport_failures_are_retried_and_the_budget_runs_out() {
        let p = RetryPolicy::default().max_attempts(1000);
        let status = |code| tonic::Status::new(code, "");
        assert!(!p.may_retry(&status(Code::Internal), 1));
        assert!(!p.may_retry(&status(Code::DeadlineExceeded), 1));
        assert!(
            !p.may_retry(&status(Code::Cancelled), 1),
            "a caller's cancel is final"
        );
        assert!(
            !p.may_retry(&status(Code::Unknown), 1),
            "the server's UNKNOWN is final"
        );
        let granted = (0..1000)
            .filter(|_| p.may_retry(&status(Code::Unavailable), 1))
            .count();
        assert!(
            granted < 1000,
            "the budget stops a retry storm ({granted} granted)"
        );
        assert!(!RetryPolicy::none().may_retry(&status(Code::Unavailable), 1));
    }
}
