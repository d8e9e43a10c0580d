//! One caller cannot lock out the others. Three bounds, each refused at
//! once with its own typed error, which the rescue layer answers
//! RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure` naming what was
//! bounded and a `RetryInfo`:
//!
//! | bound | key | error | `ErrorInfo.reason` |
//! |---|---|---|---|
//! | calls in flight per authenticated subject | `server.max_calls_per_caller` | [`QuotaExceeded`] | `CALLER_QUOTA_EXCEEDED` |
//! | calls a second per authenticated subject, with bursts | `server.max_call_rate_per_caller`, `server.call_burst_per_caller` | [`RateExceeded`] | `CALLER_RATE_EXCEEDED` |
//! | calls in flight without a subject, per HTTP/2 connection | `server.max_anonymous_calls_per_connection` | [`ConnectionQuotaExceeded`] | `CONNECTION_QUOTA_EXCEEDED` |
//!
//! Each closes a way around the others. The count of calls in flight
//! bounds calls held open (a stream, a request body that never comes),
//! which a rate alone lets a caller pile up slowly until it holds every
//! slot of `server.concurrency_limit`. The rate bounds calls that end
//! quickly but come fast, which a count alone lets one caller repeat until
//! it takes the whole server's throughput. Calls without a subject
//! (methods declared public, health, reflection) have no caller to count
//! against, and health and reflection go around the server-wide limit, so
//! they are counted per connection: what one connection may hold open.
//! A client may open more connections; each costs it a TLS handshake,
//! and the server's own resources bound how many it holds.
//!
//! A call counts from the moment it passes auth until it is over:
//! its response has ended (or the client went away) and its handler has
//! let go of its request. The count's [`Slot`] lives in the call's
//! [`CallContext`], which the observe layer holds to the end of the
//! response, so a stream that never ends keeps counting, unlike a slot
//! of the server-wide limit, which is freed when the response starts.
//!
//! Below auth, which names the subject. The count of calls in flight is
//! hand-written: it needs the call's end, which only the stack sees. The
//! rate is governor's keyed limiter (GCRA: a theoretical arrival time per
//! subject, no timer, no queue), called directly rather than through
//! `tower_governor`: that crate's layer keys on what a request carries as
//! it arrives (the peer address, forwarded headers), before auth, while
//! the subject is known only once auth has verified the token; and it
//! answers refusals itself, with a bare status and a wait in whole
//! seconds, where this stack's refusals are typed errors the rescue layer
//! completes (`ErrorInfo`, `QuotaFailure`, `RequestInfo`). Each
//! connection's count is a counter the connection loop (`crate::serve`)
//! puts in every request of the connection ([`ConnectionCalls`]).

use super::CallContext;
use super::rescue::BoxError;
use crate::auth::Principal;
use futures::future::{Either, Ready, ready};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// A caller had its quota of calls in flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many calls in flight for this caller: its quota is {limit}")]
pub(crate) struct QuotaExceeded {
    subject: String,
    limit: usize,
}

impl QuotaExceeded {
    #[cfg(test)]
    pub(crate) fn for_test(subject: &str, limit: usize) -> Self {
        QuotaExceeded {
            subject: subject.to_owned(),
            limit,
        }
    }

    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// A caller called faster than its rate allows, its burst spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many calls from this caller: its rate is {per_second} calls a second, \
     with bursts of {burst}"
)]
pub(crate) struct RateExceeded {
    subject: String,
    per_second: u32,
    burst: u32,
    wait: Duration,
}

impl RateExceeded {
    #[cfg(test)]
    pub(crate) fn for_test(subject: &str, per_second: u32, burst: u32, wait: Duration) -> Self {
        RateExceeded {
            subject: subject.to_owned(),
            per_second,
            burst,
            wait,
        }
    }

    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn per_second(&self) -> u32 {
        self.per_second
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// How long until the caller's next call is within its rate.
    pub(crate) fn wait(&self) -> Duration {
        self.wait
    }
}

/// A connection had its quota of calls in flight without a subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many calls without a token in flight on this connection: its quota is {limit}")]
pub(crate) struct ConnectionQuotaExceeded {
    limit: usize,
}

impl ConnectionQuotaExceeded {
    #[cfg(test)]
    pub(crate) fn for_test(limit: usize) -> Self {
        ConnectionQuotaExceeded { limit }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// The calls without a subject in flight on one HTTP/2 connection: made
/// once per connection by `crate::serve`, which puts a clone in every
/// request's extensions. A request without one (a server not run by
/// `crate::serve`) is not counted per connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionCalls(Arc<AtomicUsize>);

impl ConnectionCalls {
    /// A place for one more call, unless `limit` are in flight already.
    fn acquire(&self, limit: usize) -> Result<ConnectionSlot, ConnectionQuotaExceeded> {
        // Increment only below the limit, so a refused call leaves the
        // count as it was.
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| ConnectionSlot(self.0.clone()))
            .map_err(|_| ConnectionQuotaExceeded { limit })
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One call's place in its connection's count, given back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a call holds while it counts: its place in its caller's count, or
/// in its connection's when it has no caller.
#[derive(Debug)]
pub(crate) enum Slot {
    // Never read: each is held for its `Drop`, which gives the place back.
    Caller { _guard: QuotaGuard },
    Connection { _slot: ConnectionSlot },
}

/// Calls in flight per subject; a subject with none has no entry, so the
/// table holds at most as many entries as there are calls in flight.
struct Quotas {
    limit: usize,
    in_flight: Mutex<HashMap<Arc<str>, usize>>,
}

/// One call's place in its caller's count, given back when dropped.
pub(crate) struct QuotaGuard {
    quotas: Arc<Quotas>,
    subject: Arc<str>,
}

impl std::fmt::Debug for QuotaGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QuotaGuard").field(&self.subject).finish()
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut in_flight = self.quotas.in_flight.lock().expect("quota lock");
        if let Some(count) = in_flight.get_mut(&*self.subject) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&*self.subject);
            }
        }
    }
}

impl Quotas {
    fn acquire(self: &Arc<Self>, subject: &str) -> Result<QuotaGuard, QuotaExceeded> {
        let mut in_flight = self.in_flight.lock().expect("quota lock");
        let key = match in_flight.get_key_value(subject) {
            Some((_, &count)) if count >= self.limit => {
                return Err(QuotaExceeded {
                    subject: subject.to_owned(),
                    limit: self.limit,
                });
            }
            Some((key, _)) => key.clone(),
            None => Arc::from(subject),
        };
        *in_flight.entry(key.clone()).or_insert(0) += 1;
        Ok(QuotaGuard {
            quotas: self.clone(),
            subject: key,
        })
    }
}

/// The rate limiter's key: the principal auth verified, compared by its
/// subject. Cloning it takes a reference count, so checking a call's rate
/// allocates nothing (a `String` key would copy the subject on every call).
#[derive(Clone)]
struct SubjectKey(Principal);

impl PartialEq for SubjectKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.subject() == other.0.subject()
    }
}

impl Eq for SubjectKey {}

impl Hash for SubjectKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.subject().hash(state);
    }
}

/// A sustained rate of calls a second per subject, and the burst a
/// subject may make above it (`server.max_call_rate_per_caller`,
/// `server.call_burst_per_caller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallRate {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl CallRate {
    /// `None` for a rate of 0: no rate limit. A burst of 0 with a rate
    /// (which the settings' validation refuses) is taken as 1, the least
    /// that lets any call through.
    pub(crate) fn new(per_second: u32, burst: u32) -> Option<Self> {
        Some(CallRate {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        })
    }
}

/// Checks of the rate between two sweeps of the limiter's table (see
/// [`Rate::check`]).
const SWEEP_EVERY: u64 = 4096;

/// Each subject's rate: governor's keyed limiter, which keeps one entry
/// per subject that has called, and the count of checks that times the
/// sweeps of its table.
struct Rate {
    rate: CallRate,
    limiter: DefaultKeyedRateLimiter<SubjectKey>,
    checked: AtomicU64,
}

impl Rate {
    fn new(rate: CallRate) -> Self {
        Rate {
            rate,
            limiter: RateLimiter::keyed(Quota::per_second(rate.per_second).allow_burst(rate.burst)),
            checked: AtomicU64::new(0),
        }
    }

    /// Whether `principal` may make one more call now.
    ///
    /// The limiter keeps an entry for every subject that has called, and
    /// tokens can name as many subjects as their issuer likes, so its
    /// table is swept every [`SWEEP_EVERY`] checks: `retain_recent` drops
    /// the entries indistinguishable from a subject never seen (its burst
    /// refilled, at most `burst / rate` seconds after its last call). The
    /// table then holds at most the subjects seen since the last sweep
    /// plus those still inside their burst window, however long the server
    /// runs. Counted in calls rather than timed: the table only grows with
    /// calls, so an idle server does no sweeping and there is no task to
    /// start and stop; the sweep's cost (a walk of that bounded table)
    /// falls on one call in `SWEEP_EVERY`.
    fn check(&self, principal: &Principal) -> Result<(), RateExceeded> {
        if self.checked.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&SubjectKey(principal.clone()))
            .map_err(|not_until| RateExceeded {
                subject: principal.subject().to_owned(),
                per_second: self.rate.per_second.get(),
                burst: self.rate.burst.get(),
                wait: not_until.wait_time_from(self.limiter.clock().now()),
            })
    }

    #[cfg(test)]
    fn subjects(&self) -> usize {
        self.limiter.len()
    }
}

/// The three bounds (module documentation), as the settings give them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `server.max_calls_per_caller`.
    pub(crate) calls_per_caller: usize,
    /// `server.max_call_rate_per_caller` and `server.call_burst_per_caller`;
    /// `None`: no rate limit.
    pub(crate) rate_per_caller: Option<CallRate>,
    /// `server.max_anonymous_calls_per_connection`.
    pub(crate) anonymous_calls_per_connection: usize,
}

impl Limits {
    /// The limits of the `server` section.
    pub(crate) fn of(server: &crate::config::ServerSettings) -> Self {
        Limits {
            calls_per_caller: server.max_calls_per_caller,
            rate_per_caller: CallRate::new(
                server.max_call_rate_per_caller,
                server.call_burst_per_caller,
            ),
            anonymous_calls_per_connection: server.max_anonymous_calls_per_connection,
        }
    }
}

/// What every service the layer makes shares.
struct Shared {
    quotas: Arc<Quotas>,
    rate: Option<Rate>,
    anonymous_per_connection: usize,
}

impl Shared {
    /// The call's slot, or the error it is refused with.
    fn admit(&self, extensions: &http::Extensions) -> Result<Option<Slot>, BoxError> {
        match extensions.get::<Principal>() {
            Some(principal) => {
                // The rate first: every call a caller makes counts against
                // it, a call refused for the count in flight too, so a
                // caller retrying in a tight loop is slowed by its rate.
                if let Some(rate) = &self.rate {
                    rate.check(principal)?;
                }
                let guard = self.quotas.acquire(principal.subject())?;
                Ok(Some(Slot::Caller { _guard: guard }))
            }
            None => match extensions.get::<ConnectionCalls>() {
                Some(calls) => {
                    let slot = calls.acquire(self.anonymous_per_connection)?;
                    Ok(Some(Slot::Connection { _slot: slot }))
                }
                None => Ok(None),
            },
        }
    }
}

#[derive(Clone)]
pub(crate) struct CallerQuotaLayer {
    shared: Arc<Shared>,
}

impl CallerQuotaLayer {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                quotas: Arc::new(Quotas {
                    limit: limits.calls_per_caller,
                    in_flight: Mutex::default(),
                }),
                rate: limits.rate_per_caller.map(Rate::new),
                anonymous_per_connection: limits.anonymous_calls_per_connection,
            }),
        }
    }
}

impl<S> Layer<S> for CallerQuotaLayer {
    type Service = CallerQuota<S>;

    fn layer(&self, inner: S) -> CallerQuota<S> {
        CallerQuota {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct CallerQuota<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<http::Request<B>> for CallerQuota<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future =
        Either<Ready<Result<S::Response, BoxError>>, futures::future::ErrInto<S::Future, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures::TryFutureExt;
        match self.shared.admit(request.extensions()) {
            Err(refused) => return Either::Left(ready(Err(refused))),
            Ok(None) => {}
            Ok(Some(slot)) => match request.extensions().get::<Arc<CallContext>>() {
                Some(call) => {
                    let _ = call.quota.set(slot);
                }
                // Without the observe layer (unit tests), the request
                // carries it: the call counts while its handler has it.
                None => {
                    request.extensions_mut().insert(Arc::new(slot));
                }
            },
        }
        Either::Right(self.inner.call(request).err_into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    type Request = http::Request<()>;

    /// Limits that never bind but for what a test sets.
    fn limits() -> Limits {
        Limits {
            calls_per_caller: 1000,
            rate_per_caller: None,
            anonymous_calls_per_connection: 1000,
        }
    }

    fn call(subject: Option<&str>) -> (Request, Option<Arc<CallContext>>) {
        let mut request = http::Request::builder()
            .uri(crate::testing::GET)
            .body(())
            .unwrap();
        let context = Arc::new(CallContext::default());
        request.extensions_mut().insert(context.clone());
        if let Some(subject) = subject {
            request
                .extensions_mut()
                .insert(Principal::for_test(subject, &["things:read"]));
        }
        (request, Some(context))
    }

    /// A call on the connection whose count is `connection`.
    fn on(connection: &ConnectionCalls, subject: Option<&str>) -> (Request, Arc<CallContext>) {
        let (mut request, context) = call(subject);
        request.extensions_mut().insert(connection.clone());
        (request, context.unwrap())
    }

    type Mock = mock::Spawn<CallerQuota<mock::Mock<Request, ()>>>;

    /// Sends `request` through the layer; the call, once served, has ended
    /// unless the caller keeps its context.
    async fn served(svc: &mut Mock, handle: &mut mock::Handle<Request, ()>, request: Request) {
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request);
        let (_, reply) = handle.next_request().await.expect("served");
        reply.send_response(());
        response.await.unwrap();
    }

    async fn refused(svc: &mut Mock, request: Request) -> BoxError {
        assert!(svc.poll_ready().is_ready());
        svc.call(request).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_caller_at_its_quota_is_refused_while_others_are_served() {
        let layer = CallerQuotaLayer::new(Limits {
            calls_per_caller: 2,
            ..limits()
        });
        let (mut svc, mut handle) = mock::spawn_layer::<Request, (), _>(layer.clone());
        handle.allow(100);
        // Two calls of alice's in flight: their contexts are alive.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (request, context) = call(Some("alice"));
            served(&mut svc, &mut handle, request).await;
            held.push(context);
        }
        // A third is refused, naming her and the quota.
        let (request, _context) = call(Some("alice"));
        let error = refused(&mut svc, request).await;
        let exceeded = error.downcast_ref::<QuotaExceeded>().expect("typed");
        assert_eq!((exceeded.subject(), exceeded.limit()), ("alice", 2));
        // Bob, and calls without a subject, are served meanwhile.
        for subject in [Some("bob"), None] {
            let (request, _context) = call(subject);
            served(&mut svc, &mut handle, request).await;
        }
        // One of alice's calls ends: she may make another.
        held.pop();
        let (request, _context) = call(Some("alice"));
        served(&mut svc, &mut handle, request).await;
        // Only callers with calls in flight have an entry.
        drop(held);
        drop(_context);
        let entries = layer.shared.quotas.in_flight.lock().unwrap().len();
        assert_eq!(entries, 0, "every count went back to nothing");
    }

    #[tokio::test]
    async fn the_answer_is_resource_exhausted_with_quota_failure_and_retry_info() {
        use tonic_types::StatusExt;
        let error: BoxError = Box::new(QuotaExceeded {
            subject: "alice".into(),
            limit: 2,
        });
        let status = crate::testing::rescued(&*error, crate::testing::GET);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let details = status.get_error_details();
        let failure = details.quota_failure().expect("QuotaFailure");
        assert_eq!(failure.violations[0].subject, "caller:alice");
        assert!(details.retry_info().is_some());
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "CALLER_QUOTA_EXCEEDED");
        assert_eq!(info.metadata["max_calls_per_caller"], "2");
    }

    #[tokio::test]
    async fn a_caller_past_its_rate_is_refused_with_the_wait_while_others_are_served() {
        // One call a second, bursts of two: alice's third call in a row
        // comes long before her next one is due.
        let layer = CallerQuotaLayer::new(Limits {
            rate_per_caller: CallRate::new(1, 2),
            ..limits()
        });
        let (mut svc, mut handle) = mock::spawn_layer::<Request, (), _>(layer);
        handle.allow(100);
        for _ in 0..2 {
            served(&mut svc, &mut handle, call(Some("alice")).0).await;
        }
        let error = refused(&mut svc, call(Some("alice")).0).await;
        let exceeded = error.downcast_ref::<RateExceeded>().expect("typed");
        assert_eq!(exceeded.subject(), "alice");
        assert_eq!((exceeded.per_second(), exceeded.burst()), (1, 2));
        // Her next call is due a second after the burst began, less the
        // moments the calls took.
        let wait = exceeded.wait();
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Bob has a rate of his own, and calls without a subject none.
        for subject in [Some("bob"), Some("bob"), None, None, None] {
            served(&mut svc, &mut handle, call(subject).0).await;
        }

        // What the client gets: the wait as the RetryInfo.
        use tonic_types::StatusExt;
        let status = crate::testing::rescued(&*error, crate::testing::GET);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "CALLER_RATE_EXCEEDED");
        assert_eq!(info.metadata["max_call_rate_per_caller"], "1");
        assert_eq!(info.metadata["call_burst_per_caller"], "2");
        let failure = details.quota_failure().expect("QuotaFailure");
        assert_eq!(failure.violations[0].subject, "caller:alice");
        assert!(
            failure.violations[0]
                .description
                .contains("1 calls a second"),
            "{:?}",
            failure.violations[0]
        );
        assert_eq!(details.retry_info().unwrap().retry_delay, Some(wait));
    }

    #[test]
    fn the_rate_limiters_table_keeps_only_recent_callers() {
        // A thousand calls a second and no burst: a caller's entry is
        // indistinguishable from a new one a millisecond after its call.
        let rate = Rate::new(CallRate::new(1000, 1).unwrap());
        for i in 0..SWEEP_EVERY - 1 {
            let caller = Principal::for_test(&format!("caller-{i}"), &[]);
            rate.check(&caller).unwrap();
        }
        assert_eq!(rate.subjects(), (SWEEP_EVERY - 1) as usize);
        std::thread::sleep(Duration::from_millis(20));
        // The next check sweeps the table first: only its own caller is
        // left.
        rate.check(&Principal::for_test("last", &[])).unwrap();
        assert_eq!(rate.subjects(), 1);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit_and_a_burst_of_zero_is_one() {
        assert_eq!(CallRate::new(0, 10), None);
        let rate = CallRate::new(5, 0).unwrap();
        assert_eq!((rate.per_second.get(), rate.burst.get()), (5, 1));
    }

    #[tokio::test]
    async fn calls_without_a_subject_are_bounded_per_connection() {
        let layer = CallerQuotaLayer::new(Limits {
            anonymous_calls_per_connection: 2,
            ..limits()
        });
        let (mut svc, mut handle) = mock::spawn_layer::<Request, (), _>(layer);
        handle.allow(100);
        let first = ConnectionCalls::default();
        // Two anonymous calls held open on the first connection (health
        // watches, say): their contexts are alive.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (request, context) = on(&first, None);
            served(&mut svc, &mut handle, request).await;
            held.push(context);
        }
        assert_eq!(first.in_flight(), 2);
        // A third is refused, naming the limit; the count is unchanged.
        let error = refused(&mut svc, on(&first, None).0).await;
        let exceeded = error
            .downcast_ref::<ConnectionQuotaExceeded>()
            .expect("typed");
        assert_eq!(exceeded.limit(), 2);
        assert_eq!(first.in_flight(), 2);
        // Another connection's anonymous calls, and an authenticated call
        // on the same connection (counted against its caller), are served.
        let second = ConnectionCalls::default();
        for request in [on(&second, None).0, on(&first, Some("alice")).0] {
            served(&mut svc, &mut handle, request).await;
        }
        assert_eq!((first.in_flight(), second.in_flight()), (2, 0));

        // What the client gets.
        use tonic_types::StatusExt;
        let status = crate::testing::rescued(&*error, crate::testing::GET);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "CONNECTION_QUOTA_EXCEEDED");
        assert_eq!(info.metadata["max_anonymous_calls_per_connection"], "2");
        let failure = details.quota_failure().expect("QuotaFailure");
        assert_eq!(failure.violations[0].subject, "connection");
        assert!(details.retry_info().is_some());
    }

    #[tokio::test]
    async fn a_connections_slot_is_given_back_when_the_call_is_over() {
        let layer = CallerQuotaLayer::new(Limits {
            anonymous_calls_per_connection: 1,
            ..limits()
        });
        let (mut svc, mut handle) = mock::spawn_layer::<Request, (), _>(layer);
        handle.allow(100);
        let connection = ConnectionCalls::default();
        let (request, held) = on(&connection, None);
        served(&mut svc, &mut handle, request).await;
        assert_eq!(connection.in_flight(), 1, "counted while its context lives");
        assert!(
            refused(&mut svc, on(&connection, None).0)
                .await
                .is::<ConnectionQuotaExceeded>()
        );
        // The call is over: the observe layer lets go of its context.
        drop(held);
        assert_eq!(connection.in_flight(), 0);
        served(&mut svc, &mut handle, on(&connection, None).0).await;
        // A call refused by the layer took no slot.
        assert_eq!(connection.in_flight(), 0);

        // Without the observe layer the request carries the slot: given
        // back when the handler drops the request.
        let mut request = http::Request::builder()
            .uri(crate::testing::GET)
            .body(())
            .unwrap();
        request.extensions_mut().insert(connection.clone());
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request);
        let (received, reply) = handle.next_request().await.expect("served");
        assert_eq!(connection.in_flight(), 1);
        drop(received);
        reply.send_response(());
        response.await.unwrap();
        assert_eq!(connection.in_flight(), 0);
    }
}
