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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::ComponentFailed { component, cause } = &self {
            tracing::error!(component = %component, cause = %format!("{cause:#}"), "component failed");
        }
        let (status, code) = self.status_and_code();
        let body = Json(serde_json::json!({ "error": code, "message": self.to_string() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Tell the caller to come back shortly rather than wait.
            return (status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        (status, body).into_response()
    }
}
