//! `orders-server`: the orders service as a program of the platform's
//! (`grpc_platform::program`: `serve`, `check-config`, `dev-certs`,
//! `dev-token`). Everything else lives in the library, where tests reach it.

fn main() -> std::process::ExitCode {
    grpc_platform::program::main::<orders::startup::OrdersServer>()
}
