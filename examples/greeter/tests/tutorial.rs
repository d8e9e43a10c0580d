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

/// The same greeter answers a browser's protocols on the same port, with the
/// same policy: Connect JSON with `curl`, over HTTP/1.1 and HTTP/2, and
/// gRPC-Web; without the scope, Connect's `permission_denied` (HTTP 403).
#[tokio::test]
async fn curl_reaches_the_greeter_with_connect_json_and_grpc_web_under_the_same_policy() {
    let server = start(false);
    const PATH: &str = "/helloworld.Greeter/SayHello";
    let alice = server.token("alice", "greeter:use");
    for http in ["--http1.1", "--http2"] {
        let (out, status, version) =
            server.curl(&alice, http, PATH, "application/json", br#"{"name":"web"}"#);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(out, r#"{"message":"Hello, web!"}"#, "{http}");
        let expected = if http == "--http2" { "2" } else { "1.1" };
        assert_eq!((status, version.as_str()), (200, expected), "{http}: {out}");
    }

    let other = server.token("alice", "routes:read");
    let (out, status, _) = server.curl(
        &other,
        "--http2",
        PATH,
        "application/json",
        br#"{"name":"web"}"#,
    );
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 403, "{out}");
    let error: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(error["code"], "permission_denied", "{out}");
    assert!(
        error["message"].as_str().unwrap().contains("greeter:use"),
        "{out}"
    );
    assert_eq!(error["details"][0]["type"], "google.rpc.ErrorInfo", "{out}");

    // gRPC-Web over HTTP/1.1: the message framed as gRPC frames it, the
    // status in a trailer frame at the end of the body.
    let name = b"web";
    let mut framed = vec![0u8, 0, 0, 0, (name.len() + 2) as u8, 0x0a, name.len() as u8];
    framed.extend_from_slice(name);
    let (out, status, version) = server.curl(
        &alice,
        "--http1.1",
        PATH,
        "application/grpc-web+proto",
        &framed,
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("Hello, web!"), "{text}");
    assert!(text.contains("grpc-status:0"), "{text}");
    assert_eq!((status, version.as_str()), (200, "1.1"), "{text}");
    assert!(server.stop().success(), "a clean stop on SIGTERM");
}
