//! # grpc-platform
//!
//! The secure gRPC stack a service is built on. It knows no service: a
//! service is mounted with its encoded file descriptor set, and everything
//! the stack needs to know about its methods (how each streams, who may call
//! it) is read from there when the server starts.
//!
//! - [`methods`]: the method table. Authorization is declared in the proto
//!   with the `grpc_platform.v1.access` method option
//!   ([`PROTO_INCLUDE_DIR`]) and closed by default: a mounted method that
//!   declares no policy stops the start, and a path nobody mounted needs a
//!   valid token like any other call.
#![forbid(unsafe_code)]

pub mod methods;

/// The folder holding `grpc_platform/v1/access.proto`: a service's build
/// script passes it to protoc as an include path, beside its own protos.
pub const PROTO_INCLUDE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
