//! One caller cannot lock out the others: each authenticated subject may
//! have at most `server.max_calls_per_caller` calls in flight, out of the
//! server's `server.concurrency_limit`. A call past its caller's quota is
//! refused at once with [`QuotaExceeded`], which the rescue layer answers
//! RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure` naming the caller and
//! a `RetryInfo`.
//!
//! A call counts from the moment it is authenticated until it is over:
//! its response has ended (or the client went away) and its handler has
//! let go of its request. The count's guard lives in the call's
//! [`CallContext`], which the observe layer holds to the end of the
//! response, so a stream that never ends keeps counting, unlike a slot
//! of the server-wide limit, which is freed when the response starts.
//!
//! Below auth, which names the subject; calls without one (methods
//! declared public, health, reflection) are not counted here.
//! Hand-written, not `tower_governor`: that crate limits a rate keyed on
//! what a request carries, while the lockout is about calls held open, and
//! a count of those needs the call's end, which only the stack sees.

use super::CallContext;
use super::rescue::BoxError;
use crate::auth::Principal;
use futures::future::{Either, Ready, ready};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A caller had its quota of calls in flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many calls in flight for this caller: its quota is {limit}")]
pub(crate) struct QuotaExceeded {
    subject: String,
    limit: usize,
}

impl QuotaExceeded {
    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
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

#[derive(Clone)]
pub(crate) struct CallerQuotaLayer {
    quotas: Arc<Quotas>,
}

impl CallerQuotaLayer {
    /// `limit`: calls in flight per subject (`server.max_calls_per_caller`).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            quotas: Arc::new(Quotas {
                limit,
                in_flight: Mutex::default(),
            }),
        }
    }
}

impl<S> Layer<S> for CallerQuotaLayer {
    type Service = CallerQuota<S>;

    fn layer(&self, inner: S) -> CallerQuota<S> {
        CallerQuota {
            inner,
            quotas: self.quotas.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct CallerQuota<S> {
    inner: S,
    quotas: Arc<Quotas>,
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
        if let Some(principal) = request.extensions().get::<Principal>() {
            match self.quotas.acquire(principal.subject()) {
                Err(exceeded) => return Either::Left(ready(Err(exceeded.into()))),
                Ok(guard) => match request.extensions().get::<Arc<CallContext>>() {
                    Some(call) => {
                        let _ = call.quota.set(guard);
                    }
                    // Without the observe layer (unit tests), the request
                    // carries it: the call counts while its handler has it.
                    None => {
                        request.extensions_mut().insert(Arc::new(guard));
                    }
                },
            }
        }
        Either::Right(self.inner.call(request).err_into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    type Request = http::Request<()>;

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

    #[tokio::test]
    async fn a_caller_at_its_quota_is_refused_while_others_are_served() {
        let layer = CallerQuotaLayer::new(2);
        let (mut svc, mut handle) = mock::spawn_layer::<Request, (), _>(layer.clone());
        handle.allow(100);
        // Two calls of alice's in flight: their contexts are alive.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (request, context) = call(Some("alice"));
            assert!(svc.poll_ready().is_ready());
            let response = svc.call(request);
            let (_, reply) = handle.next_request().await.unwrap();
            reply.send_response(());
            response.await.unwrap();
            held.push(context);
        }
        // A third is refused, naming her and the quota.
        let (request, _context) = call(Some("alice"));
        assert!(svc.poll_ready().is_ready());
        let error = svc.call(request).await.unwrap_err();
        let exceeded = error.downcast_ref::<QuotaExceeded>().expect("typed");
        assert_eq!((exceeded.subject(), exceeded.limit()), ("alice", 2));
        // Bob, and calls without a subject, are served meanwhile.
        for subject in [Some("bob"), None] {
            let (request, _context) = call(subject);
            assert!(svc.poll_ready().is_ready());
            let response = svc.call(request);
            let (_, reply) = handle.next_request().await.expect("served");
            reply.send_response(());
            response.await.unwrap();
        }
        // One of alice's calls ends: she may make another.
        held.pop();
        let (request, _context) = call(Some("alice"));
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(request);
        let (_, reply) = handle.next_request().await.expect("served again");
        reply.send_response(());
        response.await.unwrap();
        // Only callers with calls in flight have an entry.
        drop(held);
        drop(_context);
        let entries = layer.quotas.in_flight.lock().unwrap().len();
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
}
