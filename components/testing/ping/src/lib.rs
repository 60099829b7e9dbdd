//! The trivial component of benchmark scenario 1 (pure dispatch): it imports
//! nothing but `wasi:http` and answers every request with `pong`, so the
//! same file runs in `rentcar-host` and in `wasmtime serve`.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Ping;

impl wasip2::exports::http::incoming_handler::Guest for Ping {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        // `body` and `write` fail only when called twice.
        let body = response.body().expect("first call to body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("first call to write");
        let _ = stream.blocking_write_and_flush(b"pong");
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(Ping);
