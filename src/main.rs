//! `orders-server`: the orders service as a program of the platform's
//! (`grpc_platform::program`: `serve`, `check-config`, `dev-certs`,
//! `dev-token`). Everything else lives in the library, where tests reach it.

/// mimalloc rather than the system's (glibc) malloc: a call allocates and
/// frees dozens of small blocks (HTTP/2 frames, header maps, futures, the
/// protobuf messages) across the layers, and glibc's arenas spend a share of
/// each call's CPU on them (the allocator row of
/// `bench/results/breakdown.md`). `bench/results/choices.md` has the
/// measurement: CPU per call, and resident memory idle and under load, for
/// glibc, jemalloc, tcmalloc and mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    grpc_platform::program::main::<orders::startup::OrdersServer>()
}
