//! `greeter-server`: settings → the platform's server with the Greeter →
//! serve until SIGTERM or Ctrl-C (`grpc_platform::program`).

fn main() -> std::process::ExitCode {
    grpc_platform::program::main::<greeter::GreeterServer>()
}
