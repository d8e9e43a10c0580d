//! `greeter-server` as production runs it (TLS, issuer, audience, JWKS),
//! called by the helloworld tutorial's Python client and by grpcurl through
//! reflection.

use grpc_platform::test_support::{Python, RunningServer, ServerUnderTest, run};
use std::path::Path;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const HERE: &str = env!("CARGO_MANIFEST_DIR");

/// The server with production settings; reflection, off in production,
/// turned on when `reflection`.
fn start(reflection: bool) -> RunningServer {
    let extra: &[(&str, &str)] = if reflection {
        &[("SERVER__REFLECTION", "true")]
    } else {
        &[]
    };
    RunningServer::start_with(
        ServerUnderTest {
            binary: env!("CARGO_BIN_EXE_greeter-server").as_ref(),
            env_prefix: "GREETER",
            config_dir: &Path::new(HERE).join("config"),
            name: "greeter",
        },
        extra,
    )
}

#[tokio::test]
async fn the_tutorial_client_is_answered_with_the_scope_and_refused_without() {
    let server = start(false);
    let python = Python::new(WORKSPACE.as_ref()).generate(
        &Path::new(HERE).join("proto"),
        &["helloworld/helloworld.proto"],
    );
    let client = |token: &str| {
        let mut command = python.python();
        command
            .arg(Path::new(HERE).join("clients/greeter_client.py"))
            .env("GREETER_TARGET", server.target())
            .env("GREETER_CA", server.ca_file())
            .env("GREETER_TOKEN", token);
        command
    };

    let (out, _) = run(&mut client(&server.token("alice", "greeter:use")), true);
    assert!(
        out.contains("Greeter client received: Hello, you!"),
        "{out}"
    );

    let (_, err) = run(&mut client(""), false);
    assert!(err.contains("StatusCode.UNAUTHENTICATED"), "{err}");

    let (_, err) = run(&mut client(&server.token("alice", "routes:read")), false);
    assert!(err.contains("StatusCode.PERMISSION_DENIED"), "{err}");
    assert!(
        err.contains("greeter:use"),
        "the missing scope is named: {err}"
    );

    assert_eq!(server.health("readiness").await.unwrap(), 1, "SERVING");
    assert_eq!(server.health("liveness").await.unwrap(), 1, "SERVING");
    assert!(server.stop().success(), "a clean stop on SIGTERM");
}

#[tokio::test]
async fn reflection_lists_and_describes_the_greeter() {
    let server = start(true);
    let python = Python::new(WORKSPACE.as_ref());
    let grpcurl = |then: &[&str]| run(&mut server.grpcurl(&python, &[], then), true).0;
    let services = grpcurl(&["list"]);
    assert!(
        services.lines().any(|l| l == "helloworld.Greeter"),
        "{services}"
    );
    let described = grpcurl(&["describe", "helloworld.Greeter"]);
    assert!(
        described.contains(
            "rpc SayHello ( .helloworld.HelloRequest ) returns ( .helloworld.HelloReply )"
        ),
        "{described}"
    );
    assert!(server.stop().success());
}

#[tokio::test]
async fn reflection_is_off_in_production_unless_turned_on() {
    let server = start(false);
    let python = Python::new(WORKSPACE.as_ref());
    // Its path is then one nobody serves: a token is needed to learn even
    // that, and with one the answer is that there is no reflection.
    let (_, err) = run(&mut server.grpcurl(&python, &[], &["list"]), false);
    assert!(err.contains("Unauthenticated"), "{err}");
    let header = format!(
        "authorization: Bearer {}",
        server.token("alice", "greeter:use")
    );
    let (_, err) = run(
        &mut server.grpcurl(&python, &["-H", &header], &["list"]),
        false,
    );
    assert!(err.contains("does not support the reflection API"), "{err}");
    assert!(server.stop().success());
}
