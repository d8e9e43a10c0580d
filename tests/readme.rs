//! The README's examples, run as a newcomer would type them, against a real
//! server: the `ordersctl` walk-through (every subcommand), grpcurl installed
//! and called as shown, the operator's probe and scrape, and the Python
//! client in the client tools' own virtual environment, generated, saved and
//! run as shown. The only changes: the server's port instead of 50051 (and
//! 8081), and the `cargo build` line skipped (the test builds the binary).
//! The client tools come from PyPI, as the README installs them. The Rust
//! example is compiled as a doctest (`src/lib.rs`).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The first fenced block of `lang` in the section under `heading`.
fn block(readme: &str, heading: &str, lang: &str) -> String {
    nth_block(readme, heading, lang, 0)
}

/// The section under `heading`: up to the next heading of its level or
/// above, outside fenced blocks (whose comments may start with `#`).
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading:?}"))
        + heading.len();
    let level = heading.chars().take_while(|&c| c == '#').count();
    let body = &readme[start..];
    let (mut offset, mut in_fence) = (0, false);
    for line in body.split_inclusive('\n') {
        in_fence ^= line.starts_with("```");
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !in_fence && (1..=level).contains(&hashes) && line[hashes..].starts_with(' ') {
            return &body[..offset];
        }
        offset += line.len();
    }
    body
}

/// The `n`th (from 0) fenced block of `lang` in the section under `heading`.
fn nth_block(readme: &str, heading: &str, lang: &str, n: usize) -> String {
    let fence = format!("```{lang}\n");
    let mut rest = section(readme, heading);
    for i in 0..=n {
        let start = rest
            .find(&fence)
            .unwrap_or_else(|| panic!("{heading:?} has no {lang} block number {}", i + 1))
            + fence.len();
        let end = start + rest[start..].find("```").unwrap();
        if i == n {
            return rest[start..end].to_owned();
        }
        rest = &rest[end + 3..];
    }
    unreachable!()
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
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let server = TestServer::start(Backend::sqlite()).await;
    let port = server.addr.port().to_string();

    // A work tree as the README assumes it: certs/dev/ca.pem, proto/,
    // platform/proto/, target/release/ordersctl. The client tools'
    // .venv-client/ is made by the README's own lines.
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
    // grpcurl as the README installs it (by its grpcurl block, which runs
    // before the operator's), on the PATH as the README puts it there.
    let path = format!(
        "{}:{}",
        dir.path().join(".venv-client/bin").display(),
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

    // curl, with Connect's JSON: an order registered, and an error as
    // Connect's JSON with its code.
    let curl = block(
        &readme,
        "### With `curl` (Connect JSON), or from a browser",
        "sh",
    )
    .replace("localhost:50051", &format!("localhost:{port}"));
    let out = run(&curl, dir.path(), &envs).await;
    assert!(
        out.contains(r#""status":"ORDER_STATUS_PENDING""#) && out.contains(r#""code":"not_found""#),
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

    // Python: generate the stubs as shown, save the client where the README
    // says, then run it with the README's command.
    let heading = "### With Python `grpcio`";
    run(&nth_block(&readme, heading, "sh", 0), dir.path(), &envs).await;
    let python =
        block(&readme, heading, "python").replace("localhost:50051", &format!("localhost:{port}"));
    let saved_as = "gen/client.py";
    assert!(
        section(&readme, heading).contains(&format!("Save this as `{saved_as}`")),
        "README says where to save the client"
    );
    std::fs::write(dir.path().join(saved_as), python).unwrap();
    let command = nth_block(&readme, heading, "sh", 1);
    assert!(command.contains(saved_as), "{command}");
    let out = run(&command, dir.path(), &envs).await;
    assert!(
        out.contains("ORDER_STATUS_CANCELLED") && out.contains("'items'"),
        "{out}"
    );
    server.stop().await;
}

/// The licence the package declares is the one the README names, and both
/// texts it offers are in the repository.
#[test]
fn the_declared_licences_are_the_readmes_and_their_texts_ship() {
    let repo = repo();
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("license = \"MIT OR Apache-2.0\""),
        "Cargo.toml declares MIT OR Apache-2.0"
    );
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let licence = section(&readme, "## License");
    for (file, opening) in [
        (
            "LICENSE-MIT",
            "Permission is hereby granted, free of charge",
        ),
        ("LICENSE-APACHE", "Apache License"),
    ] {
        assert!(
            licence.contains(file),
            "the README's License section names {file}"
        );
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        assert!(text.contains(opening), "{file} is the licence's text");
    }
}
