//! `orders-server`: parse arguments, load configuration, build, run.
//! Everything else lives in the library, where tests reach it.

use clap::{Parser, Subcommand};
use grpc_platform::dev::{DevCerts, DevClaims};
use grpc_platform::telemetry::CallTelemetry;
use orders::config::{EXIT_CONFIG, Environment, Settings, Sources};
use orders::startup::Application;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "orders-server", version, about = "The orders gRPC service")]
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
        /// Where to write them (default: dev.certs_dir, certs/dev).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print a development token signed with the dev signing key.
    DevToken {
        #[arg(long, default_value = "alice")]
        sub: String,
        #[arg(long, default_value = "orders:read orders:write")]
        scope: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Where the signing key is (default: dev.certs_dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&Sources::from_process(
        orders::config::ENV_PREFIX,
        cli.config.clone(),
    )) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orders-server: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            // The access the protos declare is part of what a start checks.
            if let Err(e) = orders::startup::method_table() {
                eprintln!("orders-server: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            println!("# environment: {}", settings.environment.as_str());
            print!("{}", settings.redacted_toml());
            ExitCode::SUCCESS
        }
        Command::DevCerts { dir } => {
            let certs = DevCerts::new(
                dir.unwrap_or(settings.dev.certs_dir.clone()),
                orders::startup::SERVICE_NAME,
            );
            match certs.generate() {
                Ok(()) => {
                    println!(
                        "wrote development certificates and signing key to {}",
                        certs.dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("orders-server: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DevToken {
            sub,
            scope,
            ttl,
            dir,
        } => {
            if settings.environment == Environment::Production {
                eprintln!("orders-server: dev-token is refused in production");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            let certs = DevCerts::new(
                dir.unwrap_or(settings.dev.certs_dir.clone()),
                orders::startup::SERVICE_NAME,
            );
            let now = chrono::Utc::now().timestamp();
            let claims = DevClaims {
                sub,
                scope,
                iss: settings.dev.token_issuer.clone(),
                aud: settings.dev.token_audience.clone(),
                iat: now,
                nbf: now,
                exp: now + ttl,
            };
            match certs.token(&claims) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("orders-server: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => serve(settings),
    }
}

fn serve(settings: Settings) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orders-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match grpc_platform::telemetry::init(
            &settings.telemetry,
            orders::startup::SERVICE_NAME,
        ) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("orders-server: telemetry.otlp_endpoint: {e:#}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let code = run(settings, telemetry.calls()).await;
        telemetry.shutdown().await;
        code
    })
}

async fn run(settings: Settings, telemetry: CallTelemetry) -> ExitCode {
    {
        let dev = settings.environment == Environment::Development;
        let app = match Application::build_with_telemetry(settings.clone(), telemetry).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "cannot start");
                // A method that declares no access (or a malformed policy)
                // is a configuration error: exit 78, as for settings.
                return ExitCode::from(grpc_platform::server::exit_code(&e));
            }
        };
        if dev {
            let addr = app.local_addr();
            tracing::info!(
                "development mode: list the services with `grpcurl -cacert {certs}/ca.pem localhost:{port} list`; get a token for calls with `cargo run --release --bin orders-server -- dev-token --sub alice` (see README)",
                certs = settings.dev.certs_dir.display(),
                port = addr.port()
            );
        }
        match app
            .run_until_stopped(grpc_platform::shutdown::signal())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "server failed");
                ExitCode::FAILURE
            }
        }
    }
}
