//! The service's code and the descriptor set the platform reads each
//! method's kind and access from (`grpc_platform::build`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    grpc_platform::build::compile_protos(&["proto/routeguide/route_guide.proto"])
}
