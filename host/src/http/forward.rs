//! Requests for a component that runs on another node: any node answers
//! any route, by passing the request on to the node that runs it.
//!
//! The forwarded request keeps its method, path, headers (who is asking,
//! in `rentcar-identity`, as this node's gateway found it), body and
//! request id; it carries the cluster secret, which makes the other node
//! trust that identity and not forward again, and the time left
//! ([`TIMEOUT_HEADER`]). A node that cannot be reached is a JSON 503 with
//! `Retry-After`.

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;

use crate::calls::remote::{Peers, SECRET_HEADER, TIMEOUT_HEADER};
use crate::config::Node;
use crate::http::error::ApiError;

/// Where a request goes, and within what.
pub struct Forwarded<'a> {
    pub component: &'a str,
    pub node_name: &'a str,
    pub node: &'a Node,
    pub request_id: &'a str,
    /// How long the other node has to answer.
    pub timeout: Duration,
    /// Largest answer accepted.
    pub max_response_bytes: usize,
}

/// Sends `parts` and `body` to the node of `to.component` and hands its
/// answer back.
pub async fn forward(peers: &Peers, to: &Forwarded<'_>, parts: &Parts, body: Bytes) -> Result<Response, ApiError> {
    let unreachable = |cause: anyhow::Error| ApiError::NodeUnavailable {
        component: to.component.to_string(),
        node: to.node_name.to_string(),
        cause,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", to.node.base());
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != header::HOST && name != header::CONTENT_LENGTH {
            headers.append(name, value.clone());
        }
    }
    let timeout_ms = to.timeout.as_millis().to_string();
    for (name, value) in [
        (SECRET_HEADER, peers.secret.as_str()),
        ("x-request-id", to.request_id),
        (TIMEOUT_HEADER, timeout_ms.as_str()),
    ] {
        let value = HeaderValue::from_str(value).map_err(|err| unreachable(err.into()))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    let mut response = peers
        .client
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        // The other node answers within the deadline, or says so itself.
        .timeout(to.timeout + Duration::from_secs(1))
        .send()
        .await
        .map_err(|err| unreachable(err.into()))?;
    let mut answer = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
            answer = answer.header(name, value);
        }
    }
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| unreachable(err.into()))? {
        if collected.len() + chunk.len() > to.max_response_bytes {
            return Err(unreachable(anyhow::anyhow!(
                "its answer is larger than {} bytes",
                to.max_response_bytes
            )));
        }
        collected.extend_from_slice(&chunk);
    }
    answer
        .body(Body::from(collected.freeze()))
        .map_err(|err| ApiError::Internal(err.into()))
}

/// Headers about one connection, not the request (RFC 9110, 7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// The time the sending node gave a forwarded request or call, at most
/// `cap`; `cap` when it says nothing.
pub fn time_given(headers: &HeaderMap, cap: Duration) -> Duration {
    headers
        .get(TIMEOUT_HEADER)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .map_or(cap, |ms| Duration::from_millis(ms).min(cap))
}
