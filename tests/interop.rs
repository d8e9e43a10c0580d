//! Interop from outside Rust: the Python `grpcio` and `grpcurl` suites in
//! `tests/interop/` run against one real TLS server with real tokens.
//!
//! The Python environment (`.venv/`) is made by `scripts/python-env`
//! (idempotent; `.ci/run` calls it too). This test fails, never skips, when
//! it cannot be made: interop is part of the contract.

mod common;

use common::*;
use std::process::Command;

#[tokio::test]
async fn python_grpcio_and_grpcurl_clients_work_against_the_server() {
    let repo = repo();
    let setup = Command::new(repo.join("scripts/python-env"))
        .status()
        .expect("scripts/python-env runs");
    assert!(
        setup.success(),
        "scripts/python-env failed: cannot set up the Python environment"
    );

    let server = TestServer::start(Backend::sqlite()).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), server.certs.ca()).unwrap();
    let certs = server.certs.clone();
    let kid = jsonwebtoken::decode_header(certs.token("alice", READ_WRITE))
        .unwrap()
        .kid
        .expect("dev tokens carry a kid");
    let endpoint = format!("localhost:{}", server.addr.port());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(repo.join(".venv/bin/python"))
            .current_dir(&repo)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/interop",
            ])
            .env("ORDERS_ENDPOINT", endpoint)
            .env("ORDERS_CA_CERT", ca.path())
            .env("ORDERS_PROTO_DIR", repo.join("proto"))
            .env("GRPCURL", repo.join(".venv/bin/grpcurl"))
            .env("ORDERS_TOKEN", certs.token("alice", READ_WRITE))
            .env("ORDERS_TOKEN_BOB", certs.token("bob", READ_WRITE))
            .env("ORDERS_TOKEN_STAFF", certs.token("staff-1", STAFF))
            .env("ORDERS_TOKEN_READONLY", certs.token("alice", "orders:read"))
            // For test_pyjwt.py, which mints tokens with PyJWT from the same key.
            .env(
                "ORDERS_SIGNING_KEY",
                certs.dev.path(orders::dev::SIGNING_KEY),
            )
            .env("ORDERS_KID", kid)
            .env("ORDERS_ISSUER", ISSUER)
            .env("ORDERS_AUDIENCE", AUDIENCE)
            .output()
            .expect("pytest runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the Python interop suite failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed"), "pytest ran tests:\n{stdout}");
    server.stop().await;
}
