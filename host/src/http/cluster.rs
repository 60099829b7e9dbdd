//! What a node offers the other nodes, under `/_cluster`, to holders of
//! the cluster secret only (401 without it): linked calls into its
//! components, and the types of the interfaces they export.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::calls::remote::{self, CallAnswer, CallRequest, InterfaceTypes, Refusal};
use crate::http::error::ApiError;
use crate::http::forward::time_given;
use crate::http::gateway::Gateway;
use crate::runtime::Runtime;

pub fn router(gateway: Arc<Gateway>) -> Router<Arc<Runtime>> {
    Router::new()
        .route("/_cluster/calls/{component}", post(call))
        .route("/_cluster/interfaces/{component}", get(interface))
        .route_layer(middleware::from_fn_with_state(gateway, peers_only))
}

async fn peers_only(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    match gateway.from_peer(request.headers()) {
        Some(true) => next.run(request).await,
        Some(false) => ApiError::Unauthorized("wrong cluster secret".into()).into_response(),
        None => ApiError::Unauthorized("only the nodes of the cluster may call this".into()).into_response(),
    }
}

/// Longest a call from another node may take here.
const MAX_CALL: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /_cluster/calls/{component}`: one linked call, run here as a
/// local one, with the faults injected into `component` on this node.
async fn call(
    State(runtime): State<Arc<Runtime>>,
    Path(component): Path<String>,
    headers: HeaderMap,
    Json(call): Json<CallRequest>,
) -> Result<Json<CallAnswer>, ApiError> {
    let request_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let function = call.function.clone();
    let answered = async {
        if runtime.faults.inject(&component).await {
            return Err(ApiError::FaultInjected(component.clone()));
        }
        let answer = remote::answer(&runtime.registry, &component, call, request_id).await;
        runtime.faults.delay_reply(&component).await;
        answer.map_err(|refusal| refused(&component, refusal))
    };
    let answer = tokio::time::timeout(time_given(&headers, MAX_CALL), answered)
        .await
        .map_err(|_| ApiError::Deadline(component.clone()))??;
    tracing::debug!(component = %component, function = %function, "answered a call from another node");
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct InterfaceQuery {
    interface: String,
}

/// `GET /_cluster/interfaces/{component}?interface=...`: the signature of
/// every function of the interface, as the running version exports it.
async fn interface(
    State(runtime): State<Arc<Runtime>>,
    Path(component): Path<String>,
    Query(query): Query<InterfaceQuery>,
) -> Result<Json<InterfaceTypes>, ApiError> {
    remote::interface(&runtime.registry, &component, &query.interface)
        .map(Json)
        .map_err(|refusal| refused(&component, refusal))
}

fn refused(component: &str, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotRunning(_) => ApiError::NotFound(refusal.to_string()),
        Refusal::Mismatch(message) => ApiError::Conflict {
            code: "interface-mismatch",
            message,
        },
        Refusal::BadRequest(message) => ApiError::BadRequest(message),
        Refusal::Failed(cause) => ApiError::ComponentFailed {
            component: component.to_string(),
            cause,
        },
    }
}
