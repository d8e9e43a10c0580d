//! For a service's own integration tests (feature `test-support`): its
//! real server binary started as production runs it, with TLS, an issuer,
//! an audience and a JWKS file, on ports the system picks; tokens signed
//! with the key that JWKS publishes; health read on the admin port; a clean
//! stop on SIGTERM.
//!
//! ```ignore
//! let server = RunningServer::start(ServerUnderTest {
//!     binary: env!("CARGO_BIN_EXE_greeter-server").as_ref(),
//!     env_prefix: "GREETER",
//!     config_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/config").as_ref(),
//!     name: "greeter",
//! });
//! let token = server.token("alice", "greeter:use");
//! ```

use crate::dev::{CA_CERT, DevCerts, DevClaims, JWKS, SERVER_CERT, SERVER_KEY};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The issuer and audience a [`RunningServer`] trusts.
pub const ISSUER: &str = "https://login.test.example/";
pub const AUDIENCE: &str = "test-audience";

/// Which server to start, and how.
pub struct ServerUnderTest<'a> {
    /// The server's binary (`env!("CARGO_BIN_EXE_…")`).
    pub binary: &'a Path,
    /// Its environment prefix (`GREETER`).
    pub env_prefix: &'a str,
    /// Its `config/` folder.
    pub config_dir: &'a Path,
    /// The name on its development certificates.
    pub name: &'a str,
}

/// A server binary running with production settings; stopped when dropped.
pub struct RunningServer {
    child: Option<Child>,
    /// The gRPC port (TLS).
    pub addr: SocketAddr,
    /// The admin port (plaintext: health, reflection for health, `/metrics`).
    pub admin_addr: SocketAddr,
    certs: DevCerts,
    _dir: tempfile::TempDir,
}

impl RunningServer {
    /// Starts `server` with `{PREFIX}_ENV=production`, its certificate and
    /// a JWKS file from a development CA and key made for this run, and both
    /// ports on 127.0.0.1:0. `extra` adds `{PREFIX}__…` variables. Returns
    /// once both ports are bound; panics (the test fails) if the server
    /// does not start within 60 s.
    pub fn start(server: ServerUnderTest<'_>) -> Self {
        Self::start_with(server, &[])
    }

    /// As [`start`](Self::start), with more variables for the server.
    pub fn start_with(server: ServerUnderTest<'_>, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let certs = DevCerts::new(dir.path(), server.name);
        certs.generate().expect("development certificates");
        let prefix = server.env_prefix;
        let key = |k: &str| format!("{prefix}__{k}");
        let mut command = Command::new(server.binary);
        command
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(format!("{prefix}_ENV"), "production")
            .env(format!("{prefix}_CONFIG_DIR"), server.config_dir)
            .env(key("SERVER__ADDR"), "127.0.0.1:0")
            .env(key("ADMIN__ADDR"), "127.0.0.1:0")
            .env(key("TLS__CERT"), certs.path(SERVER_CERT))
            .env(key("TLS__KEY"), certs.path(SERVER_KEY))
            .env(key("AUTH__ISSUER"), ISSUER)
            .env(key("AUTH__AUDIENCE"), AUDIENCE)
            .env(key("AUTH__JWKS_FILE"), certs.path(JWKS))
            .env(key("TELEMETRY__LOG_FORMAT"), "json")
            .env(key("SHUTDOWN__DRAIN_SECS"), "0");
        for (k, v) in extra {
            command.env(key(k), v);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", server.binary.display()));
        // Both bound addresses are in the JSON log lines that say "serving";
        // the lines are echoed so a failing test shows them.
        let stdout = child.stdout.take().expect("piped stdout");
        let (found, addrs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("server: {line}");
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let message = entry["message"].as_str().unwrap_or_default();
                let addr = entry["addr"].as_str().and_then(|a| a.parse().ok());
                if let (true, Some(addr)) = (message.starts_with("serving"), addr) {
                    let _ = found.send((message.contains("(admin)"), addr));
                }
            }
        });
        let (mut addr, mut admin_addr) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while addr.is_none() || admin_addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match addrs.recv_timeout(left) {
                Ok((true, a)) => admin_addr = Some(a),
                Ok((false, a)) => addr = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "{} did not start (exit: {status:?}); its log is above",
                        server.binary.display()
                    );
                }
            }
        }
        Self {
            child: Some(child),
            addr: addr.expect("bound"),
            admin_addr: admin_addr.expect("bound"),
            certs,
            _dir: dir,
        }
    }

    /// The server process's resident memory now (`VmRSS`) and at its peak
    /// so far (`VmHWM`), in bytes, from `/proc` (Linux).
    pub fn memory(&self) -> (u64, u64) {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("the server's /proc status");
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("a number of kB");
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The CA certificate the server's certificate chains to (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.certs.path(CA_CERT)
    }

    /// `localhost:PORT`: the name the certificate carries, and the port.
    pub fn target(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// A token for `sub` with `scope`, valid for ten minutes, signed with
    /// the key the server's JWKS publishes.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        self.certs
            .token(&DevClaims::valid_for(sub, scope, ISSUER, AUDIENCE, 600))
            .expect("a signed token")
    }

    /// `grpcurl -cacert CA [flags] localhost:PORT [then]`: grpcurl from
    /// `python`'s environment, trusting the server's CA.
    pub fn grpcurl(&self, python: &Python, flags: &[&str], then: &[&str]) -> Command {
        let mut command = python.grpcurl();
        command
            .arg("-cacert")
            .arg(self.ca_file())
            .args(flags)
            .arg(self.target())
            .args(then);
        command
    }

    /// `curl` POSTing `body` to `path` on the gRPC port as `content_type`,
    /// with `token` as the bearer token (none when empty), over `http`
    /// (`--http1.1` or `--http2`), trusting the server's CA: how a browser's
    /// protocols (Connect, gRPC-Web) are tried by hand. Returns the body as
    /// sent, the HTTP status and the HTTP version (`2`, `1.1`). Needs curl
    /// (Debian package `curl`).
    pub fn curl(
        &self,
        token: &str,
        http: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (Vec<u8>, u16, String) {
        use std::io::Write;
        let mut command = Command::new("curl");
        command
            .args(["-sS", http, "--max-time", "20", "--cacert"])
            .arg(self.ca_file())
            .args(["-H", &format!("content-type: {content_type}")])
            .args([
                "--data-binary",
                "@-",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(format!("https://{}{path}", self.target()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !token.is_empty() {
            command.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        let mut child = command.spawn().expect("curl runs (Debian package curl)");
        child
            .stdin
            .take()
            .expect("curl's stdin")
            .write_all(body)
            .expect("the body reaches curl");
        let output = child.wait_with_output().expect("curl ends");
        assert!(output.status.success(), "curl {path}: {output:?}");
        let mut out = output.stdout;
        let at = out
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("curl's status line");
        let tail = String::from_utf8_lossy(&out[at + 1..]).into_owned();
        out.truncate(at);
        let (status, version) = tail.split_once(' ').expect("status and version");
        (
            out,
            status.parse().expect("an HTTP status"),
            version.to_owned(),
        )
    }

    /// The health status of `name` (`liveness`, `readiness`, a service's
    /// name) on the admin port, as its gRPC health service answers it.
    pub async fn health(&self, name: &str) -> Result<i32, tonic::Status> {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.admin_addr))
                .expect("an address")
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await?;
        Ok(reply.into_inner().status)
    }

    /// Sends SIGTERM and waits for the server to drain and exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("the server was running")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // std has no way to send SIGTERM; kill(1) is on every Unix.
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            let _ = child.kill();
        }
        child.wait().ok()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The workspace's Python environment (`.venv`, made by
/// `scripts/python-env`: grpcio, grpcio-tools, grpcurl) and the code
/// `grpc_tools.protoc` generates for a service's protos, in a temporary
/// folder, as the tutorials do it.
pub struct Python {
    workspace: PathBuf,
    generated: tempfile::TempDir,
}

impl Python {
    /// Makes or refreshes `.venv` under `workspace` (fails the test when it
    /// cannot).
    pub fn new(workspace: &Path) -> Self {
        let status = Command::new(workspace.join("scripts/python-env"))
            .status()
            .expect("scripts/python-env runs");
        assert!(status.success(), "scripts/python-env failed");
        Self {
            workspace: workspace.to_owned(),
            generated: tempfile::tempdir().expect("a temporary folder"),
        }
    }

    /// Generates Python code for `protos` (paths under `proto_root`) and
    /// for the platform's access option they import.
    pub fn generate(self, proto_root: &Path, protos: &[&str]) -> Self {
        let out = self.generated.path().display().to_string();
        let platform = Path::new(crate::PROTO_INCLUDE_DIR);
        let mut command = self.python();
        command
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto_root.display()))
            .arg(format!("-I{}", platform.display()))
            .arg(format!("--python_out={out}"))
            .arg(format!("--grpc_python_out={out}"))
            .arg(platform.join("grpc_platform/v1/access.proto"));
        for proto in protos {
            command.arg(proto_root.join(proto));
        }
        run(&mut command, true);
        self
    }

    /// `.venv/bin/python` with the generated code on its path.
    pub fn python(&self) -> Command {
        let mut command = Command::new(self.workspace.join(".venv/bin/python"));
        command.env("PYTHONPATH", self.generated.path());
        command
    }

    /// `.venv/bin/grpcurl`.
    pub fn grpcurl(&self) -> Command {
        Command::new(self.workspace.join(".venv/bin/grpcurl"))
    }
}

/// Runs `command` and returns what it printed; panics, showing both
/// streams, if its exit status is not `success` as expected.
pub fn run(command: &mut Command, success: bool) -> (String, String) {
    let output = command.output().expect("the command runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.success(),
        success,
        "{command:?} exited {}:\n{stdout}\n{stderr}",
        output.status
    );
    (stdout, stderr)
}
