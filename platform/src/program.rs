//! A service's program: the command line every service's server binary
//! shares, so that its `main` is one line.
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     grpc_platform::program::main::<MyService>()
//! }
//! ```
//!
//! The subcommands:
//! - `serve` (the default): settings → the platform's server with the
//!   service mounted → serve until SIGTERM or Ctrl-C, then drain and stop.
//! - `check-config`: print the effective configuration (secrets redacted)
//!   and exit 0, or exit 78 with every problem, each naming its key. The
//!   access every mounted method declares in the proto is checked too.
//! - `dev-certs`: write a development CA, server certificate and
//!   token-signing key.
//! - `dev-token`: print a token signed with the development key (refused in
//!   production).
//!
//! `--config FILE` layers a file over `config/`, before environment
//! variables (`crate::config`).

use crate::config::{EXIT_CONFIG, Environment, ServiceSettings, Settings, Sources};
use crate::dev::{DevCerts, DevClaims};
use crate::methods::{MethodTable, PolicyError};
use crate::server::{Server, ServerBuilder, platform_methods};
use crate::telemetry::CallTelemetry;
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// What a service gives the platform to become a program.
pub trait Service: 'static {
    /// The program's name (`greeter-server`): its usage line and messages.
    const PROGRAM: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// The service's short name: the prefix of its metrics, the name of its
    /// traces and the name on its development certificates.
    const NAME: &'static str;
    /// The prefix of its environment variables: `GREETER` reads
    /// `GREETER_ENV`, `GREETER_CONFIG_DIR` and `GREETER__SECTION__KEY`.
    const ENV_PREFIX: &'static str;
    /// The scopes `dev-token` grants when none are asked for.
    const DEV_SCOPE: &'static str;
    /// Every gRPC service [`mount`](Self::mount) mounts: its name
    /// (`NamedService::NAME`) and its encoded file descriptor set.
    /// `check-config` checks the access their methods declare, and a start
    /// whose mounts differ from this list fails.
    const SERVICES: &'static [(&'static str, &'static [u8])];

    /// The service's own configuration sections
    /// ([`NoSections`](crate::config::NoSections) for none).
    type Sections: ServiceSettings + Clone + Debug + Send + Sync + 'static;

    /// Mounts the service on `server` (`ServerBuilder::mount`), with its
    /// readiness check and its metrics if it has them. Whatever can fail
    /// here (a database that cannot be reached, say) stops the start.
    fn mount(
        settings: Settings<Self::Sections>,
        server: ServerBuilder,
    ) -> impl Future<Output = anyhow::Result<ServerBuilder>> + Send;
}

/// The method table a start of `S` enforces: the platform's services and
/// every one `S` lists, with its declared access. An undecided method is a
/// [`PolicyError`].
pub fn method_table<S: Service>(reflection: bool) -> Result<MethodTable, PolicyError> {
    let mut methods = platform_methods(reflection);
    for (name, descriptors) in S::SERVICES {
        methods.mount(name, descriptors)?;
    }
    Ok(methods)
}

/// The server of `S`, built and bound (both ports; port 0 works), not yet
/// serving: `Server::run_until_stopped` serves it. Tests start servers
/// this way, in process.
pub async fn build<S: Service>(
    settings: Settings<S::Sections>,
    telemetry: CallTelemetry,
) -> anyhow::Result<Server> {
    let server = ServerBuilder::new(settings.platform.clone(), S::NAME)
        .await?
        .telemetry(telemetry);
    let server = S::mount(settings, server).await?.bind().await?;
    // What `check-config` checked must be what is served.
    let platform = platform_methods(true);
    let platform: Vec<&str> = platform.services().collect();
    let mut mounted: Vec<&str> = server
        .methods()
        .services()
        .filter(|name| !platform.contains(name))
        .collect();
    let mut listed: Vec<&str> = S::SERVICES.iter().map(|(name, _)| *name).collect();
    mounted.sort_unstable();
    listed.sort_unstable();
    anyhow::ensure!(
        mounted == listed,
        "{}: mounted {mounted:?}, but Service::SERVICES lists {listed:?}",
        S::PROGRAM
    );
    Ok(server)
}

#[derive(Parser)]
struct Cli {
    /// A configuration file layered over config/ (before environment variables).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Print the effective configuration (secrets redacted) and exit 0, or 78 with the reasons.
    CheckConfig,
    /// Write a development CA, server certificate and token-signing key.
    DevCerts {
        /// Where to write them (default: dev.certs_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print a development token signed with the development signing key.
    DevToken {
        #[arg(long, default_value = "alice")]
        sub: String,
        /// Space-separated scopes (default: the service's own).
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Where the signing key is (default: dev.certs_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs `S`'s program with the process's arguments.
pub fn main<S: Service>() -> ExitCode {
    run::<S>(std::env::args_os())
}

/// Runs `S`'s program with `args` (the first is the program's name).
pub fn run<S: Service>(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let command = Cli::command()
        .name(S::PROGRAM)
        .about(S::ABOUT)
        .version(env!("CARGO_PKG_VERSION"));
    let cli = match Cli::from_arg_matches(&command.get_matches_from(args)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let failed = |e: &dyn std::fmt::Display, code: u8| {
        eprintln!("{}: {e}", S::PROGRAM);
        ExitCode::from(code)
    };
    let sources = Sources::from_process(S::ENV_PREFIX, cli.config.clone());
    let settings = match Settings::<S::Sections>::load(S::ENV_PREFIX, &sources) {
        Ok(settings) => settings,
        Err(e) => return failed(&e, EXIT_CONFIG as u8),
    };
    let certs = |dir: Option<PathBuf>| {
        DevCerts::new(
            dir.unwrap_or_else(|| settings.dev.certs_dir.clone()),
            S::NAME,
        )
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::<S>(settings),
        Command::CheckConfig => {
            if let Err(e) = method_table::<S>(settings.server.reflection) {
                return failed(&e, EXIT_CONFIG as u8);
            }
            println!("# environment: {}", settings.environment.as_str());
            print!("{}", settings.redacted_toml());
            ExitCode::SUCCESS
        }
        Command::DevCerts { dir } => {
            let certs = certs(dir);
            match certs.generate() {
                Ok(()) => {
                    println!(
                        "wrote development certificates and signing key to {}",
                        certs.dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => failed(&format!("{e:#}"), 1),
            }
        }
        Command::DevToken {
            sub,
            scope,
            ttl,
            dir,
        } => {
            if settings.environment == Environment::Production {
                return failed(&"dev-token is refused in production", EXIT_CONFIG as u8);
            }
            let claims = DevClaims::valid_for(
                &sub,
                scope.as_deref().unwrap_or(S::DEV_SCOPE),
                &settings.dev.token_issuer,
                &settings.dev.token_audience,
                ttl,
            );
            match certs(dir).token(&claims) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => failed(&format!("{e:#}"), 1),
            }
        }
    }
}

fn serve<S: Service>(settings: Settings<S::Sections>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{}: cannot start the runtime: {e}", S::PROGRAM);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match crate::telemetry::init(&settings.telemetry, S::NAME) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("{}: telemetry.otlp_endpoint: {e:#}", S::PROGRAM);
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let code = serve_until_stopped::<S>(settings, telemetry.calls()).await;
        telemetry.shutdown().await;
        code
    })
}

async fn serve_until_stopped<S: Service>(
    settings: Settings<S::Sections>,
    telemetry: CallTelemetry,
) -> ExitCode {
    let development = settings.environment == Environment::Development;
    let certs_dir = settings.dev.certs_dir.clone();
    let server = match build::<S>(settings, telemetry)
        .await
        .context("cannot start")
    {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start");
            // A method that declares no access (or a malformed policy) is a
            // configuration error: exit 78, as for settings.
            return ExitCode::from(crate::server::exit_code(&e));
        }
    };
    if development {
        tracing::info!(
            "development mode: list the services with `grpcurl -cacert {certs}/ca.pem localhost:{port} list`; get a token for calls with `cargo run --release --bin {program} -- dev-token`",
            certs = certs_dir.display(),
            port = server.local_addr().port(),
            program = S::PROGRAM,
        );
    }
    match server.run_until_stopped(crate::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}
