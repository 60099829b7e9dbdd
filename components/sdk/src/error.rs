//! The one error type of the components: what a handler, an event handler
//! or a migration returns when it does not carry out what was asked.

use std::fmt;

use crate::db;
use crate::http::Response;

/// Why a handler answers something other than its result.
///
/// - [`Error::Refused`]: an answer the API defines — the client's mistake
///   or a state that refuses the request (4xx), or another component that
///   could not do its part (502, 503). Given as
///   `{"error":"<code>","message":"..."}`.
/// - [`Error::Internal`]: a failure inside the component (a database error,
///   a row that does not hold what the code reads, a refused publish):
///   500 `internal`.
///
/// Either way the host commits what the invocation did only for a status
/// below 500. In an event handler or a lifecycle function any error fails
/// the delivery or the load (the host redelivers the event later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Refused(Refusal),
    Internal(String),
}

/// An answer the API defines for a request it does not carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The `error` field: a stable, kebab-case code clients match on.
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After`: the same request may succeed then.
    pub retry_after: Option<u32>,
}

impl Error {
    /// An answer with its own status and code.
    pub fn refused(status: u16, code: &'static str, message: impl Into<String>) -> Error {
        Error::Refused(Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
        })
    }

    /// 400 `invalid-request`: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::refused(400, "invalid-request", message)
    }

    /// 404 `not-found`.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::refused(404, "not-found", message)
    }

    /// 409 `conflict`: the state does not allow the request.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::refused(409, "conflict", message)
    }

    /// 503 with `Retry-After: 1`: the caller may try again shortly.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Error {
        Error::refused(503, code, message).retry_after(1)
    }

    /// 500 `internal`: a failure inside the component.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::Internal(message.into())
    }

    /// The same answer with `Retry-After: seconds`. No effect on an
    /// internal error.
    #[must_use]
    pub fn retry_after(mut self, seconds: u32) -> Error {
        if let Error::Refused(refusal) = &mut self {
            refusal.retry_after = Some(seconds);
        }
        self
    }

    /// Whether it is a failure inside the component rather than an answer
    /// the API defines.
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Internal(_))
    }

    pub fn into_response(self) -> Response {
        match self {
            Error::Refused(refusal) => {
                let mut response = Response::error(refusal.status, refusal.code, &refusal.message);
                if let Some(seconds) = refusal.retry_after {
                    response.headers.push(("retry-after".into(), seconds.to_string()));
                }
                response
            }
            Error::Internal(message) => Response::error(500, "internal", &message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(refusal) => write!(f, "{} {}: {}", refusal.status, refusal.code, refusal.message),
            Error::Internal(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<db::Error> for Error {
    fn from(err: db::Error) -> Error {
        Error::Internal(err.to_string())
    }
}

impl From<db::RowError> for Error {
    fn from(err: db::RowError) -> Error {
        Error::Internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    fn answer(err: Error) -> (u16, Option<String>, String) {
        let response = err.into_response();
        let retry = response
            .headers
            .iter()
            .find(|(name, _)| name == "retry-after")
            .map(|(_, value)| value.clone());
        (response.status, retry, String::from_utf8(response.body).unwrap())
    }

    #[test]
    fn refusals_answer_their_status_code_and_retry_after() {
        assert_eq!(
            answer(Error::not_found("no order 7")),
            (404, None, r#"{"error":"not-found","message":"no order 7"}"#.into())
        );
        assert_eq!(
            answer(Error::unavailable("payment-unavailable", "retry")),
            (
                503,
                Some("1".into()),
                r#"{"error":"payment-unavailable","message":"retry"}"#.into()
            )
        );
        assert_eq!(
            answer(Error::refused(409, "order-in-progress", "wait").retry_after(1)).1,
            Some("1".into())
        );
        assert_eq!(answer(Error::internal("disk on fire")).0, 500);
        assert!(Error::internal("x").is_internal() && !Error::conflict("x").is_internal());
    }
}
