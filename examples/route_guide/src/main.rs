//! `route-guide-server`: settings → the platform's server with the
//! RouteGuide → serve until SIGTERM or Ctrl-C (`grpc_platform::program`).

fn main() -> std::process::ExitCode {
    grpc_platform::program::main::<route_guide::RouteGuideServer>()
}
