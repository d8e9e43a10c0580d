//! The tutorials' Calculator as a service of the platform's: a square root
//! anyone may ask for, and a sum that needs the `calculator:use` scope, as
//! `proto/calculator/calculator.proto` declares.

use grpc_platform::config::{NoSections, Settings};
use grpc_platform::program::Service;
use grpc_platform::server::ServerBuilder;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub mod pb {
    tonic::include_proto!("calculator");
    /// Every message and method, with the access each method declares.
    pub const FILE_DESCRIPTOR_SET: &[u8] = grpc_platform::descriptor_set!();
}

use pb::calculator_server::{Calculator, CalculatorServer as CalculatorService};
use pb::{Number, NumberPair};

/// INVALID_ARGUMENT, with a `BadRequest` naming `field`.
fn invalid(field: &str, problem: &str) -> Status {
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field} {problem}"),
        ErrorDetails::with_bad_request_violation(field, problem),
    )
}

/// `value`, or INVALID_ARGUMENT naming `field` when it is NaN or infinite:
/// no answer computed from one means anything.
fn finite(field: &str, value: f64) -> Result<f64, Status> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(invalid(field, "must be a finite number"))
    }
}

/// The handlers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Arithmetic;

#[tonic::async_trait]
impl Calculator for Arithmetic {
    async fn square_root(&self, request: Request<Number>) -> Result<Response<Number>, Status> {
        let value = finite("value", request.into_inner().value)?;
        if value < 0.0 {
            return Err(invalid("value", "must not be negative"));
        }
        Ok(Response::new(Number {
            value: value.sqrt(),
        }))
    }

    async fn add(&self, request: Request<NumberPair>) -> Result<Response<Number>, Status> {
        let pair = request.into_inner();
        let value = finite("first", pair.first)? + finite("second", pair.second)?;
        // Two finite numbers can still add up past the largest double.
        if !value.is_finite() {
            return Err(Status::out_of_range(
                "the sum is beyond the range of a double",
            ));
        }
        Ok(Response::new(Number { value }))
    }
}

/// The Calculator as a program: `calculator-server`.
pub struct CalculatorServer;

impl Service for CalculatorServer {
    const PROGRAM: &'static str = "calculator-server";
    const ABOUT: &'static str = "The tutorials' Calculator, over TLS with tokens";
    const NAME: &'static str = "calculator";
    const ENV_PREFIX: &'static str = "CALCULATOR";
    const DEV_SCOPE: &'static str = "calculator:use";
    const SERVICES: &'static [(&'static str, &'static [u8])] = &[(
        <CalculatorService<Arithmetic> as NamedService>::NAME,
        pb::FILE_DESCRIPTOR_SET,
    )];
    type Sections = NoSections;

    async fn mount(
        settings: Settings<NoSections>,
        server: ServerBuilder,
    ) -> anyhow::Result<ServerBuilder> {
        let max = settings.server.max_message_bytes;
        let calculator = CalculatorService::new(Arithmetic)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        // Nothing to be ready for beyond the process itself: readiness
        // follows start-up and draining.
        Ok(server.mount(calculator, pb::FILE_DESCRIPTOR_SET)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqrt(value: f64) -> Result<f64, Status> {
        let reply = Arithmetic
            .square_root(Request::new(Number { value }))
            .await?;
        Ok(reply.into_inner().value)
    }

    async fn add(first: f64, second: f64) -> Result<f64, Status> {
        let reply = Arithmetic
            .add(Request::new(NumberPair { first, second }))
            .await?;
        Ok(reply.into_inner().value)
    }

    fn field_of(status: &Status) -> String {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("a BadRequest");
        bad_request.field_violations[0].field.clone()
    }

    #[tokio::test]
    async fn square_roots_of_non_negative_numbers() {
        assert_eq!(sqrt(16.0).await.unwrap(), 4.0);
        assert_eq!(sqrt(0.0).await.unwrap(), 0.0);
        assert_eq!(sqrt(2.25).await.unwrap(), 1.5);
    }

    #[tokio::test]
    async fn a_negative_or_non_finite_value_is_invalid_naming_it() {
        for value in [-1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(field_of(&sqrt(value).await.unwrap_err()), "value");
        }
    }

    #[tokio::test]
    async fn sums_and_what_cannot_be_summed() {
        assert_eq!(add(2.5, -1.0).await.unwrap(), 1.5);
        assert_eq!(field_of(&add(f64::NAN, 1.0).await.unwrap_err()), "first");
        assert_eq!(
            field_of(&add(1.0, f64::NEG_INFINITY).await.unwrap_err()),
            "second"
        );
        let overflow = add(f64::MAX, f64::MAX).await.unwrap_err();
        assert_eq!(overflow.code(), tonic::Code::OutOfRange);
    }
}
