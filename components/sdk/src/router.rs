//! A small router: a component lists its routes as method, path pattern
//! and handler, and the router answers what no handler should have to.
//!
//! - A path that no route's pattern matches is 404, whatever the method.
//! - A path that some pattern matches, with a method none of them has, is
//!   405 with an `Allow` header listing the methods that path has.
//! - A parameter (`:name` in a pattern) is an [`Id`]: a segment that is not
//!   one is 400 before any handler runs.
//! - `*` in a pattern matches any one segment (a test component serves the
//!   same routes under whatever prefix it is loaded at).
//! - A handler's [`Error`] becomes its answer ([`Error::into_response`]).
//!
//! ```text
//! Router::new()
//!     .get("/orders", list)
//!     .get("/orders/:id", get)
//!     .post("/orders/:id/cancel", cancel)
//!     .handle(&request)
//! ```

use crate::error::Error;
use crate::http::{Request, Response};
use crate::id::{self, Id};

/// A handler: the request and its path parameters in, a response out.
pub type Handler = fn(&Request, &Params) -> Result<Response, Error>;

/// The parameters of the route that matched, by name.
#[derive(Debug, Default)]
pub struct Params(Vec<(&'static str, Id)>);

impl Params {
    /// The parameter `name` of the route's pattern.
    ///
    /// # Panics
    ///
    /// When the pattern has no parameter `name`: a handler registered for
    /// the wrong pattern, a bug in the component (its invocation traps).
    pub fn id(&self, name: &str) -> Id {
        self.0
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, id)| *id)
            .unwrap_or_else(|| panic!("the route has no parameter `{name}`"))
    }
}

struct Route {
    method: &'static str,
    /// The pattern's segments: literals, and `:name` for a parameter.
    segments: Vec<&'static str>,
    handler: Handler,
}

impl Route {
    /// The parameters' raw text, if `path` has the pattern's shape.
    fn matches<'a>(&self, path: &[&'a str]) -> Option<Vec<(&'static str, &'a str)>> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (pattern, segment) in self.segments.iter().zip(path) {
            match pattern.strip_prefix(':') {
                Some(name) => params.push((name, *segment)),
                None if *pattern == "*" || pattern == segment => {}
                None => return None,
            }
        }
        Some(params)
    }
}

#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    pub fn get(self, pattern: &'static str, handler: Handler) -> Router {
        self.route("GET", pattern, handler)
    }

    pub fn post(self, pattern: &'static str, handler: Handler) -> Router {
        self.route("POST", pattern, handler)
    }

    pub fn route(mut self, method: &'static str, pattern: &'static str, handler: Handler) -> Router {
        let segments = pattern.split('/').filter(|s| !s.is_empty()).collect();
        self.routes.push(Route {
            method,
            segments,
            handler,
        });
        self
    }

    /// Runs the handler of the route that matches `request`, or answers
    /// 404, 405 or 400 (module docs).
    pub fn handle(&self, request: &Request) -> Response {
        let path = request.segments();
        let mut allowed: Vec<&str> = Vec::new();
        for route in &self.routes {
            let Some(raw) = route.matches(&path) else {
                continue;
            };
            if route.method != request.method {
                allowed.push(route.method);
                continue;
            }
            let answer = params(raw).and_then(|params| (route.handler)(request, &params));
            return answer.unwrap_or_else(Error::into_response);
        }
        if allowed.is_empty() {
            return Error::not_found(format!("no route for {}", request.path)).into_response();
        }
        allowed.sort_unstable();
        allowed.dedup();
        let mut response = Error::refused(405, "method-not-allowed", "method not allowed on this path").into_response();
        response.headers.push(("allow".into(), allowed.join(", ")));
        response
    }
}

/// The route's parameters as ids, or 400 for one that is not.
fn params(raw: Vec<(&'static str, &str)>) -> Result<Params, Error> {
    let mut params = Params::default();
    for (name, text) in raw {
        let id = Id::parse(text)
            .ok_or_else(|| Error::bad_request(format!("`{text}` in the path is not {}", id::EXPECTED)))?;
        params.0.push((name, id));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::{Params, Router};
    use crate::error::Error;
    use crate::http::{Request, Response};

    fn ok(_: &Request, params: &Params) -> Result<Response, Error> {
        Ok(Response::json(200, &params.id("id").get()))
    }

    fn answer(router: &Router, method: &str, path: &str) -> (u16, Option<String>, String) {
        let request = Request {
            method: method.into(),
            path: path.into(),
            query: None,
            headers: Vec::new(),
            body: Vec::new(),
        };
        let response = router.handle(&request);
        let allow = response
            .headers
            .iter()
            .find(|(name, _)| name == "allow")
            .map(|(_, v)| v.clone());
        (response.status, allow, String::from_utf8(response.body).unwrap())
    }

    #[test]
    fn unknown_paths_are_404_wrong_methods_405_and_bad_ids_400() {
        let router = Router::new()
            .get("/orders/:id", ok)
            .post("/orders/:id/cancel", ok)
            .route("DELETE", "/orders/:id", ok);
        assert_eq!(answer(&router, "GET", "/orders/7"), (200, None, "7".into()));
        assert_eq!(answer(&router, "GET", "/orders/7/foo").0, 404);
        assert_eq!(answer(&router, "GET", "/elsewhere").0, 404);
        let (status, allow, _) = answer(&router, "PUT", "/orders/7");
        assert_eq!((status, allow.as_deref()), (405, Some("DELETE, GET")));
        let (status, allow, _) = answer(&router, "GET", "/orders/7/cancel");
        assert_eq!((status, allow.as_deref()), (405, Some("POST")));
        for bad in ["abc", "0", "-1", "9223372036854775808"] {
            assert_eq!(answer(&router, "GET", &format!("/orders/{bad}")).0, 400, "{bad}");
        }
    }

    fn refuse(_: &Request, _: &Params) -> Result<Response, Error> {
        Err(Error::conflict("order 7 is CANCELLED"))
    }

    #[test]
    fn a_wildcard_matches_any_segment_and_errors_are_answers() {
        let router = Router::new().post("/*/cancel", refuse);
        assert_eq!(
            answer(&router, "POST", "/sink/cancel"),
            (
                409,
                None,
                r#"{"error":"conflict","message":"order 7 is CANCELLED"}"#.into()
            )
        );
        assert_eq!(answer(&router, "POST", "/sink/other").0, 404);
        assert_eq!(answer(&router, "POST", "/a/b/cancel").0, 404);
    }
}
