//! The README's examples, run as a newcomer would type them, against a real
//! server: the `ordersctl` walk-through (every subcommand), the grpcurl calls
//! and the Python client. The only changes: the server's port instead of
//! 50051, and the `cargo build` line skipped (the test builds the binary).
//! The Rust example is compiled as a doctest (`src/lib.rs`).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The first fenced block of `lang` after the heading `heading`.
fn block(readme: &str, heading: &str, lang: &str) -> String {
    let section = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading:?}"))..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).unwrap() + fence.len();
    let end = start + section[start..].find("```").unwrap();
    section[start..end].to_owned()
}

/// Runs a README block with bash (off the runtime thread, which also serves).
async fn run(script: &str, cwd: &Path, envs: &[(&str, String)]) -> String {
    let (script, cwd) = (script.to_owned(), cwd.to_owned());
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || run_blocking(&script, &cwd, &envs))
        .await
        .unwrap()
}

fn run_blocking(script: &str, cwd: &Path, envs: &[(String, String)]) -> String {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(cwd);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "README block failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

#[tokio::test]
async fn the_readme_examples_work_as_written() {
    let repo = repo();
    let setup = tokio::task::spawn_blocking({
        let repo = repo.clone();
        move || {
            Command::new(repo.join("scripts/python-env"))
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(setup.success(), "scripts/python-env");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let server = TestServer::start(Backend::sqlite()).await;
    let port = server.addr.port().to_string();

    // A work tree as the README assumes it: certs/dev/ca.pem, proto/,
    // platform/proto/, .venv/, target/release/ordersctl.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs/dev")).unwrap();
    std::fs::write(dir.path().join("certs/dev/ca.pem"), server.certs.ca()).unwrap();
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_ordersctl"),
        dir.path().join("target/release/ordersctl"),
    )
    .unwrap();
    std::os::unix::fs::symlink(repo.join("proto"), dir.path().join("proto")).unwrap();
    std::fs::create_dir_all(dir.path().join("platform")).unwrap();
    std::os::unix::fs::symlink(
        repo.join("platform/proto"),
        dir.path().join("platform/proto"),
    )
    .unwrap();
    std::os::unix::fs::symlink(repo.join(".venv"), dir.path().join(".venv")).unwrap();
    let path = format!(
        "{}:{}",
        repo.join(".venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let envs = [
        ("TOKEN", server.certs.token("alice", READ_WRITE)),
        ("STAFF", server.certs.token("staff-1", STAFF)),
        ("ORDERS_ENDPOINT", server.endpoint()),
        ("PATH", path),
    ];

    // ordersctl: every subcommand.
    let ordersctl: String = block(&readme, "### With `ordersctl`", "sh")
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .collect::<Vec<_>>()
        .join("\n");
    for sub in [
        "register", "get", "list", "update", "watch", "advance", "cancel", "track", "health",
    ] {
        assert!(
            ordersctl.contains(&format!("$ctl {sub}")) || ordersctl.contains(&format!(" {sub} ")),
            "README shows {sub}"
        );
    }
    let out = run(&ordersctl, dir.path(), &envs).await;
    assert!(
        out.contains("ORDER_STATUS_CANCELLED") && out.contains("SERVING"),
        "{out}"
    );

    // grpcurl.
    let grpcurl = block(&readme, "### With `grpcurl`", "sh")
        .replace("localhost:50051", &format!("localhost:{port}"));
    let out = run(&grpcurl, dir.path(), &envs).await;
    assert!(
        out.contains("orders.v1.OrderService")
            && out.contains("ORDER_STATUS_PENDING")
            && out.contains("SERVING"),
        "{out}"
    );

    // The admin port's probe and scrape, as an operator types them.
    let admin = block(&readme, "### Ports and probes", "sh").replace(
        "localhost:8081",
        &format!("localhost:{}", server.admin_addr.port()),
    );
    let out = run(&admin, dir.path(), &envs).await;
    assert!(
        out.contains("\"SERVING\"") && out.contains("grpc_server_handled_total"),
        "{out}"
    );

    // Python: generate the stubs as shown, then run the client as shown.
    run(
        &block(&readme, "### With Python `grpcio`", "sh"),
        dir.path(),
        &envs,
    )
    .await;
    let python = block(&readme, "### With Python `grpcio`", "python")
        .replace("localhost:50051", &format!("localhost:{port}"));
    std::fs::write(dir.path().join("example.py"), python).unwrap();
    let out = run(".venv/bin/python example.py", dir.path(), &envs).await;
    assert!(
        out.contains("ORDER_STATUS_CANCELLED") && out.contains("'items'"),
        "{out}"
    );
    server.stop().await;
}
