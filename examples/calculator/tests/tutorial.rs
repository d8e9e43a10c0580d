//! `calculator-server` as production runs it (TLS, issuer, audience, JWKS),
//! called by the tutorial-style Python client and by grpcurl through
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
            binary: env!("CARGO_BIN_EXE_calculator-server").as_ref(),
            env_prefix: "CALCULATOR",
            config_dir: &Path::new(HERE).join("config"),
            name: "calculator",
        },
        extra,
    )
}

#[tokio::test]
async fn the_public_method_needs_no_token_and_the_other_its_scope() {
    let server = start(false);
    let python = Python::new(WORKSPACE.as_ref()).generate(
        &Path::new(HERE).join("proto"),
        &["calculator/calculator.proto"],
    );
    let client = |token: &str, args: &[&str]| {
        let mut command = python.python();
        command
            .arg(Path::new(HERE).join("clients/calculator_client.py"))
            .args(args)
            .env("CALCULATOR_TARGET", server.target())
            .env("CALCULATOR_CA", server.ca_file())
            .env("CALCULATOR_TOKEN", token);
        command
    };

    let (out, _) = run(
        &mut client(
            &server.token("alice", "calculator:use"),
            &["16", "2.5", "1.5"],
        ),
        true,
    );
    assert!(out.contains("square root: 4.0"), "{out}");
    assert!(out.contains("sum: 4.0"), "{out}");

    // No token: the square root is answered, the sum refused.
    let (out, err) = run(&mut client("", &["16", "1", "2"]), false);
    assert!(out.contains("square root: 4.0"), "{out}");
    assert!(err.contains("StatusCode.UNAUTHENTICATED"), "{err}");

    let (_, err) = run(
        &mut client(&server.token("alice", "greeter:use"), &["16", "1", "2"]),
        false,
    );
    assert!(err.contains("StatusCode.PERMISSION_DENIED"), "{err}");

    // A negative value: INVALID_ARGUMENT, whatever the token.
    let (_, err) = run(&mut client("", &["-4", "1", "2"]), false);
    assert!(err.contains("StatusCode.INVALID_ARGUMENT"), "{err}");
    assert!(err.contains("value must not be negative"), "{err}");

    assert_eq!(server.health("readiness").await.unwrap(), 1, "SERVING");
    assert!(server.stop().success(), "a clean stop on SIGTERM");
}

#[tokio::test]
async fn reflection_lists_and_describes_the_calculator() {
    let server = start(true);
    let python = Python::new(WORKSPACE.as_ref());
    let grpcurl = |then: &[&str]| run(&mut server.grpcurl(&python, &[], then), true).0;
    let services = grpcurl(&["list"]);
    assert!(
        services.lines().any(|l| l == "calculator.Calculator"),
        "{services}"
    );
    let described = grpcurl(&["describe", "calculator.Calculator"]);
    for rpc in [
        "rpc SquareRoot ( .calculator.Number ) returns ( .calculator.Number )",
        "rpc Add ( .calculator.NumberPair ) returns ( .calculator.Number )",
    ] {
        assert!(described.contains(rpc), "{rpc} missing from {described}");
    }
    // The public method answers grpcurl without a token.
    let mut call = server.grpcurl(
        &python,
        &["-d", r#"{"value": 2.25}"#],
        &["calculator.Calculator/SquareRoot"],
    );
    let (out, _) = run(&mut call, true);
    assert!(out.contains("1.5"), "{out}");
    assert!(server.stop().success());
}

/// The calculator answers a browser's protocols on the same port under the
/// same policy: the public method with Connect JSON and no token, the other
/// refused without one (HTTP 401) and answered with its scope, and gRPC-Web.
#[tokio::test]
async fn curl_reaches_the_calculator_with_connect_json_and_grpc_web_under_the_same_policy() {
    let server = start(false);
    const SQRT: &str = "/calculator.Calculator/SquareRoot";
    const ADD: &str = "/calculator.Calculator/Add";

    let (out, status, _) = server.curl("", "--http2", SQRT, "application/json", br#"{"value":16}"#);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 200, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["value"], 4.0, "{out}");

    let pair = br#"{"first":1.5,"second":2.5}"#;
    let (out, status, _) = server.curl("", "--http1.1", ADD, "application/json", pair);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 401, "{out}");
    let error: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(error["code"], "unauthenticated", "{out}");

    let token = server.token("alice", "calculator:use");
    let (out, status, _) = server.curl(&token, "--http1.1", ADD, "application/json", pair);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 200, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["value"], 4.0, "{out}");

    // gRPC-Web: Number { value = 9.0 } (field 1, a double), framed.
    let mut framed = vec![0u8, 0, 0, 0, 9, 0x09];
    framed.extend_from_slice(&9.0f64.to_le_bytes());
    let (out, status, _) = server.curl("", "--http2", SQRT, "application/grpc-web+proto", &framed);
    let mut three = vec![0u8, 0, 0, 0, 9, 0x09];
    three.extend_from_slice(&3.0f64.to_le_bytes());
    assert_eq!(status, 200);
    assert!(out.starts_with(&three), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out).contains("grpc-status:0"),
        "{out:?}"
    );
    assert!(server.stop().success(), "a clean stop on SIGTERM");
}
