//! The gateway in front of the components: who is asking (a bearer JWT,
//! verified before any component runs) and how often (rate limits).
//!
//! A component learns who is asking from one header, `rentcar-identity`
//! (see [`Identity::to_json`]), which only the host sets: every header a
//! client sends under `rentcar-` is dropped first, and so is the token
//! itself. Roles and ownership are the components' to decide, in their
//! own domain code; the host only refuses what has no valid token.

mod auth;
mod keys;
mod rate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use auth::Identity;
use auth::Verifier;
pub use keys::parse_ttl;
use rate::RateLimits;

use crate::calls::remote::SECRET_HEADER;
use crate::config::{self, Config};
use crate::http::error::ApiError;

/// The header that tells a component who is asking.
pub const IDENTITY_HEADER: &str = "rentcar-identity";

/// The client's address, put on every request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Marks a request another node sent (with the cluster secret): its
/// `rentcar-identity` stands, and it is served here, never forwarded again.
#[derive(Debug, Clone, Copy)]
pub struct FromPeer;

pub struct Gateway {
    /// `None`: authentication is turned off.
    verifier: Option<Verifier>,
    /// What the other nodes prove themselves with, when there are nodes.
    cluster_secret: Option<String>,
    public: Vec<(String, String)>,
    limits: RateLimits,
}

impl Gateway {
    /// Reads the keys `[auth]` names (or makes the secret), at start.
    pub async fn load(config: &Config) -> anyhow::Result<Gateway> {
        let auth = &config.auth;
        let verifier = if auth.enabled {
            let secret = keys::hs256_secret(auth, &config.server.data_dir)?;
            let jwks = keys::jwks(auth).await?;
            tracing::info!(
                issuer = %auth.issuer,
                audience = %auth.audience,
                hs256 = secret.is_some(),
                jwks_keys = jwks.as_ref().map_or(0, |set| set.keys.len()),
                public = ?auth.public,
                "requests need a bearer token"
            );
            Some(Verifier::new(auth, secret.as_deref(), jwks.as_ref())?)
        } else {
            tracing::warn!("authentication is off ([auth] enabled = false): anyone may do anything");
            None
        };
        Ok(Gateway {
            verifier,
            cluster_secret: config.cluster_secret().map(str::to_string),
            public: auth
                .public_routes()
                .map(|(method, prefix)| (method.to_string(), prefix.to_string()))
                .collect(),
            limits: RateLimits::new(&config.rate_limits),
        })
    }

    fn is_public(&self, method: &str, path: &str) -> bool {
        self.public
            .iter()
            .any(|(m, prefix)| (m == method || (m == "GET" && method == "HEAD")) && config::covers(prefix, path))
    }

    /// Who presents `headers`' bearer token; `Ok(None)` without one.
    fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, String> {
        let Some(verifier) = &self.verifier else {
            return Ok(Some(Identity::Unchecked));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .ok_or("the Authorization header must be `Bearer <token>`")?;
        verifier.verify(token.trim()).map(Some)
    }

    /// Whether `headers` say the request comes from another node: `None`
    /// when they do not claim to, `Some(false)` when the secret is wrong.
    pub fn from_peer(&self, headers: &HeaderMap) -> Option<bool> {
        let presented = headers.get(SECRET_HEADER)?;
        Some(
            self.cluster_secret
                .as_ref()
                .is_some_and(|secret| constant_time_eq(secret.as_bytes(), presented.as_bytes())),
        )
    }

    /// Whether `headers` carry a valid token with the `admin` role: 401,
    /// or 403 for a token without the role.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.verifier.is_none() {
            return Err(ApiError::Unauthorized("missing or wrong bearer token".into()));
        }
        match self.identify(headers) {
            Ok(Some(identity)) if identity.has_role("admin") => Ok(()),
            Ok(Some(_)) => Err(ApiError::Forbidden("the admin API needs the `admin` role".into())),
            Ok(None) => Err(ApiError::Unauthorized("missing bearer token".into())),
            Err(refusal) => Err(ApiError::Unauthorized(refusal)),
        }
    }
}

/// Before a request reaches its component: drop what a client may not
/// say, check the token, tell the component who is asking, and count the
/// request against the caller's rate limits.
pub async fn authenticate(State(gateway): State<Arc<Gateway>>, mut request: Request, next: Next) -> Response {
    match gateway.from_peer(request.headers()) {
        // Checked and counted by the node it came in through.
        Some(true) => {
            request.headers_mut().remove(SECRET_HEADER);
            request.extensions_mut().insert(FromPeer);
            return next.run(request).await;
        }
        Some(false) => return unauthorized("wrong cluster secret"),
        None => {}
    }
    let headers = request.headers_mut();
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("rentcar-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    let identity = match gateway.identify(request.headers()) {
        Ok(Some(identity)) => identity,
        Ok(None) if gateway.is_public(request.method().as_str(), request.uri().path()) => Identity::Anonymous,
        Ok(None) => return unauthorized("this route needs a bearer token (Authorization: Bearer <token>)"),
        Err(refusal) => return unauthorized(&refusal),
    };
    let caller = match &identity {
        Identity::User { sub, .. } => format!("sub:{sub}"),
        Identity::Anonymous | Identity::Unchecked => match request.extensions().get::<ClientAddr>() {
            Some(ClientAddr(addr)) => format!("ip:{}", addr.ip()),
            None => "ip:unknown".into(),
        },
    };
    if let Err(wait) = gateway.limits.check(request.uri().path(), &caller) {
        return too_many(wait);
    }
    let headers = request.headers_mut();
    headers.remove(header::AUTHORIZATION);
    match HeaderValue::from_str(&identity.to_json()) {
        Ok(value) => {
            headers.insert(IDENTITY_HEADER, value);
        }
        // A subject with bytes a header cannot carry.
        Err(_) => return unauthorized("the token's `sub` cannot be passed on"),
    }
    next.run(request).await
}

/// Compares without revealing, through timing, how much of a guess matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(message: &str) -> Response {
    ApiError::Unauthorized(message.into()).into_response()
}

fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::RateLimited {
        seconds: seconds.max(1),
    }
    .into_response()
}

/// `rentcar-host token`: a token signed with the configured or generated
/// HS256 secret.
pub fn token(config: &Config, sub: &str, roles: &[String], ttl: Duration) -> anyhow::Result<String> {
    let secret = keys::hs256_secret(&config.auth, &config.server.data_dir)?.ok_or_else(|| {
        anyhow::anyhow!("[auth] uses a JWKS only: tokens come from its identity provider, not from this host")
    })?;
    keys::mint(&config.auth, &secret, sub, roles, ttl)
}
