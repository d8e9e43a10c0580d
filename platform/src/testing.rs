//! What the platform's unit tests share: a service of their own, compiled
//! from its proto into a descriptor set as a service's build script would,
//! and the method table a server mounting it (with health and reflection)
//! builds.

use std::path::Path;
use std::process::Command;

/// The test service: every streaming kind, several scopes, one public method.
pub const THINGS_PROTO: &str = r#"
    syntax = "proto3";
    package things.v1;
    import "grpc_platform/v1/access.proto";
    message Thing { string id = 1; }
    service ThingService {
      rpc GetThing(Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: "things:read" }; }
      rpc PutThings(stream Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: "things:write" }; }
      rpc WatchThing(Thing) returns (stream Thing) { option (grpc_platform.v1.access) = { scopes: "things:read" }; }
      rpc SyncThings(stream Thing) returns (stream Thing) { option (grpc_platform.v1.access) = { scopes: "things:read" }; }
      rpc RemoveThing(Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: ["things:write", "things:admin"] }; }
      rpc Ping(Thing) returns (Thing) { option (grpc_platform.v1.access).public = true; }
    }
"#;

pub const SERVICE: &str = "things.v1.ThingService";
pub const GET: &str = "/things.v1.ThingService/GetThing";
pub const PUT: &str = "/things.v1.ThingService/PutThings";
pub const WATCH: &str = "/things.v1.ThingService/WatchThing";
pub const SYNC: &str = "/things.v1.ThingService/SyncThings";
pub const REMOVE: &str = "/things.v1.ThingService/RemoveThing";
pub const PING: &str = "/things.v1.ThingService/Ping";

/// Compiles `proto` (as the file `test/v1/svc.proto`) into an encoded
/// descriptor set with imports.
pub fn descriptors(proto: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test/v1/svc.proto");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, proto).unwrap();
    let out = dir.path().join("set.bin");
    let status = Command::new(protoc_bin_vendored::protoc_bin_path().unwrap())
        .arg("-I")
        .arg(dir.path())
        .arg("-I")
        .arg(Path::new(crate::PROTO_INCLUDE_DIR))
        .arg("-I")
        .arg(protoc_bin_vendored::include_path().unwrap())
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("test/v1/svc.proto")
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed on:\n{proto}");
    std::fs::read(out).unwrap()
}

/// The table of a server mounting the test service, health and reflection.
#[cfg(feature = "server")]
pub fn table() -> &'static crate::methods::MethodTable {
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
