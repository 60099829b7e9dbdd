//! `[auth]` and `[[rate_limits]]`: who may call the public API, and how
//! often.

use std::path::PathBuf;

use serde::Deserialize;

/// How public requests are authenticated: a bearer JWT on every request
/// but the public routes'.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// `false` serves every request unauthenticated (logged as a warning).
    pub enabled: bool,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Secret of HS256 tokens; `RENTCAR_JWT_SECRET` overrides it. Without a
    /// secret and without `jwks`, the host makes one at first start and
    /// keeps it in `<data_dir>/auth.key`.
    pub hs256_secret: Option<String>,
    /// Public keys (RS256, ES256, ...) of an identity provider: a JWKS file,
    /// or an `http(s)://` URL read at start.
    pub jwks: Option<String>,
    /// `METHOD /prefix` pairs that may be called without a token, e.g.
    /// `GET /cars` (which covers `/cars/7` too).
    pub public: Vec<String>,
    /// The claim that holds the caller's roles; by default a `role` string
    /// or a `roles` array.
    pub roles_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            issuer: "rentcar".into(),
            audience: "rentcar-api".into(),
            hs256_secret: None,
            jwks: None,
            public: vec!["GET /cars".into(), "GET /availability".into()],
            roles_claim: None,
            leeway_s: 30,
        }
    }
}

impl Auth {
    /// Where the generated HS256 secret lives when none is configured.
    pub fn key_file(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join("auth.key")
    }
}

/// A limit on how often one caller (a token's subject, else the client's
/// address) may call the routes under `prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// A path prefix such as `/orders` (covers `/orders/7/cancel`).
    pub prefix: String,
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests at once above the sustained rate; defaults to `per_second`.
    pub burst: Option<u32>,
}

impl Auth {
    /// What is wrong with the `[auth]` table, if anything.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("[auth] needs an issuer and an audience".into());
        }
        for route in &self.public {
            if public_route(route).is_none() {
                return Err(format!(
                    "[auth] public entry `{route}` must be a method and a path prefix, e.g. `GET /cars`"
                ));
            }
        }
        Ok(())
    }

    /// The `public` entries as (method, path prefix) pairs.
    pub fn public_routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.public.iter().filter_map(|route| public_route(route))
    }
}

fn public_route(route: &str) -> Option<(&str, &str)> {
    let (method, prefix) = route.trim().split_once(' ')?;
    let prefix = prefix.trim();
    let valid = !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && prefix.starts_with('/')
        && (prefix.len() == 1 || !prefix.ends_with('/'));
    valid.then_some((method, prefix))
}

impl RateLimit {
    /// What is wrong with this `[[rate_limits]]` entry, if anything.
    pub(super) fn check(&self) -> Result<(), String> {
        if !self.prefix.starts_with('/') {
            return Err(format!("[[rate_limits]] prefix `{}` must start with `/`", self.prefix));
        }
        if self.per_second == 0 || self.burst == Some(0) {
            return Err(format!(
                "[[rate_limits]] for `{}` needs per_second (and burst, if given) above zero",
                self.prefix
            ));
        }
        Ok(())
    }
}
