//! One error type for the handlers and its one mapping to `tonic::Status`
//! (docs/reference.md "Errors"). Every status carries a `google.rpc.ErrorInfo`
//! (a stable UPPER_SNAKE_CASE reason, the service's gRPC name as domain, as
//! the layers name theirs from the call's path) and the detail that fits its
//! code: `BadRequest`, `ResourceInfo`, `PreconditionFailure`, `RetryInfo`.
//! Unexpected errors become an opaque INTERNAL; their whole cause chain goes
//! to the log, never to the client.

use crate::domain::{OrderId, RuleError, Violations};
use crate::store::StoreError;
use grpc_platform::auth::AuthError;
use std::collections::HashMap;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

/// The `ErrorInfo.domain` of the service's errors.
pub const DOMAIN: &str = crate::pb::order_service_server::SERVICE_NAME;

/// `ResourceInfo.resource_type` of an order: the type URL of its message.
pub const ORDER_RESOURCE_TYPE: &str = "type.googleapis.com/orders.v1.Order";

/// Most characters of a client's order id echoed back in a NOT_FOUND (ids
/// the service makes have 36): the id is the client's, of any length.
pub const MAX_ECHOED_ID_CHARS: usize = 64;

/// How long a client should wait before retrying while the database is
/// down: long enough for the periodic database check to have run again.
pub const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {0}")]
    Invalid(Violations),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Absent, or not the caller's: indistinguishable on purpose. Holds the
    /// id as the caller sent it, cut to `MAX_ECHOED_ID_CHARS`.
    #[error("order not found")]
    NotFound { order_id: String },
    #[error("request_id was already used for a different order")]
    RequestIdReused,
    #[error("{rule}")]
    Rule { order: OrderId, rule: RuleError },
    #[error("{0}")]
    OutOfRange(&'static str),
    /// A per-stream limit (updates in one UpdateOrder, orders followed by
    /// one TrackOrders): the same stream would be refused again.
    #[error("{0}")]
    Exhausted(&'static str),
    /// The periodic check finds the database down: fail fast.
    #[error("database unavailable")]
    DatabaseDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// NOT_FOUND for the order the caller named `raw_id` (absent, not
    /// theirs, or no order id at all).
    pub fn not_found(raw_id: &str) -> Self {
        let order_id = match raw_id.char_indices().nth(MAX_ECHOED_ID_CHARS) {
            None => raw_id.to_owned(),
            Some((cut, _)) => format!("{}…", &raw_id[..cut]),
        };
        ServiceError::NotFound { order_id }
    }
}

impl From<Violations> for ServiceError {
    fn from(v: Violations) -> Self {
        ServiceError::Invalid(v)
    }
}

/// `ErrorDetails` with an `ErrorInfo` of the service's domain.
fn info(reason: &str, metadata: &[(&str, String)]) -> ErrorDetails {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    ErrorDetails::with_error_info(reason, DOMAIN, metadata)
}

fn database_unavailable() -> Status {
    let mut details = info("DATABASE_UNAVAILABLE", &[]);
    details.set_retry_info(Some(DATABASE_RETRY_DELAY));
    Status::with_error_details(
        Code::Unavailable,
        "database unavailable; retry later",
        details,
    )
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        match err {
            ServiceError::Invalid(v) => {
                let violations: Vec<FieldViolation> = v
                    .iter()
                    .map(|f| FieldViolation::new(f.field.clone(), f.description.clone()))
                    .collect();
                let mut details = info("INVALID_REQUEST", &[]);
                details.set_bad_request(violations);
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {v}"),
                    details,
                )
            }
            ServiceError::Auth(e) => e.status(DOMAIN),
            ServiceError::NotFound { order_id } => {
                // The same whether the order is absent or another
                // customer's: no owner, no hint.
                let mut details = info("ORDER_NOT_FOUND", &[]);
                details.set_resource_info(
                    ORDER_RESOURCE_TYPE,
                    order_id,
                    "",
                    "no order with this id is visible to the caller",
                );
                Status::with_error_details(Code::NotFound, "order not found", details)
            }
            ServiceError::RequestIdReused => Status::with_error_details(
                Code::AlreadyExists,
                "request_id was already used with a different payload",
                info("REQUEST_ID_REUSED", &[]),
            ),
            ServiceError::Rule {
                order,
                rule: rule @ RuleError::VersionMismatch { expected, actual },
            } => {
                let mut details = info(
                    "VERSION_MISMATCH",
                    &[
                        ("expected_version", expected.to_string()),
                        ("current_version", actual.to_string()),
                    ],
                );
                details.set_precondition_failure(vec![PreconditionViolation::new(
                    "VERSION",
                    format!("orders/{order}"),
                    rule.to_string(),
                )]);
                Status::with_error_details(Code::Aborted, rule.to_string(), details)
            }
            ServiceError::Rule {
                order,
                rule: rule @ RuleError::Transition { action, status },
            } => {
                let mut details = info(
                    "STATUS_FORBIDS_ACTION",
                    &[
                        ("status", format!("ORDER_STATUS_{status}")),
                        ("action", action.to_owned()),
                    ],
                );
                details.set_precondition_failure(vec![PreconditionViolation::new(
                    "STATUS",
                    format!("orders/{order}"),
                    rule.to_string(),
                )]);
                Status::with_error_details(Code::FailedPrecondition, rule.to_string(), details)
            }
            ServiceError::OutOfRange(msg) => {
                Status::with_error_details(Code::OutOfRange, msg, info("OUT_OF_RANGE", &[]))
            }
            ServiceError::Exhausted(msg) => Status::with_error_details(
                Code::ResourceExhausted,
                msg,
                info("PER_STREAM_LIMIT", &[]),
            ),
            ServiceError::Store(StoreError::Conflict) => {
                let message = "the order changed concurrently; read it and try again";
                let mut details = info("CONCURRENT_CHANGE", &[]);
                details.set_precondition_failure(vec![PreconditionViolation::new(
                    "VERSION", "", message,
                )]);
                Status::with_error_details(Code::Aborted, message, details)
            }
            ServiceError::DatabaseDown => database_unavailable(),
            // The call had ended (the client left, or its deadline passed)
            // before its change was committed; nobody waits for this answer.
            ServiceError::Store(StoreError::Abandoned) => Status::with_error_details(
                Code::Cancelled,
                "the call ended before its change was committed",
                info("CALL_ABANDONED", &[]),
            ),
            ServiceError::Store(e) if e.is_transient() => {
                tracing::warn!(error = ?anyhow::Error::from(e), "database unavailable");
                database_unavailable()
            }
            ServiceError::Store(e) => {
                tracing::error!(error = ?anyhow::Error::from(e), "internal error");
                Status::with_error_details(Code::Internal, "internal error", info("INTERNAL", &[]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status as OrderStatus;

    fn details(err: ServiceError) -> (Status, ErrorDetails) {
        let status = Status::from(err);
        let details = status.get_error_details();
        let info = details.error_info().expect("every error has an ErrorInfo");
        assert_eq!(info.domain, "orders.v1.OrderService");
        assert!(
            !info.reason.is_empty()
                && info
                    .reason
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{:?} is UPPER_SNAKE_CASE",
            info.reason
        );
        (status, details)
    }

    fn order() -> OrderId {
        OrderId::parse("0190c6c4-58b4-7c3a-9a43-9d1f3f5ab0c1").unwrap()
    }

    #[test]
    fn not_found_names_the_id_as_sent_and_nothing_about_the_order() {
        let (status, d) = details(ServiceError::not_found("0190c6c4-58b4-7c3a"));
        assert_eq!(status.code(), Code::NotFound);
        let resource = d.resource_info().expect("ResourceInfo");
        assert_eq!(resource.resource_type, ORDER_RESOURCE_TYPE);
        assert_eq!(resource.resource_name, "0190c6c4-58b4-7c3a");
        assert_eq!(resource.owner, "");
        assert_eq!(d.error_info().unwrap().reason, "ORDER_NOT_FOUND");
    }

    #[test]
    fn a_huge_id_is_not_echoed_whole() {
        let huge = "é".repeat(10_000);
        let (status, d) = details(ServiceError::not_found(&huge));
        let name = &d.resource_info().unwrap().resource_name;
        assert_eq!(name.chars().count(), MAX_ECHOED_ID_CHARS + 1);
        assert!(name.ends_with('…'));
        assert!(status.details().len() < 1024, "details stay small");
        let exact = "x".repeat(MAX_ECHOED_ID_CHARS);
        let (_, d) = details(ServiceError::not_found(&exact));
        assert_eq!(d.resource_info().unwrap().resource_name, exact);
    }

    #[test]
    fn aborted_carries_a_precondition_failure_and_the_versions() {
        let (status, d) = details(ServiceError::Rule {
            order: order(),
            rule: RuleError::VersionMismatch {
                expected: 2,
                actual: 3,
            },
        });
        assert_eq!(status.code(), Code::Aborted);
        let info = d.error_info().unwrap();
        assert_eq!(info.reason, "VERSION_MISMATCH");
        assert_eq!(info.metadata["expected_version"], "2");
        assert_eq!(info.metadata["current_version"], "3");
        let failure = d.precondition_failure().expect("PreconditionFailure");
        assert_eq!(failure.violations[0].r#type, "VERSION");
        assert_eq!(failure.violations[0].subject, format!("orders/{}", order()));

        let (status, d) = details(ServiceError::Store(StoreError::Conflict));
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(d.error_info().unwrap().reason, "CONCURRENT_CHANGE");
        assert!(d.precondition_failure().is_some());
    }

    #[test]
    fn failed_precondition_names_the_status_that_forbids_the_action() {
        let (status, d) = details(ServiceError::Rule {
            order: order(),
            rule: RuleError::Transition {
                action: "cancel",
                status: OrderStatus::Shipped,
            },
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = d.error_info().unwrap();
        assert_eq!(info.reason, "STATUS_FORBIDS_ACTION");
        assert_eq!(info.metadata["status"], "ORDER_STATUS_SHIPPED");
        assert_eq!(
            d.precondition_failure().unwrap().violations[0].r#type,
            "STATUS"
        );
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let (status, d) = details(ServiceError::DatabaseDown);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(d.error_info().unwrap().reason, "DATABASE_UNAVAILABLE");
        assert_eq!(
            d.retry_info().unwrap().retry_delay,
            Some(DATABASE_RETRY_DELAY)
        );
        let (status, d) = details(ServiceError::Store(StoreError::Unavailable(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(d.retry_info().is_some());
    }

    #[test]
    fn internal_is_opaque_but_has_error_info() {
        let (status, d) = details(ServiceError::Store(StoreError::Database(
            sqlx::Error::Protocol("relation \"orders\" does not exist".into()),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert_eq!(d.error_info().unwrap().reason, "INTERNAL");
        assert!(d.error_info().unwrap().metadata.is_empty());
        assert!(
            !String::from_utf8_lossy(status.details()).contains("relation"),
            "no cause in the details"
        );
    }

    #[test]
    fn the_other_codes_have_error_info_and_their_detail() {
        let mut v = Violations::default();
        v.add("items", "at least one item");
        let (status, d) = details(ServiceError::Invalid(v));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(d.bad_request().unwrap().field_violations[0].field, "items");
        let (status, _) = details(ServiceError::RequestIdReused);
        assert_eq!(status.code(), Code::AlreadyExists);
        let (status, _) = details(ServiceError::OutOfRange("after_version is ahead"));
        assert_eq!(status.code(), Code::OutOfRange);
        let (status, d) = details(ServiceError::Exhausted("too many"));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(d.retry_info().is_none(), "the same stream fails again");
    }
}
