//! Generated protobuf and gRPC code (the only place that includes it).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("orders.v1");
        include!(concat!(env!("OUT_DIR"), "/orders.v1.serde.rs"));
    }
}

pub use orders::v1::*;

/// The encoded descriptors of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("orders_descriptor");
