//! gRPC's helloworld Greeter as a service of the platform's. What is the
//! service's is here: its handler, and what the platform needs to know to
//! run it ([`GreeterServer`]). Who may call `SayHello` is declared in
//! `proto/helloworld/helloworld.proto`.

use grpc_platform::config::{NoSections, Settings};
use grpc_platform::program::Service;
use grpc_platform::server::ServerBuilder;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub mod pb {
    tonic::include_proto!("helloworld");
    /// Every message and method, with the access each method declares.
    pub const FILE_DESCRIPTOR_SET: &[u8] = grpc_platform::descriptor_set!();
}

use pb::greeter_server::{Greeter, GreeterServer as GreeterService};
use pb::{HelloReply, HelloRequest};

/// Names longer than this are refused: a greeting is no place for a book.
pub const MAX_NAME_CHARS: usize = 200;

/// The handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Greetings;

#[tonic::async_trait]
impl Greeter for Greetings {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        let problem = if name.trim().is_empty() {
            Some("must not be empty".to_owned())
        } else if name.chars().count() > MAX_NAME_CHARS {
            Some(format!("must be at most {MAX_NAME_CHARS} characters"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!("name {problem}"),
                ErrorDetails::with_bad_request_violation("name", &problem),
            ));
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello, {name}!"),
        }))
    }
}

/// The Greeter as a program: `greeter-server`.
pub struct GreeterServer;

impl Service for GreeterServer {
    const PROGRAM: &'static str = "greeter-server";
    const ABOUT: &'static str = "gRPC's helloworld Greeter, over TLS with tokens";
    const NAME: &'static str = "greeter";
    const ENV_PREFIX: &'static str = "GREETER";
    const DEV_SCOPE: &'static str = "greeter:use";
    const SERVICES: &'static [(&'static str, &'static [u8])] = &[(
        <GreeterService<Greetings> as NamedService>::NAME,
        pb::FILE_DESCRIPTOR_SET,
    )];
    type Sections = NoSections;

    async fn mount(
        settings: Settings<NoSections>,
        server: ServerBuilder,
    ) -> anyhow::Result<ServerBuilder> {
        let max = settings.server.max_message_bytes;
        let greeter = GreeterService::new(Greetings)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        // Nothing to be ready for beyond the process itself: readiness
        // follows start-up and draining.
        Ok(server.mount(greeter, pb::FILE_DESCRIPTOR_SET)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hello(name: &str) -> Result<String, Status> {
        let reply = Greetings
            .say_hello(Request::new(HelloRequest { name: name.into() }))
            .await?;
        Ok(reply.into_inner().message)
    }

    #[tokio::test]
    async fn greets_by_name() {
        assert_eq!(hello("world").await.unwrap(), "Hello, world!");
    }

    #[tokio::test]
    async fn an_empty_or_overlong_name_is_invalid_naming_the_field() {
        for name in ["", "   ", &"x".repeat(MAX_NAME_CHARS + 1)] {
            let status = hello(name).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let details = status.get_error_details();
            let violation = &details.bad_request().expect("BadRequest").field_violations[0];
            assert_eq!(violation.field, "name");
        }
    }
}
