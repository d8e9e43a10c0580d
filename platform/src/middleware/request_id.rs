//! Request ids: accept the caller's `x-request-id` or make one, echo it in
//! the response metadata, and hand it to the call's span and the access log
//! through the [`CallContext`].
//!
//! First thing [`super::observe`] does: nothing may log about a call before
//! it has a name.

use super::{CallContext, MethodTable, RpcMethod};
use std::sync::Arc;

pub const HEADER: &str = "x-request-id";

/// A caller-supplied id is used when it is 1 to 128 visible ASCII characters.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Names the call: the caller's `x-request-id` when acceptable, else a new
/// UUIDv7. Puts the [`CallContext`] and the [`RpcMethod`] into the
/// request's extensions for the layers inside and returns both (the id is
/// echoed in the response's metadata by [`super::observe`]).
pub(super) fn assign(
    request: &mut http::Request<tonic::body::Body>,
    methods: &MethodTable,
) -> (Arc<CallContext>, RpcMethod) {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = RpcMethod::resolve(methods, request.uri().path());
    let context = Arc::new(CallContext {
        request_id: id,
        ..Default::default()
    });
    request.extensions_mut().insert(context.clone());
    request.extensions_mut().insert(method.clone());
    (context, method)
}
