//! One error type for the handlers and its one mapping to `tonic::Status`
//! (CONTRACT.md section 2). Unexpected errors become an opaque INTERNAL; their
//! whole cause chain goes to the log, never to the client.

use crate::auth::AuthError;
use crate::domain::{OrderId, RuleError, Violations};
use crate::store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {0}")]
    Invalid(Violations),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Absent, or not the caller's: indistinguishable on purpose.
    #[error("order not found")]
    NotFound,
    #[error("request_id was already used for a different order")]
    RequestIdReused,
    #[error("{rule}")]
    Rule { order: OrderId, rule: RuleError },
    #[error("{0}")]
    OutOfRange(&'static str),
    #[error("{0}")]
    Exhausted(&'static str),
    /// The periodic check finds the database down: fail fast.
    #[error("database unavailable")]
    DatabaseDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Violations> for ServiceError {
    fn from(v: Violations) -> Self {
        ServiceError::Invalid(v)
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        match err {
            ServiceError::Invalid(v) => {
                let violations: Vec<FieldViolation> = v
                    .iter()
                    .map(|f| FieldViolation::new(f.field.clone(), f.description.clone()))
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {v}"),
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ServiceError::Auth(e) => e.into(),
            ServiceError::NotFound => Status::not_found("order not found"),
            ServiceError::RequestIdReused => {
                Status::already_exists("request_id was already used with a different payload")
            }
            ServiceError::Rule {
                rule: rule @ RuleError::VersionMismatch { .. },
                ..
            } => Status::aborted(rule.to_string()),
            ServiceError::Rule {
                order,
                rule: rule @ RuleError::Transition { .. },
            } => Status::with_error_details(
                Code::FailedPrecondition,
                rule.to_string(),
                ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(
                    "STATUS",
                    format!("orders/{order}"),
                    rule.to_string(),
                )]),
            ),
            ServiceError::OutOfRange(msg) => Status::out_of_range(msg),
            ServiceError::Exhausted(msg) => Status::resource_exhausted(msg),
            ServiceError::Store(StoreError::Conflict) => {
                Status::aborted("the order changed concurrently; read it and try again")
            }
            ServiceError::DatabaseDown => Status::unavailable("database unavailable; retry later"),
            ServiceError::Store(e) if e.is_transient() => {
                tracing::warn!(error = ?anyhow::Error::from(e), "database unavailable");
                Status::unavailable("database unavailable; retry later")
            }
            ServiceError::Store(e) => {
                tracing::error!(error = ?anyhow::Error::from(e), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
