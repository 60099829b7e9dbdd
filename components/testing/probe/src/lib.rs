//! A component for the host's own tests, never deployed: it publishes events
//! on demand and records the events it receives, so that tests can check
//! delivery order, dead letters and replays.
//!
//! - `POST /probe/publish` `{"topic","keys","count","poison"}`: publishes
//!   `count` events round-robin over `keys` keys, each with a per-key
//!   sequence number, in one transaction.
//! - `POST /probe/fix`: from now on, poisoned events are accepted.
//! - `GET /probe/seen`: what the handler applied, in order.
//! - `POST /probe/fill` `{"size"}` and `/probe/free`: fill the database up
//!   to its `database_mib` with blobs of `size` bytes, and make room again.
//! - `POST /probe/split`: records `("split", 1)`, commits midway
//!   (`sql.commit`), records `("split", 2)` and fails with a 500: only the
//!   first survives.
//!
//! The handler fails on an event whose payload has `"poison": true` until
//! fixed, and on any event if the host lets it commit midway.
//!
//! Routes go by their last segment: loaded under another name (`sink`,
//! routed at `/sink`), the probe answers `/sink/seen` the same way.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db;
use rentcar_sdk::{Request, Response, publish};
use serde::Deserialize;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "rentcar:host/platform",
    with: {
        "rentcar:host/sql@0.1.0": rentcar_sdk::bindings::rentcar::host::sql,
        "rentcar:host/events@0.1.0": rentcar_sdk::bindings::rentcar::host::events,
        "wasi:config/store@0.2.0-rc.1": rentcar_sdk::bindings::wasi::config::store,
    },
});

use exports::rentcar::host::event_handler::{self, Event};
use exports::rentcar::host::lifecycle;

struct Component;

impl lifecycle::Guest for Component {
    fn init() -> Result<(), String> {
        db::migrate(&[
            "CREATE TABLE seen (n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, seq INTEGER NOT NULL)",
            "CREATE TABLE fixed (yes INTEGER NOT NULL)",
            "CREATE TABLE blobs (b BLOB)",
        ])
        .map_err(|err| err.to_string())
    }

    fn reset() -> Result<(), String> {
        db::execute("DELETE FROM seen", &[]).map_err(|err| err.to_string())?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct Payload {
    seq: i64,
    #[serde(default)]
    poison: bool,
}

impl event_handler::Guest for Component {
    fn handle(event: Event) -> Result<(), String> {
        let payload: Payload = serde_json::from_str(&event.payload).map_err(|err| err.to_string())?;
        let fixed = db::query_row("SELECT 1 FROM fixed", &[])
            .map_err(|err| err.to_string())?
            .is_some();
        if payload.poison && !fixed {
            return Err(format!("poisoned event {} of key {}", payload.seq, event.key));
        }
        // An event's effect must commit with its inbox row, at the end.
        if !matches!(db::commit(), Err(db::Error::Denied(_))) {
            return Err("the host let a delivery commit midway".into());
        }
        db::execute(
            "INSERT INTO seen (key, seq) VALUES (?, ?)",
            &[event.key.into(), payload.seq.into()],
        )
        .map_err(|err| err.to_string())?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    keys: u32,
    count: u32,
    #[serde(default)]
    poison: bool,
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
        rentcar_sdk::serve(request, out, route);
    }
}

/// Routes by the path's last segment, so that the probe also serves under
/// another name (a second component loaded from the same file).
fn route(request: Request) -> Response {
    let result = match (request.method.as_str(), request.segments().as_slice()) {
        ("POST", [_, "publish"]) => match request.json::<PublishRequest>() {
            Ok(publish) => publish_many(&publish),
            Err(response) => return response,
        },
        ("POST", [_, "split"]) => split().map(|()| Response::internal("failed after a commit midway")),
        ("POST", [_, "fix"]) => db::execute("INSERT INTO fixed (yes) VALUES (1)", &[])
            .map(|_| Response::json(200, &serde_json::json!({ "fixed": true })))
            .map_err(|err| err.to_string()),
        ("POST", [_, "fill"]) => match request.json::<FillRequest>() {
            Ok(fill_request) => {
                fill(fill_request.size).map(|blobs| Response::json(200, &serde_json::json!({ "blobs": blobs })))
            }
            Err(response) => return response,
        },
        ("POST", [_, "free"]) => db::execute("DELETE FROM blobs", &[])
            .map(|_| Response::json(200, &serde_json::json!({ "freed": true })))
            .map_err(|err| err.to_string()),
        ("GET", [_, "seen"]) => db::query("SELECT key, seq FROM seen ORDER BY n", &[])
            .map(|rows| {
                let seen: Vec<_> = rows
                    .iter()
                    .map(|row| serde_json::json!({ "key": row.text(0), "seq": row.int(1) }))
                    .collect();
                Response::json(200, &seen)
            })
            .map_err(|err| err.to_string()),
        _ => return Response::not_found("no such route"),
    };
    result.unwrap_or_else(|err| Response::internal(&err))
}

#[derive(Deserialize)]
struct FillRequest {
    size: i64,
}

/// Writes blobs of `size` bytes, each committed, until the database is
/// full; returns how many it wrote. (SQLite ends the transaction of the
/// write that does not fit, which fails the invocation: the blobs before
/// it stay.)
fn fill(size: i64) -> Result<u64, String> {
    let mut blobs = 0;
    while db::execute("INSERT INTO blobs VALUES (zeroblob(?))", &[size.into()]).is_ok() {
        blobs += 1;
        db::commit().map_err(|err| err.to_string())?;
    }
    Ok(blobs)
}

fn split() -> Result<(), String> {
    let record = |seq: i64| {
        db::execute("INSERT INTO seen (key, seq) VALUES ('split', ?)", &[seq.into()]).map_err(|err| err.to_string())
    };
    record(1)?;
    db::commit().map_err(|err| err.to_string())?;
    record(2)?;
    Ok(())
}

fn publish_many(request: &PublishRequest) -> Result<Response, String> {
    let keys = request.keys.max(1);
    for i in 0..request.count {
        let key = format!("k{}", i % keys);
        let seq = i / keys;
        publish(
            &request.topic,
            &key,
            "Probed",
            &serde_json::json!({ "seq": seq, "poison": request.poison }),
        )?;
    }
    Ok(Response::json(202, &serde_json::json!({ "published": request.count })))
}

export!(Component);
wasip2::http::proxy::export!(Component);
