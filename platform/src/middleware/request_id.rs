//! Request ids: accept the caller's `x-request-id` or make one, echo it in
//! the response metadata, and hand it to the call's span and the access log
//! through the [`CallContext`].
//!
//! First thing [`super::observe`] does: nothing may log about a call before
//! it has a name.

use super::{CallContext, MethodTable, RpcMethod};
use std::sync::Arc;

pub(crate) const HEADER: &str = "x-request-id";

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
        .get(&super::names::X_REQUEST_ID)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: Option<&str>) -> http::Request<tonic::body::Body> {
        let mut builder = http::Request::builder().uri(crate::testing::GET);
        if let Some(id) = id {
            builder = builder.header(HEADER, id);
        }
        builder.body(tonic::body::Body::default()).unwrap()
    }

    #[test]
    fn the_callers_id_is_taken_when_acceptable() {
        let mut request = request(Some("req-42"));
        let (context, method) = assign(&mut request, crate::testing::table());
        assert_eq!(context.request_id, "req-42");
        assert_eq!(&*method.name, "GetThing");
        // Both are handed to the layers inside.
        let handed = request.extensions().get::<Arc<CallContext>>().unwrap();
        assert!(Arc::ptr_eq(handed, &context));
        let handed = request.extensions().get::<RpcMethod>().unwrap();
        assert!(Arc::ptr_eq(&handed.0, &method.0));
        let longest = "x".repeat(128);
        let (context, _) = assign(&mut self::request(Some(&longest)), crate::testing::table());
        assert_eq!(context.request_id, longest);
    }

    #[test]
    fn an_unacceptable_or_missing_id_is_replaced_by_a_uuid_v7() {
        let too_long = "x".repeat(129);
        for id in [
            None,
            Some(""),
            Some(too_long.as_str()),
            Some("a b"),
            Some("é"),
        ] {
            let mut request = match id {
                // Not a valid header value as a str: sent as raw bytes.
                Some("é") => {
                    let mut r = request(None);
                    r.headers_mut().insert(
                        HEADER,
                        http::HeaderValue::from_bytes("é".as_bytes()).unwrap(),
                    );
                    r
                }
                id => request(id),
            };
            let (context, _) = assign(&mut request, crate::testing::table());
            let uuid = uuid::Uuid::parse_str(&context.request_id)
                .unwrap_or_else(|_| panic!("{id:?} replaced by {:?}", context.request_id));
            assert_eq!(uuid.get_version_num(), 7, "{id:?}");
        }
    }
}
