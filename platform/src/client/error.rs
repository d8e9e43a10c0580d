//! A client's error: the gRPC status, with the rich details read out.

use tonic::Code;
use tonic_types::StatusExt;

/// A failed call, or a client that could not be set up.
///
/// Every variant has a gRPC [`code`](Error::code); a status the server
/// answered also carries its rich details ([`violations`](Error::violations),
/// [`reason`](Error::reason)). A deadline that passed reads as
/// DEADLINE_EXCEEDED, whether the server or the client noticed it.
///
/// ```
/// use grpc_platform::client::Error;
/// let err = Error::from(tonic::Status::not_found("thing not found"));
/// assert!(matches!(err, Error::Status(_)));
/// assert_eq!(err.code(), tonic::Code::NotFound);
/// assert!(err.to_string().ends_with("thing not found"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or the transport) answered with this status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The endpoint could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The client was configured wrongly.
    #[error("{0}")]
    Config(String),
    /// The server answered something the contract does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<tonic::Status> for Error {
    /// Tonic's client enforces `grpc-timeout` too, and reports its own expiry
    /// as CANCELLED ("Timeout expired"); whichever side saw the deadline pass,
    /// callers get DEADLINE_EXCEEDED, as gRPC specifies.
    ///
    /// ```
    /// use grpc_platform::client::Error;
    /// let expired = tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string());
    /// assert_eq!(Error::from(expired).code(), tonic::Code::DeadlineExceeded);
    /// ```
    fn from(status: tonic::Status) -> Self {
        // Tonic builds that status from `TimeoutExpired` without a source,
        // so its message (the error's Display) is what identifies it.
        let expired = tonic::TimeoutExpired(()).to_string();
        let timed_out = status.code() == tonic::Code::Cancelled && {
            let mut source = std::error::Error::source(&status);
            let mut found = status.message() == expired;
            while let Some(s) = source {
                if s.is::<tonic::TimeoutExpired>() {
                    found = true;
                    break;
                }
                source = s.source();
            }
            found
        };
        if timed_out {
            Error::Status(tonic::Status::deadline_exceeded(
                "deadline exceeded (noticed by the client)",
            ))
        } else {
            Error::Status(status)
        }
    }
}

impl Error {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub(crate) fn connect(err: tonic::transport::Error) -> Self {
        use std::error::Error as _;
        let mut msg = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Error::Connect(msg)
    }

    /// The gRPC code (UNAVAILABLE for connection failures, INVALID_ARGUMENT
    /// for configuration mistakes, INTERNAL for protocol errors).
    ///
    /// ```
    /// use grpc_platform::client::Error;
    /// let err = Error::from(tonic::Status::not_found("x"));
    /// assert_eq!(err.code(), tonic::Code::NotFound);
    /// ```
    pub fn code(&self) -> Code {
        match self {
            Error::Status(s) => s.code(),
            Error::Connect(_) => Code::Unavailable,
            Error::Config(_) => Code::InvalidArgument,
            Error::Protocol(_) => Code::Internal,
        }
    }

    /// The status the server (or the transport) answered; `None` for an
    /// error the client raised itself (connecting, configuration, protocol).
    ///
    /// ```
    /// use grpc_platform::client::Error;
    /// let err = Error::from(tonic::Status::aborted("the thing is at version 3, not the expected 2"));
    /// assert_eq!(err.status().map(|s| s.message()), Some("the thing is at version 3, not the expected 2"));
    /// ```
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The `google.rpc.BadRequest` violations, as `(field, description)`:
    /// which fields of an INVALID_ARGUMENT request were wrong, and why. Empty
    /// when the error has none.
    ///
    /// ```
    /// use grpc_platform::client::Error;
    /// use tonic_types::{ErrorDetails, StatusExt};
    /// let details = ErrorDetails::with_bad_request_violation("parts[0].count", "must be positive");
    /// let status = tonic::Status::with_error_details(tonic::Code::InvalidArgument, "invalid request", details);
    /// let violations = Error::from(status).violations();
    /// assert_eq!(violations, [("parts[0].count".to_string(), "must be positive".to_string())]);
    /// ```
    pub fn violations(&self) -> Vec<(String, String)> {
        self.status()
            .and_then(|s| s.get_details_bad_request())
            .map(|b| {
                b.field_violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `google.rpc.ErrorInfo` reason (`TOKEN_EXPIRED`, `MISSING_SCOPE`, …),
    /// which tells authentication failures apart; `None` when there is none.
    ///
    /// ```
    /// use grpc_platform::client::Error;
    /// use std::collections::HashMap;
    /// use tonic_types::{ErrorDetails, StatusExt};
    /// let details = ErrorDetails::with_error_info("TOKEN_EXPIRED", "things.v1", HashMap::new());
    /// let status = tonic::Status::with_error_details(tonic::Code::Unauthenticated, "token expired", details);
    /// assert_eq!(Error::from(status).reason().as_deref(), Some("TOKEN_EXPIRED"));
    /// ```
    pub fn reason(&self) -> Option<String> {
        self.status()
            .and_then(|s| s.get_details_error_info())
            .map(|i| i.reason)
    }

    /// The `google.rpc.ErrorInfo` metadata (for `MISSING_SCOPE`, the
    /// `required_scope`); empty when there is none.
    ///
    /// ```
    /// use grpc_platform::client::Error;
    /// use std::collections::HashMap;
    /// use tonic_types::{ErrorDetails, StatusExt};
    /// let metadata = HashMap::from([("required_scope".to_string(), "things:write".to_string())]);
    /// let details = ErrorDetails::with_error_info("MISSING_SCOPE", "things.v1", metadata);
    /// let err = Error::from(tonic::Status::with_error_details(tonic::Code::PermissionDenied, "no", details));
    /// assert_eq!(err.error_metadata()["required_scope"], "things:write");
    /// ```
    pub fn error_metadata(&self) -> std::collections::HashMap<String, String> {
        self.status()
            .and_then(|s| s.get_details_error_info())
            .map(|i| i.metadata)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_own_timeout_reads_as_deadline_exceeded() {
        let expired = tonic::Status::cancelled(tonic::TimeoutExpired(()).to_string());
        assert_eq!(Error::from(expired).code(), tonic::Code::DeadlineExceeded);
        let other = tonic::Status::cancelled("operation was canceled");
        assert_eq!(Error::from(other).code(), tonic::Code::Cancelled);
    }
}
