//! The operator's API under `/admin`, on the host itself (never routed to a
//! component). Every request needs `Authorization: Bearer <token>`, the
//! token coming from `RENTCAR_ADMIN_TOKEN` or `[admin] token`; without a
//! configured token the admin API refuses everything.

mod json;
mod nodes;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::calls::faults::Fault;
use crate::events;
use crate::http::error::ApiError;
use crate::http::gateway::{FromPeer, Gateway, constant_time_eq};
use crate::instance::registry::Status;
use crate::runtime::{DeployError, Runtime};
use json::{Component, DeadLetter, Subscription};

pub fn router(runtime: Arc<Runtime>, gateway: Arc<Gateway>) -> Router<Arc<Runtime>> {
    Router::new()
        .route(
            "/admin/components",
            get(components).layer(middleware::from_fn_with_state(runtime.clone(), nodes::from_every_node)),
        )
        .route(
            "/admin/components/{name}",
            put(deploy)
                .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES))
                .layer(middleware::from_fn(refuse_announced_over_limit)),
        )
        .route("/admin/components/{name}/rollback", post(rollback))
        .route("/admin/components/{name}/stop", post(stop))
        .route("/admin/components/{name}/start", post(start))
        .route(
            "/admin/subscriptions",
            get(subscriptions).layer(middleware::from_fn_with_state(runtime.clone(), nodes::from_every_node)),
        )
        .route("/admin/subscriptions/{name}/reset", post(reset))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/{id}/replay", post(replay))
        .route("/admin/faults", get(faults))
        .route("/admin/faults/{name}", put(set_fault).delete(clear_fault))
        .route("/admin/links", get(links))
        .route_layer(middleware::from_fn_with_state(runtime.clone(), nodes::to_its_node))
        .route_layer(middleware::from_fn_with_state((runtime, gateway), authorize))
}

/// An admin request needs the operator's static token (the break-glass)
/// or a JWT with the `admin` role.
async fn authorize(
    State((runtime, gateway)): State<(Arc<Runtime>, Arc<Gateway>)>,
    mut request: Request,
    next: Next,
) -> Response {
    match gateway.from_peer(request.headers()) {
        // Authorized by the node it came in through.
        Some(true) => {
            request.extensions_mut().insert(FromPeer);
            return next.run(request).await;
        }
        Some(false) => return ApiError::Unauthorized("wrong cluster secret".into()).into_response(),
        None => {}
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let (Some(expected), Some(presented)) = (runtime.admin_token(), presented)
        && constant_time_eq(expected.as_bytes(), presented.as_bytes())
    {
        return next.run(request).await;
    }
    match gateway.admin(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// A component announced larger than an upload may be, by a client that
/// waits for "100 Continue", gets the 413 instead, before it sends the
/// body. (One that sends at once has its body read up to the limit, so
/// that it reads the 413 rather than a reset.)
async fn refuse_announced_over_limit(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let waits = headers
        .get(header::EXPECT)
        .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits && announced.is_some_and(|length| length > MAX_COMPONENT_BYTES as u64) {
        return ApiError::TooLarge {
            limit: MAX_COMPONENT_BYTES,
        }
        .into_response();
    }
    next.run(request).await
}

/// Largest component a deploy may upload.
const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

async fn components(State(runtime): State<Arc<Runtime>>) -> Json<Vec<Component>> {
    Json(runtime.registry.statuses().into_iter().map(Component::from).collect())
}

/// `PUT /admin/components/{name}` with the wasm as body: the readiness gate,
/// then the swap. 422 with the reason if refused; the old version serves on.
async fn deploy(
    State(runtime): State<Arc<Runtime>>,
    Path(name): Path<String>,
    wasm: axum::body::Bytes,
) -> Result<Response, ApiError> {
    deployed(&name, runtime.deploy(&name, wasm.to_vec()).await)
}

async fn rollback(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    deployed(&name, runtime.rollback(&name).await)
}

fn deployed(name: &str, result: Result<Status, DeployError>) -> Result<Response, ApiError> {
    match result {
        Ok(status) => Ok(Json(Component::from(status)).into_response()),
        Err(DeployError::Unknown(_)) => Err(ApiError::NotFound(format!("no component `{name}`"))),
        Err(DeployError::Refused(reason)) => {
            tracing::warn!(component = name, reason = %format!("{reason:#}"), "new version refused");
            Err(ApiError::Refused(format!("{reason:#}")))
        }
    }
}

async fn stop(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    set_running(&runtime, &name, false)
}

async fn start(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    set_running(&runtime, &name, true)
}

fn set_running(runtime: &Runtime, name: &str, running: bool) -> Result<Response, ApiError> {
    if !runtime.registry.set_running(name, running) {
        return Err(ApiError::NotFound(format!("no component `{name}`")));
    }
    tracing::info!(component = %name, running, "component state changed by operator");
    Ok(Json(runtime.registry.status(name).map(Component::from)).into_response())
}

async fn subscriptions(State(runtime): State<Arc<Runtime>>) -> Result<Response, ApiError> {
    let logs = runtime.subscription_logs().await.map_err(ApiError::Internal)?;
    let all: Vec<Subscription> = logs
        .into_iter()
        .map(|sub| {
            let state = if runtime.registry.get(&sub.consumer).is_some() {
                "running"
            } else {
                "stopped"
            };
            let stats = runtime.stats.get(&sub.consumer, &sub.topic);
            Subscription::new(sub.consumer, sub.topic, state, &sub.partitions, stats)
        })
        .collect();
    Ok(Json(all).into_response())
}

/// Replays the whole log into a component that rebuilds itself from events:
/// its `reset` drops its derived state and its inbox, and its positions go
/// back to the start.
async fn reset(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let Some(settings) = runtime.config.components.get(&name) else {
        return Err(ApiError::NotFound(format!("no component `{name}`")));
    };
    let Some(loaded) = runtime.registry.get(&name) else {
        return Err(ApiError::Conflict {
            code: "stopped",
            message: format!("component `{name}` is stopped; start it first"),
        });
    };
    if settings.subscribe.is_empty() {
        return Err(ApiError::Conflict {
            code: "no-subscriptions",
            message: format!("component `{name}` subscribes to nothing"),
        });
    }
    // Dispatchers of this component pause at a batch boundary meanwhile.
    let _turn = loaded.slot.delivery.write().await;
    match loaded.reset().await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => {
            return Err(ApiError::Conflict {
                code: "cannot-reset",
                message: refusal,
            });
        }
        Err(err) => return Err(ApiError::Internal(err)),
    }
    runtime.rewind(&loaded).await.map_err(ApiError::Internal)?;
    tracing::info!(component = %name, "subscriptions reset; replaying the log");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "component": name, "topics": settings.topics().collect::<Vec<_>>(), "replaying": true })),
    )
        .into_response())
}

async fn dead_letters(State(runtime): State<Arc<Runtime>>) -> Result<Response, ApiError> {
    let letters = runtime.dead_letters.all().await.map_err(ApiError::Internal)?;
    Ok(Json(letters.into_iter().map(DeadLetter::from).collect::<Vec<_>>()).into_response())
}

/// Delivers a dead letter once more, now; on success it leaves the store.
async fn replay(State(runtime): State<Arc<Runtime>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let Ok(id) = id.parse::<i64>() else {
        return Err(ApiError::BadRequest("a dead letter id is an integer".into()));
    };
    let letter = runtime
        .dead_letters
        .get(id)
        .await
        .map_err(ApiError::Internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    let Some(loaded) = runtime.registry.get(&letter.consumer) else {
        return Err(ApiError::Conflict {
            code: "stopped",
            message: format!("component `{}` is stopped; start it first", letter.consumer),
        });
    };
    if let Err(err) = events::deliver_once(&loaded, &letter.event).await {
        return Err(ApiError::Conflict {
            code: "replay-failed",
            message: format!("the event still fails: {err:#}"),
        });
    }
    runtime.dead_letters.remove(id).await.map_err(ApiError::Internal)?;
    tracing::info!(dead_letter = id, consumer = %letter.consumer, event = %letter.event.id, "dead letter replayed");
    Ok(Json(serde_json::json!({ "id": id, "replayed": true })).into_response())
}

async fn faults(State(runtime): State<Arc<Runtime>>) -> Response {
    Json(runtime.faults.all()).into_response()
}

/// `PUT /admin/faults/{component}` `{"delayMs":800,"jitterMs":220,"abortPercent":0}`.
async fn set_fault(
    State(runtime): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if !runtime.config.components.contains_key(&name) {
        return Err(ApiError::NotFound(format!("no component `{name}`")));
    }
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(fault) => fault,
        Err(err) => return Err(ApiError::BadRequest(err.to_string())),
    };
    fault.check().map_err(ApiError::BadRequest)?;
    runtime.faults.set(&name, fault);
    tracing::warn!(component = %name, ?fault, "fault injected by operator");
    Ok(Json(serde_json::json!({ "component": name, "fault": fault })).into_response())
}

async fn clear_fault(State(runtime): State<Arc<Runtime>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    if !runtime.faults.clear(&name) {
        return Err(ApiError::NotFound(format!("no fault on `{name}`")));
    }
    tracing::info!(component = %name, "fault removed by operator");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every link with its policy and the state of its circuit.
async fn links(State(runtime): State<Arc<Runtime>>) -> Response {
    let links: Vec<_> = runtime
        .policies
        .iter()
        .map(|policy| {
            let link = &policy.link;
            serde_json::json!({
                "from": link.from,
                "to": link.to,
                "interface": link.interface,
                "timeoutMs": link.timeout_ms,
                "maxConcurrent": link.max_concurrent,
                "maxQueue": link.max_queue,
                "circuit": policy.circuit_state(),
            })
        })
        .collect();
    Json(links).into_response()
}
