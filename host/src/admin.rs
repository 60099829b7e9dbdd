//! The operator's API under `/admin`, on the host itself (never routed to a
//! component). Every request needs `Authorization: Bearer <token>`, the
//! token coming from `RENTCAR_ADMIN_TOKEN` or `[admin] token`; without a
//! configured token the admin API refuses everything.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::component::Status;
use crate::runtime::Runtime;

pub fn router(runtime: Arc<Runtime>) -> Router<Arc<Runtime>> {
    Router::new()
        .route("/admin/components", get(components))
        .route("/admin/components/{name}/stop", post(stop))
        .route("/admin/components/{name}/start", post(start))
        .route_layer(middleware::from_fn_with_state(runtime, authorize))
}

async fn authorize(State(runtime): State<Arc<Runtime>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match (runtime.admin_token(), presented) {
        (Some(expected), Some(presented))
            if constant_time_eq(expected.as_bytes(), presented.as_bytes()) =>
        {
            next.run(request).await
        }
        (None, _) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API is disabled: set RENTCAR_ADMIN_TOKEN or [admin] token",
        ),
        _ => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ),
    }
}

/// Compares without revealing, through timing, how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn components(State(runtime): State<Arc<Runtime>>) -> Json<Vec<Status>> {
    Json(runtime.registry.status())
}

async fn stop(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Response {
    set_running(&runtime, &name, false)
}

async fn start(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Response {
    set_running(&runtime, &name, true)
}

fn set_running(runtime: &Runtime, name: &str, running: bool) -> Response {
    if !runtime.registry.set_running(name, running) {
        return error(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("no component `{name}`"),
        );
    }
    tracing::info!(component = %name, running, "component state changed by operator");
    let state = if running { "running" } else { "stopped" };
    Json(Status {
        name: name.to_string(),
        state,
    })
    .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}
