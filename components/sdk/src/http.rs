use serde::Serialize;
use serde::de::DeserializeOwned;
use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};

use crate::error::Error;

/// A buffered HTTP request as a handler sees it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string, e.g. `/orders/7/cancel`.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The path split on `/`, without empty segments: `/orders/7` gives
    /// `["orders", "7"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The value of a query parameter, if present (no percent-decoding: the
    /// API's parameters are numbers and names).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The header `name` as text, `None` when absent. A header the API
    /// defines but cannot read is the client's mistake, never "absent": a
    /// value that is not UTF-8, or the header given twice, is 400.
    pub fn header(&self, name: &str) -> Result<Option<&str>, Error> {
        let mut values = self.headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name));
        let Some((_, value)) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(Error::bad_request(format!("the {name} header may be given only once")));
        }
        std::str::from_utf8(value)
            .map(Some)
            .map_err(|_| Error::bad_request(format!("the {name} header is not valid UTF-8")))
    }

    /// Parses the body as JSON, or answers 400 `invalid-body` with what is
    /// wrong with it.
    /// The API's bodies are JSON objects: an array is refused too, though
    /// serde would read a struct from one.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if self.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::refused(400, "invalid-body", "the body must be a JSON object"));
        }
        serde_json::from_slice(&self.body).map_err(|err| Error::refused(400, "invalid-body", err.to_string()))
    }
}

/// A buffered HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            // Serializing our own plain data types cannot fail.
            body: serde_json::to_vec(value).expect("serializable response"),
        }
    }

    /// The API's error shape: `{"error":"<code>","message":"..."}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": code, "message": message }))
    }
}

/// Reads the incoming request, runs `handler` and writes its response.
pub fn serve(request: IncomingRequest, out: ResponseOutparam, handler: impl FnOnce(Request) -> Response) {
    let response = match read(request) {
        Ok(request) => handler(request),
        Err(message) => Error::bad_request(message).into_response(),
    };
    write(response, out);
}

fn read(request: IncomingRequest) -> Result<Request, String> {
    let method = match request.method() {
        Method::Get => "GET".to_string(),
        Method::Post => "POST".to_string(),
        Method::Put => "PUT".to_string(),
        Method::Delete => "DELETE".to_string(),
        Method::Patch => "PATCH".to_string(),
        Method::Head => "HEAD".to_string(),
        Method::Options => "OPTIONS".to_string(),
        Method::Other(other) => other,
        other => format!("{other:?}").to_uppercase(),
    };
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (path_with_query, None),
    };
    let headers = request.headers().entries();
    let body = request.consume().map_err(|()| "request body already consumed")?;
    let stream = body.stream().map_err(|()| "request body unreadable")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(err) => return Err(format!("failed to read request body: {err:?}")),
        }
    }
    drop(stream);
    Ok(Request {
        method,
        path,
        query,
        headers,
        body: bytes,
    })
}

fn write(response: Response, out: ResponseOutparam) {
    let headers = Fields::new();
    for (name, value) in &response.headers {
        // Our own header names and values are always valid.
        let _ = headers.append(name, value.as_bytes());
    }
    let outgoing = OutgoingResponse::new(headers);
    let _ = outgoing.set_status_code(response.status);
    // `body` can only fail when called twice.
    let body = outgoing.body().expect("first call to body");
    ResponseOutparam::set(out, Ok(outgoing));
    {
        let stream = body.write().expect("first call to write");
        for chunk in response.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}
