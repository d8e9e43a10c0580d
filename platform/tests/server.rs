//! The platform serving a service that is not the one this repository ships:
//! `things.v1.ThingService`, a handler of a few lines that answers every call
//! NOT_FOUND, mounted with descriptors compiled from its proto at test time.
//!
//! Everything is real: TLS with a development CA and server certificate,
//! ES256 tokens checked against a JWKS file, ports bound on 127.0.0.1:0, and,
//! for the start that must fail, a process of its own and its exit code.
//! Whatever the platform does here it does for any service: it knows the
//! service only by its `NamedService::NAME` and its descriptors.
#![cfg(feature = "server")]

#[path = "support/protos.rs"]
mod protos;

use grpc_platform::config::{Environment, PlatformSettings};
use grpc_platform::dev::{CA_CERT, DevCerts, DevClaims, JWKS, SERVER_CERT, SERVER_KEY};
use grpc_platform::server::{ServerBuilder, exit_code};
use grpc_platform::tls::client_identity;
use protos::{THINGS_PROTO, descriptors};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::process::Command;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// `RemoveThing`'s declaration in [`THINGS_PROTO`], which the undeclared
/// variant leaves out (and nothing else).
const REMOVE_DECLARED: &str = r#"rpc RemoveThing(Thing) returns (Thing) { option (grpc_platform.v1.access) = { scopes: ["things:write", "things:admin"] }; }"#;
const REMOVE_UNDECLARED: &str = "rpc RemoveThing(Thing) returns (Thing);";

const SERVICE: &str = "things.v1.ThingService";
const GET: &str = "/things.v1.ThingService/GetThing";
const PUT: &str = "/things.v1.ThingService/PutThings";
const REMOVE: &str = "/things.v1.ThingService/RemoveThing";
const PING: &str = "/things.v1.ThingService/Ping";
/// A path no mounted service serves.
const NOBODY: &str = "/payments.v1.PaymentService/Pay";

const ISSUER: &str = "things-test";
const AUDIENCE: &str = "things";
/// The service's short name: its metrics' prefix, its certificates' subject.
const NAME: &str = "things";

/// The environment variable that turns a run of
/// `a_method_with_no_declared_policy_stops_the_start_with_exit_78_naming_it`
/// into the child process it starts; its value says which proto to mount.
const CHILD: &str = "PLATFORM_TEST_CHILD";

/// The handler of every `things.v1.ThingService` method: NOT_FOUND, so a
/// call answered NOT_FOUND is a call that got through the stack to it. The
/// message names the caller's client certificate when it showed one.
#[derive(Clone)]
struct Things;

impl NamedService for Things {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for Things {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let message = match client_identity(&request) {
            Some(identity) => format!("no such thing for {}", identity.subject),
            None => "no such thing".to_owned(),
        };
        ready(Ok(Status::not_found(message).into_http()))
    }
}

/// A development CA, server certificate (localhost, 127.0.0.1) and ES256
/// signing key with its JWKS, in a folder removed when this is dropped.
struct Certs {
    _dir: tempfile::TempDir,
    dev: DevCerts,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevCerts::new(dir.path(), NAME);
        dev.generate().unwrap();
        Self { _dir: dir, dev }
    }

    /// A token valid for ten minutes carrying `scope` (space-separated).
    fn token(&self, scope: &str) -> String {
        self.dev
            .token(&DevClaims::valid_for(
                "tester", scope, ISSUER, AUDIENCE, 600,
            ))
            .unwrap()
    }
}

/// Settings a deployment in test would have: TLS with `certs`, tokens
/// verified against their JWKS, both ports on 127.0.0.1:0. They pass the
/// platform's own validation, so nothing here is a test-only shortcut.
fn settings(certs: &Certs) -> PlatformSettings {
    let mut s = PlatformSettings {
        environment: Environment::Test,
        ..PlatformSettings::default()
    };
    s.server.addr = "127.0.0.1:0".parse().unwrap();
    s.admin.addr = "127.0.0.1:0".parse().unwrap();
    s.tls.enabled = true;
    s.tls.cert = Some(certs.dev.path(SERVER_CERT));
    s.tls.key = Some(certs.dev.path(SERVER_KEY));
    s.auth.issuer = ISSUER.into();
    s.auth.audience = AUDIENCE.into();
    s.auth.jwks_file = Some(certs.dev.path(JWKS));
    // Stopping at the end of a test need not wait for load balancers.
    s.shutdown.drain = Duration::ZERO;
    let mut problems = Vec::new();
    s.validate(&mut problems);
    assert!(
        problems.is_empty(),
        "test settings are invalid: {problems:?}"
    );
    s
}

/// A server mounting [`Things`], serving on a task until [`stop`](Self::stop).
struct TestServer {
    certs: Certs,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(Certs::new(), |_| {}).await
    }

    /// A server with `certs` and settings changed by `adjust`.
    async fn start_with(certs: Certs, adjust: impl FnOnce(&mut PlatformSettings)) -> Self {
        let mut settings = settings(&certs);
        adjust(&mut settings);
        let server = ServerBuilder::new(settings, NAME)
            .await
            .expect("the builder prepares keys and TLS")
            .mount(Things, &descriptors(THINGS_PROTO))
            .expect("every method of THINGS_PROTO declares its access")
            .bind()
            .await
            .expect("both ports bind");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            certs,
            addr,
            stop,
            task,
        }
    }

    /// A channel over TLS that trusts only the development CA and checks
    /// the server's certificate for `localhost`.
    async fn channel(&self) -> Channel {
        self.channel_as(None).await
    }

    /// [`channel`](Self::channel), presenting `identity` (certificate and
    /// key) when given.
    async fn channel_as(&self, identity: Option<Identity>) -> Channel {
        let ca = std::fs::read(self.certs.dev.path(CA_CERT)).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("the client connects over TLS")
    }

    /// Stops the server through its shutdown future and waits until it has
    /// returned. Clients must be dropped first: the server finishes only
    /// once its connections have closed.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the server stops within 20 s")
            .expect("the server task did not panic")
            .expect("the server stopped cleanly");
    }
}

/// `request` with `authorization: Bearer {token}` when there is a token.
fn authorized<T>(mut request: Request<T>, token: Option<&str>) -> Request<T> {
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A unary call to `path` with an empty message; its status (OK as `Ok`).
async fn unary(channel: &Channel, path: &'static str, token: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(
        authorized(Request::new(()), token),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|_| ())
}

/// A client-streaming call to `path` sending two empty messages.
async fn client_stream(
    channel: &Channel,
    path: &'static str,
    token: Option<&str>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let messages = tokio_stream::iter([(), ()]);
    grpc.client_streaming(
        authorized(Request::new(messages), token),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|_| ())
}

/// Asserts `result` failed with `code`; returns the status.
#[track_caller]
fn expect_code(result: Result<(), Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(()) => panic!("{what}: answered OK, expected {code:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

/// The scope a PERMISSION_DENIED names in its `ErrorInfo`.
#[track_caller]
fn required_scope(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "MISSING_SCOPE", "{info:?}");
    info.metadata
        .get("required_scope")
        .unwrap_or_else(|| panic!("no required_scope in {info:?}"))
        .clone()
}

/// With `tls.client_ca` set, the verified client certificate's subject
/// reaches the handler on every call of a connection, and each connection
/// carries its own client's subject.
#[tokio::test]
async fn a_client_certificate_names_its_caller_to_the_handler_on_every_call() {
    let certs = Certs::new();
    let clients = ClientCa::new();
    let ca_path = certs.dev.path("clients-ca.pem");
    std::fs::write(&ca_path, clients.cert.pem()).unwrap();
    let server = TestServer::start_with(certs, |s| s.tls.client_ca = Some(ca_path)).await;
    let read = server.certs.token("things:read");

    let shop = server
        .channel_as(Some(clients.issue("shop-frontend")))
        .await;
    let till = server.channel_as(Some(clients.issue("till-7"))).await;
    for _ in 0..2 {
        let answer = expect_code(
            unary(&shop, GET, Some(&read)).await,
            Code::NotFound,
            "GetThing over the shop's connection",
        );
        assert_eq!(answer.message(), "no such thing for CN=shop-frontend");
    }
    let answer = expect_code(
        unary(&till, GET, Some(&read)).await,
        Code::NotFound,
        "GetThing over the till's connection",
    );
    assert_eq!(answer.message(), "no such thing for CN=till-7");

    drop((shop, till));
    server.stop().await;
}

/// A CA for client certificates, as a deployment with mutual TLS has.
struct ClientCa {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "things clients");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate and key whose subject is `CN={name}`.
    fn issue(&self, name: &str) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }
}

/// The access each method declares in the proto is what the server
/// enforces, for a service the platform has never heard of: a token is
/// needed unless the method says public, every declared scope is needed,
/// streaming calls are refused before the handler like unary ones, and a
/// path nobody serves needs a valid token before it is told UNIMPLEMENTED.
#[tokio::test]
async fn a_service_the_platform_never_saw_is_protected_just_the_same() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let read = server.certs.token("things:read");
    let write = server.certs.token("things:write");
    let write_admin = server.certs.token("things:write things:admin");
    let unrelated = server.certs.token("other:read");

    // GetThing declares `things:read`.
    expect_code(
        unary(&channel, GET, None).await,
        Code::Unauthenticated,
        "GetThing without a token",
    );
    let denied = expect_code(
        unary(&channel, GET, Some(&unrelated)).await,
        Code::PermissionDenied,
        "GetThing with a token lacking things:read",
    );
    assert_eq!(required_scope(&denied), "things:read");
    expect_code(
        unary(&channel, GET, Some(&read)).await,
        Code::NotFound,
        "GetThing with things:read reaches the handler",
    );

    // RemoveThing declares two scopes; one of them is not enough.
    let denied = expect_code(
        unary(&channel, REMOVE, Some(&write)).await,
        Code::PermissionDenied,
        "RemoveThing with only things:write",
    );
    assert_eq!(required_scope(&denied), "things:admin");
    expect_code(
        unary(&channel, REMOVE, Some(&write_admin)).await,
        Code::NotFound,
        "RemoveThing with things:write and things:admin reaches the handler",
    );

    // PutThings is client-streaming: refused at the headers all the same,
    // and let through once the token carries `things:write`.
    expect_code(
        client_stream(&channel, PUT, None).await,
        Code::Unauthenticated,
        "PutThings without a token",
    );
    expect_code(
        client_stream(&channel, PUT, Some(&write)).await,
        Code::NotFound,
        "PutThings with things:write reaches the handler",
    );

    // Ping declares itself public.
    expect_code(
        unary(&channel, PING, None).await,
        Code::NotFound,
        "Ping without a token reaches the handler",
    );

    // Nobody serves this path: an anonymous caller cannot even learn that.
    expect_code(
        unary(&channel, NOBODY, None).await,
        Code::Unauthenticated,
        "an unserved path without a token",
    );
    expect_code(
        unary(&channel, NOBODY, Some(&read)).await,
        Code::Unimplemented,
        "an unserved path with a valid token",
    );

    drop(channel);
    server.stop().await;
}

/// gRPC health and reflection are the platform's and public on the TLS
/// port; health answers for the names that follow readiness, which include
/// the mounted service's own name, and reflection lists the mounted service
/// from the descriptors it was mounted with.
#[tokio::test]
async fn health_and_reflection_need_no_token_and_health_names_the_mounted_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServiceResponse};

    let server = TestServer::start().await;
    let channel = server.channel().await;

    let mut health = HealthClient::new(channel.clone());
    for name in ["", "readiness", SERVICE] {
        let response = health
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap_or_else(|status| panic!("Check({name:?}) without a token: {status:?}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "Check({name:?})");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("Check(\"nope\") answers an error");
    assert_eq!(
        unknown.code(),
        Code::NotFound,
        "Check(\"nope\"): {unknown:?}"
    );

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection response")
        .expect("a reflection response before the stream ends");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("ListServices answered {response:?}");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|ServiceResponse { name }| name.as_str())
        .collect();
    assert!(
        names.contains(&SERVICE),
        "ListServices lists {names:?}, not {SERVICE}"
    );

    drop((health, reflection, responses, channel));
    server.stop().await;
}

/// A method whose access nobody declared cannot be served: the start stops
/// with exit 78 (`EX_CONFIG`) and says which method, seen as a real process
/// would see it. The same start with the declaration in place gets past the
/// mount and binds, so the missing option is what stopped the first.
#[test]
fn a_method_with_no_declared_policy_stops_the_start_with_exit_78_naming_it() {
    const TEST: &str = "a_method_with_no_declared_policy_stops_the_start_with_exit_78_naming_it";
    if let Ok(which) = std::env::var(CHILD) {
        child_main(&which);
    }

    let run = |which: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, which)
            .output()
            .expect("the child process runs")
    };

    let undeclared = run("undeclared");
    let stderr = String::from_utf8_lossy(&undeclared.stderr);
    assert_eq!(
        undeclared.status.code(),
        Some(78),
        "a start mounting an undeclared method exits 78; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(REMOVE),
        "the error names {REMOVE}; stderr:\n{stderr}"
    );
    for declared in [GET, PUT, PING] {
        assert!(
            !stderr.contains(declared),
            "the error names only undeclared methods, not {declared}; stderr:\n{stderr}"
        );
    }

    let declared = run("declared");
    let stdout = String::from_utf8_lossy(&declared.stdout);
    let stderr = String::from_utf8_lossy(&declared.stderr);
    assert!(
        declared.status.success() && stdout.contains("child: bound"),
        "the same start with every method declared binds and exits 0; got {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        declared.status
    );
}

/// The child process: a service's `main` in small. Mounts [`Things`] with
/// THINGS_PROTO (`declared`) or with RemoveThing's option left out
/// (`undeclared`), binds, and exits 0; an error exits with the platform's
/// [`exit_code`] after printing the whole chain, as a `main` would.
fn child_main(which: &str) -> ! {
    use anyhow::Context as _;
    let proto = match which {
        "declared" => THINGS_PROTO.to_owned(),
        "undeclared" => {
            assert!(THINGS_PROTO.contains(REMOVE_DECLARED));
            THINGS_PROTO.replace(REMOVE_DECLARED, REMOVE_UNDECLARED)
        }
        other => panic!("{CHILD}={other:?}: expected declared or undeclared"),
    };
    let certs = Certs::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = runtime.block_on(async {
        let server = ServerBuilder::new(settings(&certs), NAME)
            .await?
            .mount(Things, &descriptors(&proto))
            .with_context(|| format!("cannot mount {SERVICE}"))?
            .bind()
            .await?;
        anyhow::Ok(server.local_addr())
    });
    drop(runtime);
    // `exit` runs no destructors: remove the certificates' folder first.
    drop(certs);
    match started {
        Ok(addr) => {
            println!("child: bound {addr}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(i32::from(exit_code(&e)))
        }
    }
}
