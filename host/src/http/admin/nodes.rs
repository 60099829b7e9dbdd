//! The admin API on several nodes: an action on a component goes to the
//! node that runs it, and the lists of components and subscriptions are
//! every node's.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::MAX_COMPONENT_BYTES;
use crate::calls::remote::SECRET_HEADER;
use crate::http::error::ApiError;
use crate::http::forward::{Forwarded, forward};
use crate::http::gateway::FromPeer;
use crate::runtime::Runtime;

/// An action on a component that runs on another node (deploy, rollback,
/// stop, start, reset) goes to that node.
pub async fn to_its_node(State(runtime): State<Arc<Runtime>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let component = path
        .strip_prefix("/admin/components/")
        .or_else(|| path.strip_prefix("/admin/subscriptions/"))
        .and_then(|rest| rest.split('/').next());
    let remote = component.and_then(|name| Some((name, runtime.config.remote(name)?)));
    let (Some((name, (node_name, node))), Some(peers), None) =
        (remote, &runtime.peers, request.extensions().get::<FromPeer>())
    else {
        return next.run(request).await;
    };
    let request_id = uuid::Uuid::now_v7().to_string();
    let to = Forwarded {
        component: name,
        node_name,
        node,
        request_id: &request_id,
        timeout: FORWARD_TIMEOUT,
        max_response_bytes: MAX_COMPONENT_BYTES,
    };
    tracing::info!(component = name, node = node_name, path = %path, "passing the admin request to the component's node");
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_COMPONENT_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::TooLarge {
                limit: MAX_COMPONENT_BYTES,
            }
            .into_response();
        }
    };
    forward(peers, &to, &parts, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// How long another node may take over an admin action (a deploy compiles
/// and migrates).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

/// How long another node may take to list what it runs.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /admin/components` and `GET /admin/subscriptions` asked of one
/// node: its own list and every other node's, each item with its `node`. A
/// node that cannot be asked shows its components as `unreachable`.
pub async fn from_every_node(State(runtime): State<Arc<Runtime>>, request: Request, next: Next) -> Response {
    let (Some(peers), Some(this), None) = (
        &runtime.peers,
        &runtime.config.this_node,
        request.extensions().get::<FromPeer>(),
    ) else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_string();
    let own = next.run(request).await;
    if !own.status().is_success() {
        return own;
    }
    let mut all: Vec<Value> = match axum::body::to_bytes(own.into_body(), usize::MAX).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(err) => return ApiError::Internal(err.into()).into_response(),
    };
    let mark = |items: &mut Vec<Value>, node: &str| {
        for item in items.iter_mut() {
            item["node"] = json!(node);
        }
    };
    mark(&mut all, this);
    for (name, node) in runtime.config.nodes.iter().filter(|(name, _)| *name != this) {
        let asked = async {
            let response = peers
                .client
                .get(format!("{}{path}", node.base()))
                .header(SECRET_HEADER, &peers.secret)
                .timeout(LIST_TIMEOUT)
                .send()
                .await?
                .error_for_status()?;
            response.json::<Vec<Value>>().await
        };
        match asked.await {
            Ok(mut theirs) => {
                mark(&mut theirs, name);
                all.extend(theirs);
            }
            Err(err) => {
                tracing::warn!(node = %name, cause = %err, path = %path, "cannot ask another node for its list");
                if path == "/admin/components" {
                    all.extend(
                        node.components
                            .iter()
                            .map(|c| json!({ "name": c, "state": "unreachable", "node": name })),
                    );
                }
            }
        }
    }
    Json(all).into_response()
}
