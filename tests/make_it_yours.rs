//! "Make it yours" (docs/make-it-yours.md), followed mechanically: `examples/greeter`
//! copied under a new name (`shop`) and a new proto package (`shop.v1`)
//! with its own scope and configuration prefix, as the member of a
//! workspace of its own; built; started as production runs it; called.
//! Every edit must find what it replaces, so a change to the greeter that
//! the steps no longer describe fails here.

use grpc_platform::test_support::{Python, RunningServer, ServerUnderTest};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies `from` into `to`, leaving out what builds and runs make.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["target", "certs", "gen", "__pycache__"].contains(&name.to_str().unwrap_or("")) {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&source, &dest);
        } else {
            std::fs::copy(&source, &dest).unwrap();
        }
    }
}

/// Replaces every `(old, new)` in the file at `path`; each `old` must occur.
fn edit(path: &Path, replacements: &[(&str, &str)]) {
    let mut text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (old, new) in replacements {
        assert!(
            text.contains(old),
            "{}: {old:?} is not there any more; update the steps in docs/make-it-yours.md and this test",
            path.display()
        );
        text = text.replace(old, new);
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_copy_of_the_greeter_under_a_new_name_builds_and_serves() {
    let workspace = tempfile::tempdir().unwrap();
    let shop = workspace.path().join("shop");

    // 1. Copy the greeter and make it a workspace member. Here the
    // workspace is a new one beside the platform, with this repository's
    // lock file so the same versions build offline.
    copy_tree(&repo().join("examples/greeter"), &shop);
    std::fs::write(
        workspace.path().join("Cargo.toml"),
        "[workspace]\nmembers = [\"shop\"]\nresolver = \"3\"\n",
    )
    .unwrap();
    std::fs::copy(
        repo().join("Cargo.lock"),
        workspace.path().join("Cargo.lock"),
    )
    .unwrap();
    let platform = repo().join("platform").display().to_string();
    edit(
        &shop.join("Cargo.toml"),
        &[
            ("name = \"greeter\"", "name = \"shop\""),
            ("name = \"greeter-server\"", "name = \"shop-server\""),
            ("\"../../platform\"", &format!("{platform:?}")),
        ],
    );

    // 2. The proto and its access policy: a package of its own, and the
    // scope its method needs.
    std::fs::create_dir_all(shop.join("proto/shop/v1")).unwrap();
    std::fs::rename(
        shop.join("proto/helloworld/helloworld.proto"),
        shop.join("proto/shop/v1/shop.proto"),
    )
    .unwrap();
    edit(
        &shop.join("proto/shop/v1/shop.proto"),
        &[
            ("package helloworld;", "package shop.v1;"),
            ("scopes: \"greeter:use\"", "scopes: \"shop:use\""),
        ],
    );
    edit(
        &shop.join("build.rs"),
        &[(
            "proto/helloworld/helloworld.proto",
            "proto/shop/v1/shop.proto",
        )],
    );

    // 3. The handlers, and what the platform needs to know: the program's
    // name, the service's short name, its configuration prefix and the
    // scope of its development tokens.
    edit(
        &shop.join("src/lib.rs"),
        &[
            (
                "include_proto!(\"helloworld\")",
                "include_proto!(\"shop.v1\")",
            ),
            (
                "format!(\"Hello, {name}!\")",
                "format!(\"Welcome to the shop, {name}!\")",
            ),
            ("pub struct GreeterServer;", "pub struct ShopServer;"),
            (
                "impl Service for GreeterServer",
                "impl Service for ShopServer",
            ),
            ("\"greeter-server\"", "\"shop-server\""),
            (
                "NAME: &'static str = \"greeter\"",
                "NAME: &'static str = \"shop\"",
            ),
            ("\"GREETER\"", "\"SHOP\""),
            (
                "DEV_SCOPE: &'static str = \"greeter:use\"",
                "DEV_SCOPE: &'static str = \"shop:use\"",
            ),
        ],
    );
    edit(
        &shop.join("src/main.rs"),
        &[("greeter::GreeterServer", "shop::ShopServer")],
    );
    for file in ["default.toml", "development.toml"] {
        edit(
            &shop.join("config").join(file),
            &[
                ("\"greeter-dev\"", "\"shop-dev\""),
                ("\"greeter\"", "\"shop\""),
            ],
        );
    }

    // 4. Build it. A target folder of its own, kept between runs: this
    // test's own build holds the lock on the workspace's.
    let target = repo().join("target/make-it-yours");
    let built = tokio::task::spawn_blocking({
        let root = workspace.path().to_owned();
        let target = target.clone();
        move || {
            Command::new(env!("CARGO"))
                .current_dir(root)
                .args(["build", "--offline", "--bin", "shop-server"])
                .env("CARGO_TARGET_DIR", target)
                .status()
        }
    })
    .await
    .unwrap()
    .expect("cargo runs");
    assert!(built.success(), "the copy builds");

    // 5. Start it as production runs it, and call it.
    // Reflection, off in production, on: grpcurl lists and calls it.
    let server = RunningServer::start_with(
        ServerUnderTest {
            binary: &target.join("debug/shop-server"),
            env_prefix: "SHOP",
            config_dir: &shop.join("config"),
            name: "shop",
        },
        &[("SERVER__REFLECTION", "true")],
    );
    let python = Python::new(&repo());
    // grpcurl [-H token] [-d data] TARGET what
    let grpcurl = |token: Option<String>, data: Option<&str>, what: &str| {
        let header = token.map(|token| format!("authorization: Bearer {token}"));
        let mut flags = Vec::new();
        if let Some(header) = &header {
            flags.extend(["-H", header.as_str()]);
        }
        if let Some(data) = data {
            flags.extend(["-d", data]);
        }
        server
            .grpcurl(&python, &flags, &[what])
            .output()
            .expect("grpcurl runs")
    };
    let listed = grpcurl(None, None, "list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().any(|l| l == "shop.v1.Greeter"), "{listed}");

    let hello = |token| grpcurl(token, Some(r#"{"name":"Ada"}"#), "shop.v1.Greeter/SayHello");
    let answered = hello(Some(server.token("ada", "shop:use")));
    let text = String::from_utf8_lossy(&answered.stdout);
    assert!(answered.status.success(), "{answered:?}");
    assert!(text.contains("Welcome to the shop, Ada!"), "{text}");

    let refused = hello(None);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{refused:?}"
    );
    let denied = hello(Some(server.token("ada", "greeter:use")));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"),
        "{denied:?}"
    );
    assert_eq!(server.health("readiness").await.unwrap(), 1, "SERVING");
    assert!(server.stop().success());
}
