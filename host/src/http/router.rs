//! The HTTP front door: host routes, and everything else dispatched by path
//! prefix to a fresh instance of the component that owns it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::handler::Handler as _;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tracing::Instrument as _;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use crate::http::error::{ApiError, Failed};
use crate::http::forward::{Forwarded, forward, time_given};
use crate::http::gateway::{self, FromPeer, Gateway};
use crate::instance::memory::OverBudget;
use crate::instance::slot::{DeadlineExceeded, Loaded};
use crate::runtime::Runtime;
use crate::store::lacks_storage;
use crate::telemetry;

/// Extra time on top of a component's deadline for the host's own work
/// (waiting for the database, committing) before the caller gets 504.
const GRACE: Duration = Duration::from_secs(1);

pub fn router(runtime: Arc<Runtime>, gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(crate::http::admin::router(runtime.clone(), gateway.clone()))
        .merge(crate::http::console::router())
        .merge(crate::http::cluster::router(gateway.clone()))
        // The host's own errors (axum's rejections: a bad path parameter, a
        // wrong method, a body over the limit) in the API's JSON shape.
        .route_layer(axum::middleware::map_response(json_errors))
        .fallback(
            dispatch
                .layer(middleware::from_fn_with_state(gateway, gateway::authenticate))
                .layer(middleware::from_fn_with_state(runtime.clone(), observe)),
        )
        .with_state(runtime)
}

async fn metrics(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::http::metrics::render(&runtime).await,
    )
}

/// The API's OpenAPI document, kept in the repository and checked against
/// the host by the contract tests (`cargo xtask test`).
const OPENAPI: &str = include_str!("../../openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Turns a plain-text error of the host's own routes into
/// `{"error","message"}`; JSON answers pass untouched.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace(' ', "-");
    let mut json = crate::http::error::json(status, &code, &text);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

async fn ready(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    if !runtime.bus.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the event bus cannot be reached",
        )
    } else if runtime.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The request id of a request: the caller's `x-request-id` if it is sane,
/// else a new one (see [`request_id`]).
#[derive(Clone)]
struct RequestId(String);

/// Around every request for a component: a request id (echoed in
/// `x-request-id`), a span, the request's metrics, and a count of the
/// guests' traps and missed deadlines.
async fn observe(State(runtime): State<Arc<Runtime>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let component = runtime.config.route(request.uri().path()).unwrap_or("-").to_string();
    let span = tracing::info_span!(
        "http", request_id = %id, component = %component,
        method = %request.method(), path = %request.uri().path()
    );
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Some(failed) = response.extensions().get::<Failed>() {
        telemetry::record_trap(&component, matches!(failed, Failed::Deadline));
    }
    let status = response.status().as_u16();
    telemetry::record_request(&component, status, started.elapsed());
    span.in_scope(|| tracing::debug!(status, elapsed_us = started.elapsed().as_micros() as u64, "answered"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Every request for a component, in a fresh instance of it.
async fn dispatch(
    State(runtime): State<Arc<Runtime>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    request: Request,
) -> Response {
    let result = if request.method().is_safe() {
        route(&runtime, request, &request_id).await
    } else {
        // A request that may change state runs as a task of its own, so
        // that a client going away does not cut it short between two
        // commits (say, after payment approved and before order recorded
        // the order). Reads stay inline: a task costs GET /ping a quarter
        // of its throughput.
        let component = runtime.config.route(request.uri().path()).unwrap_or("-").to_string();
        let invocation = async move { route(&runtime, request, &request_id).await };
        tokio::spawn(invocation.in_current_span())
            .await
            .unwrap_or_else(|panic| {
                Err(ApiError::ComponentFailed {
                    component,
                    cause: anyhow::anyhow!("the host failed while serving the request: {panic}"),
                })
            })
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn route(runtime: &Runtime, request: Request, request_id: &str) -> Result<Response, ApiError> {
    let name = runtime.config.route(request.uri().path()).ok_or(ApiError::NoRoute)?;
    let limits = runtime.config.components[name].limits;
    // A request from another node is served here, never sent on again;
    // it has the time that node gave it.
    let from_peer = request.extensions().get::<FromPeer>().is_some();
    let timeout = if from_peer {
        time_given(request.headers(), limits.timeout())
    } else {
        limits.timeout()
    };
    let remote = runtime.config.remote(name).filter(|_| !from_peer);
    let loaded = match remote {
        Some(_) => None,
        None => Some(
            runtime
                .registry
                .get(name)
                .ok_or_else(|| ApiError::Unavailable(name.into()))?,
        ),
    };
    let (mut parts, body) = request.into_parts();
    match parts.headers.get(header::HOST) {
        None => {
            parts
                .headers
                .insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        // wasi:http hands the guest the authority as a string.
        Some(host) if host.to_str().is_err() => {
            return Err(ApiError::BadRequest("the Host header must be visible ASCII".into()));
        }
        Some(_) => {}
    }
    // A body announced over the limit is refused before it is read when
    // the client waits for "100 Continue" (it gets 413 instead), or when it
    // is too large to drain; otherwise it is drained first (see `buffer`),
    // so that a client still sending reads the 413, not a reset.
    let limit = limits.max_request_bytes as u64;
    let waits = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|expect| expect.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if content_length(&parts.headers)
        .is_some_and(|length| length > limit && (waits || length > limit + DRAIN_LIMIT as u64))
    {
        return Err(ApiError::TooLarge {
            limit: limits.max_request_bytes,
        });
    }
    // The body arrives before an instance is taken, and within the deadline:
    // slow senders must not hold the component's instances.
    let body = read_body(body, limits.max_request_bytes, timeout).await?;
    let Some(loaded) = loaded else {
        let (Some((node_name, node)), Some(peers)) = (remote, &runtime.peers) else {
            return Err(ApiError::Unavailable(name.into()));
        };
        let to = Forwarded {
            component: name,
            node_name,
            node,
            request_id,
            timeout: timeout + GRACE,
            max_response_bytes: limits.max_response_bytes,
        };
        return forward(peers, &to, &parts, body).await;
    };
    let request = hyper::Request::from_parts(parts, Full::new(body));
    // Beyond `max_instances` a request waits for a free instance, within
    // its deadline: a flood of requests costs the host a queue, not CPU.
    let _instance = match loaded.slot.instances.try_acquire() {
        Ok(permit) => permit,
        Err(_) => match tokio::time::timeout(timeout, loaded.slot.instances.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(ApiError::Busy(name.into())),
        },
    };
    // An injected delay counts against the deadline, like the guest's own
    // time.
    let invocation = async {
        if runtime.faults.inject(name).await {
            return Err(ApiError::FaultInjected(name.into()));
        }
        let answer = invoke(&loaded, request, request_id).await;
        runtime.faults.delay_reply(name).await;
        answer
    };
    match tokio::time::timeout(timeout + GRACE, invocation).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::Deadline(name.into())),
    }
}

/// The `Content-Length` a request announces, if it announces a valid one.
pub fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Bodies this much over the limit are still read (and dropped) before the
/// 413 goes out, so that the client, still sending, reads the answer instead
/// of a reset connection; beyond it the connection is simply closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Buffers a request body of at most `limit` bytes that arrives within
/// `deadline`.
async fn read_body(body: Body, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    tokio::time::timeout(deadline, buffer(body, limit))
        .await
        .map_err(|_| ApiError::SlowBody {
            ms: deadline.as_millis(),
        })?
}

async fn buffer(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut buffer = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| ApiError::BadRequest(err.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen <= limit {
            buffer.extend_from_slice(&data);
        } else if seen > limit + DRAIN_LIMIT {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(buffer.freeze())
}

/// Runs one request through a fresh instance and buffers its response; the
/// transaction commits only if the guest returned normally with a status
/// below 500.
async fn invoke(loaded: &Loaded, request: hyper::Request<Full<Bytes>>, request_id: &str) -> Result<Response, ApiError> {
    let name = loaded.name().to_string();
    let failed = |cause: anyhow::Error| {
        if DeadlineExceeded::caused(&cause) {
            ApiError::Deadline(name.clone())
        } else if OverBudget::caused(&cause) {
            tracing::warn!(component = %name, cause = %format!("{cause:#}"), "over its memory budget");
            ApiError::OverBudget(name.clone())
        } else if lacks_storage(&cause) {
            tracing::warn!(component = %name, cause = %format!("{cause:#}"), "out of storage");
            ApiError::InsufficientStorage(name.clone())
        } else {
            ApiError::ComponentFailed {
                component: name.clone(),
                cause,
            }
        }
    };
    let proxy = loaded
        .proxy
        .clone()
        .ok_or_else(|| failed(anyhow::anyhow!("exports no wasi:http/incoming-handler")))?;

    let mut store = loaded.store();
    // The body the host holds until the guest reads it counts in the
    // budgets, like the guest's memory.
    let body = usize::try_from(request.body().size_hint().lower()).unwrap_or(usize::MAX);
    store
        .data_mut()
        .limits
        .hold(body)
        .map_err(|refused| failed(refused.into()))?;
    store.data_mut().request_id = Some(request_id.to_string());
    store.data_mut().may_commit = true;
    let name_for_metrics = name.clone();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let http = &mut store.data_mut().http();
    let request = request.map(|body| body.map_err(|never: Infallible| -> ErrorCode { match never {} }));
    let incoming = http
        .new_incoming_request(Scheme::Http, request)
        .map_err(|e| failed(e.into()))?;
    let outparam = http.new_response_outparam(sender).map_err(|e| failed(e.into()))?;

    // The guest runs while its response body is collected. On a trap the
    // store is dropped inside `guest`, which closes the response channel.
    let guest = async move {
        let started = Instant::now();
        let proxy = proxy.instantiate_async(&mut store).await?;
        telemetry::record_instantiation(&name_for_metrics, started.elapsed());
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, incoming, outparam)
            .await?;
        anyhow::Ok(store)
    };
    let max = loaded.slot.limits.max_response_bytes;
    let response = async move {
        let response = receiver
            .await
            .map_err(|_| anyhow::anyhow!("the guest set no response"))??;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max)
            .collect()
            .await
            .map_err(|err| anyhow::anyhow!("response body: {err}"))?;
        anyhow::Ok((parts, body.to_bytes()))
    };
    let (guest, response) = tokio::join!(guest, response);
    let mut store = guest.map_err(&failed)?;
    let (parts, body) = response.map_err(&failed)?;
    let ok = parts.status.as_u16() < 500;
    loaded.finish(&mut store, ok).map_err(&failed)?;
    // A component that failed for lack of storage did not fail by itself:
    // the caller learns that the server is out of space.
    if !ok && store.data().storage_full {
        return Err(ApiError::InsufficientStorage(name));
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// The id of a request: the caller's `x-request-id` if it is sane, else a
/// new UUIDv7. It follows the request through synchronous calls and into
/// the events it causes.
fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string)
}
