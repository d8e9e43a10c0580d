//! The method table: every method the server serves, by path, with how it
//! streams, who may call it and how large its requests may be, read from the mounted services' encoded file
//! descriptor sets when the server starts.
//!
//! What holds:
//! - Every method of a mounted service declares its access with the
//!   `grpc_platform.v1.access` option, or the table is not built: the start
//!   stops naming each method that declares none. Nobody can ship a method
//!   whose access was never decided.
//! - Only the platform's own services (gRPC health and reflection), mounted
//!   with [`MethodTable::mount_public`], are public without saying so.
//! - A path that no mounted service serves resolves to a method that needs a
//!   valid token: an unauthenticated caller learns nothing, not even that the
//!   method does not exist.

use prost_reflect::{DescriptorPool, ExtensionDescriptor, MethodDescriptor};
use std::collections::HashMap;
use std::sync::Arc;

/// The full name of the method option that declares access.
pub const ACCESS_OPTION: &str = "grpc_platform.v1.access";
/// The option's message type.
const ACCESS_MESSAGE: &str = "grpc_platform.v1.Access";
/// The full name of the method option that declares request limits.
pub const LIMITS_OPTION: &str = "grpc_platform.v1.limits";
/// That option's message type.
const LIMITS_MESSAGE: &str = "grpc_platform.v1.Limits";

/// How a method streams, labelled as go-grpc-prometheus labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl RpcKind {
    pub fn label(self) -> &'static str {
        match self {
            RpcKind::Unary => "unary",
            RpcKind::ClientStream => "client_stream",
            RpcKind::ServerStream => "server_stream",
            RpcKind::BidiStream => "bidi_stream",
        }
    }

    fn of(method: &MethodDescriptor) -> Self {
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => RpcKind::Unary,
            (true, false) => RpcKind::ClientStream,
            (false, true) => RpcKind::ServerStream,
            (true, true) => RpcKind::BidiStream,
        }
    }
}

/// Who may call a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token at all.
    Public,
    /// A valid bearer token carrying every one of these scopes; with none,
    /// any valid token.
    Token(Arc<[Arc<str>]>),
}

impl Access {
    /// Any valid token, whatever its scopes.
    pub fn any_token() -> Self {
        Access::Token(Arc::from([]))
    }

    /// The scopes a token must carry (none for public methods).
    pub fn scopes(&self) -> &[Arc<str>] {
        match self {
            Access::Public => &[],
            Access::Token(scopes) => scopes,
        }
    }
}

/// What the stack knows of one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// The service's full gRPC name (`package.Service`).
    pub service: Arc<str>,
    /// The method's name.
    pub name: Arc<str>,
    pub kind: RpcKind,
    pub access: Access,
    /// Whether the platform's own services serve it (gRPC health and
    /// reflection), which must answer under any load: never shed.
    pub platform: bool,
    /// Whether a mounted service serves it. The name of a method nobody
    /// mounted is whatever the client put in its path: it may be logged
    /// (escaped), never used as a metric label.
    pub mounted: bool,
    /// The largest request message it takes, in bytes after decompression,
    /// as its `grpc_platform.v1.limits` option declares; `None`: the
    /// server's default.
    pub max_request_bytes: Option<u32>,
}

impl Method {
    /// A path no mounted service serves: unary, and it needs a valid token
    /// like any call (the router answers UNIMPLEMENTED after that).
    pub fn unknown(path: &str) -> Self {
        let (service, name) = split_path(path);
        Method {
            service: service.into(),
            name: name.into(),
            kind: RpcKind::Unary,
            access: Access::any_token(),
            platform: false,
            mounted: false,
            max_request_bytes: None,
        }
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// Why the table could not be built. Each names the service or method at
/// fault, so the operator knows what to fix; a start that fails with one
/// exits 78 (configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the file descriptor set mounted with {service} does not decode: {reason}")]
    Descriptors { service: String, reason: String },
    #[error("service {0} is not in the file descriptor set it was mounted with")]
    UnknownService(String),
    #[error("service {0} is mounted twice")]
    Duplicate(String),
    #[error(
        "no access policy is declared for {}: give each method `option ({ACCESS_OPTION}) = {{ scopes: \"...\" }};` or `option ({ACCESS_OPTION}).public = true;`",
        .0.join(", ")
    )]
    Undeclared(Vec<String>),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// Every method the server serves, by path (`/package.Service/Method`).
#[derive(Debug, Default, Clone)]
pub struct MethodTable {
    by_path: HashMap<Box<str>, Arc<Method>>,
    services: Vec<Arc<str>>,
}

impl MethodTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts an application service: `service` is its full gRPC name
    /// (tonic's `NamedService::NAME`), `descriptors` the encoded file
    /// descriptor set that holds it (imports included, as prost-build writes
    /// it). Every method must declare its access.
    pub fn mount(&mut self, service: &str, descriptors: &[u8]) -> Result<(), PolicyError> {
        let methods = read_service(service, descriptors)?;
        let mut undeclared = Vec::new();
        let mut declared = Vec::with_capacity(methods.len());
        for read in methods {
            match read.access {
                Some(access) => declared.push(Read {
                    access: Some(access),
                    ..read
                }),
                None => undeclared.push(read.path),
            }
        }
        if !undeclared.is_empty() {
            return Err(PolicyError::Undeclared(undeclared));
        }
        self.insert(service, declared, false)
    }

    /// Mounts one of the platform's own services, which anyone may call
    /// without a token (gRPC health and reflection); options are ignored.
    pub fn mount_public(&mut self, service: &str, descriptors: &[u8]) -> Result<(), PolicyError> {
        let methods = read_service(service, descriptors)?
            .into_iter()
            .map(|read| Read {
                access: Some(Access::Public),
                max_request_bytes: None,
                ..read
            })
            .collect();
        self.insert(service, methods, true)
    }

    fn insert(
        &mut self,
        service: &str,
        methods: Vec<Read>,
        platform: bool,
    ) -> Result<(), PolicyError> {
        if self
            .by_path
            .keys()
            .any(|path| split_path(path).0 == service)
        {
            return Err(PolicyError::Duplicate(service.to_owned()));
        }
        let service: Arc<str> = service.into();
        for read in methods {
            let method = Method {
                service: service.clone(),
                name: split_path(&read.path).1.into(),
                kind: read.kind,
                access: read.access.unwrap_or_else(Access::any_token),
                platform,
                mounted: true,
                max_request_bytes: read.max_request_bytes,
            };
            self.by_path.insert(read.path.into(), Arc::new(method));
        }
        if !platform {
            self.services.push(service);
        }
        Ok(())
    }

    /// The method at `path`, if a mounted service serves it.
    pub fn get(&self, path: &str) -> Option<&Arc<Method>> {
        self.by_path.get(path)
    }

    /// The method at `path`; a path nobody serves gets a unary method that
    /// needs a valid token (allocated: only such paths cost one).
    pub fn resolve(&self, path: &str) -> Arc<Method> {
        match self.by_path.get(path) {
            Some(method) => method.clone(),
            None => Arc::new(Method::unknown(path)),
        }
    }

    /// The application's services, in the order they were mounted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| &**s)
    }

    /// Every method, in no particular order.
    pub fn methods(&self) -> impl Iterator<Item = &Method> {
        self.by_path.values().map(|m| &**m)
    }
}

/// One method as its service's descriptors declare it.
struct Read {
    path: String,
    kind: RpcKind,
    /// `None` when it declares none.
    access: Option<Access>,
    /// `None` when it declares none (or 0).
    max_request_bytes: Option<u32>,
}

/// Each method of `service`, as its options declare it.
fn read_service(service: &str, descriptors: &[u8]) -> Result<Vec<Read>, PolicyError> {
    let pool = DescriptorPool::decode(descriptors).map_err(|e| PolicyError::Descriptors {
        service: service.to_owned(),
        reason: e.to_string(),
    })?;
    let descriptor = pool
        .get_service_by_name(service)
        .ok_or_else(|| PolicyError::UnknownService(service.to_owned()))?;
    // A service whose protos never import the option has it in no pool: then
    // no method declares access, and `mount` names them all.
    let option = extension(&pool, ACCESS_OPTION, ACCESS_MESSAGE);
    let limits = extension(&pool, LIMITS_OPTION, LIMITS_MESSAGE);
    descriptor
        .methods()
        .map(|method| {
            let path = format!("/{service}/{}", method.name());
            let access =
                access_of(&method, option.as_ref()).map_err(|reason| PolicyError::Invalid {
                    path: path.clone(),
                    reason,
                })?;
            Ok(Read {
                kind: RpcKind::of(&method),
                access,
                max_request_bytes: max_request_bytes_of(&method, limits.as_ref()),
                path,
            })
        })
        .collect()
}

/// The extension `name` in `pool`, if it is there with the message type
/// the platform defines for it.
fn extension(pool: &DescriptorPool, name: &str, message: &str) -> Option<ExtensionDescriptor> {
    pool.get_extension_by_name(name)
        .filter(|ext| ext.kind().as_message().map(|m| m.full_name()) == Some(message))
}

/// The request size limit a method declares (0 or none: `None`).
fn max_request_bytes_of(
    method: &MethodDescriptor,
    option: Option<&ExtensionDescriptor>,
) -> Option<u32> {
    let option = option?;
    let options = method.options();
    if !options.has_extension(option) {
        return None;
    }
    let value = options.get_extension(option);
    value
        .as_message()?
        .get_field_by_name("max_request_bytes")?
        .as_u32()
        .filter(|&bytes| bytes > 0)
}

/// The access a method declares, `None` when it declares none.
fn access_of(
    method: &MethodDescriptor,
    option: Option<&ExtensionDescriptor>,
) -> Result<Option<Access>, String> {
    let Some(option) = option else {
        return Ok(None);
    };
    let options = method.options();
    if !options.has_extension(option) {
        return Ok(None);
    }
    let value = options.get_extension(option);
    let access = value
        .as_message()
        .ok_or_else(|| format!("{ACCESS_OPTION} is not a message"))?;
    let public = access
        .get_field_by_name("public")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let scopes = match access.get_field_by_name("scopes") {
        Some(list) => list
            .as_list()
            .unwrap_or_default()
            .iter()
            .map(|scope| {
                let scope = scope.as_str().unwrap_or_default();
                if is_scope_token(scope) {
                    Ok(Arc::from(scope))
                } else {
                    Err(format!(
                        "scope {scope:?} is not a scope token (printable ASCII, no space, quote or backslash)"
                    ))
                }
            })
            .collect::<Result<Vec<Arc<str>>, String>>()?,
        None => Vec::new(),
    };
    match (public, scopes.is_empty()) {
        (true, false) => Err("declares both public access and scopes".to_owned()),
        (true, true) => Ok(Some(Access::Public)),
        (false, _) => Ok(Some(Access::Token(scopes.into()))),
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::descriptors;

    const PAYMENTS: &str = r#"
        syntax = "proto3";
        package payments.v1;
        import "grpc_platform/v1/access.proto";
        message Req {}
        message Resp {}
        service PaymentService {
          rpc Pay(Req) returns (Resp) { option (grpc_platform.v1.access) = { scopes: "payments:write" }; }
          rpc Refund(Req) returns (Resp) { option (grpc_platform.v1.access) = { scopes: ["payments:write", "payments:refund"] }; }
          rpc Feed(Req) returns (stream Resp) { option (grpc_platform.v1.access) = {}; }
          rpc Upload(stream Req) returns (Resp) {
            option (grpc_platform.v1.access).public = true;
            option (grpc_platform.v1.limits).max_request_bytes = 1048576;
          }
          rpc Chat(stream Req) returns (stream Resp) { option (grpc_platform.v1.access) = { scopes: "payments:read" }; }
        }
    "#;

    fn scopes(list: &[&str]) -> Access {
        Access::Token(list.iter().map(|s| Arc::from(*s)).collect())
    }

    #[test]
    fn kinds_and_access_are_read_as_the_proto_declares_them() {
        let mut table = MethodTable::new();
        table
            .mount("payments.v1.PaymentService", &descriptors(PAYMENTS))
            .unwrap();
        let get = |path: &str| table.get(path).unwrap().clone();
        let pay = get("/payments.v1.PaymentService/Pay");
        assert_eq!(pay.kind, RpcKind::Unary);
        assert_eq!(pay.access, scopes(&["payments:write"]));
        assert_eq!(&*pay.service, "payments.v1.PaymentService");
        assert_eq!(&*pay.name, "Pay");
        assert!(!pay.platform);
        assert_eq!(
            get("/payments.v1.PaymentService/Refund").access,
            scopes(&["payments:write", "payments:refund"])
        );
        let feed = get("/payments.v1.PaymentService/Feed");
        assert_eq!(feed.kind, RpcKind::ServerStream);
        assert_eq!(feed.access, Access::any_token());
        let upload = get("/payments.v1.PaymentService/Upload");
        assert_eq!(upload.kind, RpcKind::ClientStream);
        assert_eq!(upload.access, Access::Public);
        // Request limits: as declared, else the server's default (`None`).
        assert_eq!(upload.max_request_bytes, Some(1_048_576));
        assert_eq!(pay.max_request_bytes, None);
        assert_eq!(
            get("/payments.v1.PaymentService/Chat").kind,
            RpcKind::BidiStream
        );
        assert_eq!(
            table.services().collect::<Vec<_>>(),
            ["payments.v1.PaymentService"]
        );
        assert_eq!(table.methods().count(), 5);
    }

    #[test]
    fn a_method_that_declares_no_access_stops_the_mount_and_is_named() {
        let proto = r#"
            syntax = "proto3";
            package payments.v1;
            import "grpc_platform/v1/access.proto";
            message Req {}
            service PaymentService {
              rpc Pay(Req) returns (Req) { option (grpc_platform.v1.access) = { scopes: "payments:write" }; }
              rpc Refund(Req) returns (Req);
              rpc Void(Req) returns (Req) {}
            }
        "#;
        let err = MethodTable::new()
            .mount("payments.v1.PaymentService", &descriptors(proto))
            .unwrap_err();
        assert_eq!(
            err,
            PolicyError::Undeclared(vec![
                "/payments.v1.PaymentService/Refund".into(),
                "/payments.v1.PaymentService/Void".into(),
            ])
        );
        assert!(
            err.to_string()
                .contains("/payments.v1.PaymentService/Refund, /payments.v1.PaymentService/Void"),
            "{err}"
        );
    }

    #[test]
    fn a_proto_that_never_imports_the_option_declares_nothing() {
        let proto = r#"
            syntax = "proto3";
            package greeter.v1;
            message Hello {}
            service Greeter { rpc SayHello(Hello) returns (Hello); }
        "#;
        let err = MethodTable::new()
            .mount("greeter.v1.Greeter", &descriptors(proto))
            .unwrap_err();
        assert_eq!(
            err,
            PolicyError::Undeclared(vec!["/greeter.v1.Greeter/SayHello".into()])
        );
    }

    #[test]
    fn contradictory_or_malformed_policies_are_refused() {
        let with = |option: &str| {
            descriptors(&format!(
                r#"
                syntax = "proto3";
                package p.v1;
                import "grpc_platform/v1/access.proto";
                message M {{}}
                service S {{ rpc Call(M) returns (M) {{ option (grpc_platform.v1.access) = {option}; }} }}
            "#
            ))
        };
        for (option, reason) in [
            (r#"{ public: true, scopes: "a" }"#, "both public"),
            (r#"{ scopes: "two words" }"#, "not a scope token"),
            (r#"{ scopes: "" }"#, "not a scope token"),
            (r#"{ scopes: "quote\"d" }"#, "not a scope token"),
        ] {
            match MethodTable::new().mount("p.v1.S", &with(option)) {
                Err(PolicyError::Invalid { path, reason: why }) => {
                    assert_eq!(path, "/p.v1.S/Call");
                    assert!(why.contains(reason), "{option}: {why}");
                }
                other => panic!("{option}: {other:?}"),
            }
        }
    }

    #[test]
    fn mounting_what_the_descriptors_do_not_hold_is_refused() {
        let set = descriptors(PAYMENTS);
        assert_eq!(
            MethodTable::new().mount("payments.v1.Other", &set),
            Err(PolicyError::UnknownService("payments.v1.Other".into()))
        );
        assert!(matches!(
            MethodTable::new().mount("payments.v1.PaymentService", b"\xff\xff not protobuf"),
            Err(PolicyError::Descriptors { .. })
        ));
        let mut table = MethodTable::new();
        table.mount("payments.v1.PaymentService", &set).unwrap();
        assert_eq!(
            table.mount("payments.v1.PaymentService", &set),
            Err(PolicyError::Duplicate("payments.v1.PaymentService".into()))
        );
    }

    #[test]
    fn platform_services_are_public_and_unknown_paths_need_a_token() {
        let proto = r#"
            syntax = "proto3";
            package grpc.health.v1;
            message Req {}
            service Health {
              rpc Check(Req) returns (Req);
              rpc Watch(Req) returns (stream Req);
            }
        "#;
        let mut table = MethodTable::new();
        table
            .mount_public("grpc.health.v1.Health", &descriptors(proto))
            .unwrap();
        let watch = table.resolve("/grpc.health.v1.Health/Watch");
        assert_eq!(watch.access, Access::Public);
        assert_eq!(watch.kind, RpcKind::ServerStream);
        assert!(watch.platform);
        assert_eq!(table.services().count(), 0);

        let unknown = table.resolve("/payments.v1.PaymentService/Pay");
        assert_eq!(unknown.access, Access::any_token());
        assert_eq!(unknown.kind, RpcKind::Unary);
        assert!(!unknown.platform);
        assert_eq!(&*unknown.service, "payments.v1.PaymentService");
        assert_eq!(&*unknown.name, "Pay");
        assert_eq!(table.resolve("garbage").access, Access::any_token());
    }
}
