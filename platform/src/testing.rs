//! What the platform's unit tests share: a service of their own, compiled
//! from its proto into a descriptor set as a service's build script would,
//! and the method table a server mounting it (with health and reflection)
//! builds.

#[path = "../tests/support/protos.rs"]
mod protos;
pub(crate) use protos::{THINGS_PROTO, descriptors};

pub(crate) const SERVICE: &str = "things.v1.ThingService";
pub(crate) const GET: &str = "/things.v1.ThingService/GetThing";
pub(crate) const PUT: &str = "/things.v1.ThingService/PutThings";
pub(crate) const WATCH: &str = "/things.v1.ThingService/WatchThing";
pub(crate) const SYNC: &str = "/things.v1.ThingService/SyncThings";
pub(crate) const REMOVE: &str = "/things.v1.ThingService/RemoveThing";
pub(crate) const PING: &str = "/things.v1.ThingService/Ping";

/// The table of a server mounting the test service, health and reflection.
#[cfg(feature = "server")]
pub(crate) fn table() -> &'static crate::methods::MethodTable {
    use crate::methods::MethodTable;
    use std::sync::LazyLock;
    use tonic::server::NamedService;

    static TABLE: LazyLock<MethodTable> = LazyLock::new(|| {
        let mut table = MethodTable::new();
        table.mount(SERVICE, &descriptors(THINGS_PROTO)).unwrap();
        table
            .mount_public(
                <tonic_health::pb::health_server::HealthServer<()> as NamedService>::NAME,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            )
            .unwrap();
        table
            .mount_public(
                <tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<()> as NamedService>::NAME,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            )
            .unwrap();
        table
    });
    &TABLE
}

/// The `ErrorInfo.domain` the unit tests' rescue layer gives a path that
/// names no well-formed service.
#[cfg(feature = "server")]
pub(crate) const FALLBACK: &str = "test.v1.Fallback";

/// The status the rescue layer answers with when a call to `path` (request
/// id `req-1`) fails with `error`: how a layer's unit tests check what
/// their typed error becomes on the wire.
#[cfg(feature = "server")]
pub(crate) fn rescued(error: &(dyn std::error::Error + 'static), path: &str) -> tonic::Status {
    use crate::middleware::{CallContext, RpcMethod, rescue};
    let mut request = http::Request::builder().uri(path).body(()).unwrap();
    request
        .extensions_mut()
        .insert(RpcMethod::resolve(table(), path));
    request
        .extensions_mut()
        .insert(std::sync::Arc::new(CallContext {
            request_id: "req-1".into(),
            ..Default::default()
        }));
    let response = rescue::respond(error, &rescue::Call::of(&request, FALLBACK));
    tonic::Status::from_header_map(response.headers()).expect("a trailers-only answer")
}
