//! The host's own HTTP errors, in the API's JSON shape
//! `{"error":"<code>","message":"..."}`. Details of 5xx errors go to the log,
//! not to the caller.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no component serves this path")]
    NoRoute,
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("the request body did not arrive within {ms} ms")]
    SlowBody { ms: u128 },
    #[error("component `{0}` is not running")]
    Unavailable(String),
    #[error("component `{0}` is at its limit of concurrent instances; retry shortly")]
    Busy(String),
    #[error("a fault injected into component `{0}` aborted the request")]
    FaultInjected(String),
    #[error("component `{0}` did not answer within its deadline")]
    Deadline(String),
    #[error("component `{0}` is at its memory budget; retry shortly")]
    OverBudget(String),
    #[error("component `{0}` is out of storage (its database or the disk is full); retry later")]
    InsufficientStorage(String),
    #[error("component `{component}` failed")]
    ComponentFailed { component: String, cause: anyhow::Error },
    /// The node that runs the component could not be reached.
    #[error("component `{component}` runs on node `{node}`, which cannot be reached; retry shortly")]
    NodeUnavailable {
        component: String,
        node: String,
        cause: anyhow::Error,
    },
    /// No valid bearer token where one is needed.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token without the role the route needs.
    #[error("{0}")]
    Forbidden(String),
    /// The caller's rate limit is used up for now.
    #[error("too many requests; retry in {seconds} s")]
    RateLimited { seconds: u64 },
    /// The operator's API: no such component, dead letter or fault.
    #[error("{0}")]
    NotFound(String),
    /// A new version refused by the readiness gate.
    #[error("{0}")]
    Refused(String),
    /// The operator's request does not fit the present state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The host itself failed (the cause goes to the log).
    #[error("the host failed; see its log")]
    Internal(anyhow::Error),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid-request"),
            ApiError::SlowBody { .. } => (StatusCode::REQUEST_TIMEOUT, "request-timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Busy(_) | ApiError::OverBudget(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::FaultInjected(_) => (StatusCode::SERVICE_UNAVAILABLE, "fault-injected"),
            ApiError::Deadline(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline-exceeded"),
            ApiError::InsufficientStorage(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage"),
            ApiError::ComponentFailed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "component-failed"),
            ApiError::NodeUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "node-unavailable"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate-limited"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ApiError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::ComponentFailed { component, cause } => {
                tracing::error!(component = %component, cause = %format!("{cause:#}"), "component failed");
            }
            ApiError::Internal(cause) => tracing::error!(cause = %format!("{cause:#}"), "the host failed"),
            ApiError::NodeUnavailable { component, node, cause } => {
                tracing::warn!(component = %component, node = %node, cause = %format!("{cause:#}"), "cannot forward the request");
            }
            _ => {}
        }
        let (status, code) = self.status_and_code();
        let mut response = json(status, code, &self.to_string());
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized(message) => {
                let challenge = format!(
                    "Bearer realm=\"rentcar\", error=\"invalid_token\", error_description=\"{}\"",
                    message.replace(['"', '\\'], "'")
                );
                if let Ok(value) = header::HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            ApiError::RateLimited { seconds } => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from(*seconds));
            }
            _ => {}
        }
        match self {
            ApiError::ComponentFailed { .. } => response.extensions_mut().insert(Failed::Trap),
            ApiError::Deadline(_) => response.extensions_mut().insert(Failed::Deadline),
            _ => None,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Tell the caller to come back shortly rather than wait.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

/// Marks the answer of a guest that trapped or missed its deadline, for
/// the metrics (see `router::observe`).
#[derive(Debug, Clone, Copy)]
pub enum Failed {
    Trap,
    Deadline,
}

/// The one shape of every error answer: `{"error": code, "message": ...}`.
pub fn json(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}
