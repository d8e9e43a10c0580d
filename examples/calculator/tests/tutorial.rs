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
