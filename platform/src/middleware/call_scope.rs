//! The call a task is working on, for its log lines: a call's future runs
//! inside [`scope`], with its [`CallContext`] as a tokio task-local, and the
//! JSON log format (`crate::log_json`) puts the request id into every line
//! written meanwhile, as `"span":{"request_id":"…","name":"rpc"}`, the shape
//! a `tracing` span named `rpc` gives.
//!
//! In production (JSON logs installed by `telemetry::init`) this stands in
//! for a `tracing` span that would carry only that one field: making,
//! entering, leaving and closing a span in `tracing_subscriber`'s registry
//! takes a slab slot, an extension map, the field formatted into a string
//! and the per-layer filter bookkeeping on every call, where a task-local
//! only moves the context in and out of a thread-local on each poll.
//! Anywhere else (the development format, a test's or an embedding
//! program's own subscriber) the call's span is made (`middleware::trace`).

use super::CallContext;
use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static CALL: Arc<CallContext>;
}

/// Runs `future` as the call `context` describes.
pub(crate) fn scope<F: Future>(
    context: Arc<CallContext>,
    future: F,
) -> impl Future<Output = F::Output> {
    CALL.scope(context, future)
}

/// Runs `f` as the call `context` describes: what a layer does to make the
/// call's future, before that future is polled inside [`scope`].
pub(crate) fn sync_scope<R>(context: Arc<CallContext>, f: impl FnOnce() -> R) -> R {
    CALL.sync_scope(context, f)
}

/// The context of the call being polled on this task, if any.
pub(crate) fn current() -> Option<Arc<CallContext>> {
    CALL.try_with(Arc::clone).ok()
}

/// Runs `f` with the request id of the call being polled on this thread, if
/// any.
pub(crate) fn with_request_id<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    let call = CALL.try_with(Arc::clone).ok();
    f(call.as_deref().map(|c| c.request_id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str) -> Arc<CallContext> {
        Arc::new(CallContext {
            request_id: id.into(),
            ..Default::default()
        })
    }

    fn current() -> Option<String> {
        with_request_id(|id| id.map(str::to_owned))
    }

    #[test]
    fn the_call_is_current_only_while_its_future_is_polled_and_nests() {
        assert_eq!(current(), None);
        let seen = futures::executor::block_on(scope(context("outer"), async {
            let before = current();
            let inner = scope(context("inner"), async { current() }).await;
            (before, inner, current())
        }));
        assert_eq!(
            seen,
            (
                Some("outer".to_owned()),
                Some("inner".to_owned()),
                Some("outer".to_owned())
            )
        );
        assert_eq!(current(), None);
    }
}
