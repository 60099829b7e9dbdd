//! A component for the host's own tests, never deployed: it publishes events
//! on demand and records the events it receives, so that tests can check
//! delivery order, dead letters and replays.
//!
//! - `POST /probe/publish` `{"keys","count","poison","from"}`: publishes
//!   `count` events on its own topic (its name), round-robin over `keys`
//!   keys, each with a per-key sequence number counted from `from` (0), in
//!   one transaction.
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
//! Routes match any first segment (`/*/seen`): loaded under another name
//! (`sink`, routed at `/sink`), the probe answers `/sink/seen` the same way.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db;
use rentcar_sdk::events::publish;
use rentcar_sdk::{Component, Envelope, Error, Events as _, Params, Request, Response, Router};
use serde::{Deserialize, Serialize};

struct Probe;

impl Component for Probe {
    const MIGRATIONS: &'static [&'static str] = &[
        "CREATE TABLE seen (n INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, seq INTEGER NOT NULL)",
        "CREATE TABLE fixed (yes INTEGER NOT NULL)",
        "CREATE TABLE blobs (b BLOB)",
    ];

    fn routes() -> Router {
        Router::new()
            .post("/*/publish", publish_many)
            .post("/*/split", split)
            .post("/*/fix", fix)
            .post("/*/fill", fill)
            .post("/*/free", free)
            .get("/*/seen", seen)
    }

    fn on_event(event: &Envelope) -> Result<(), Error> {
        let Some(Probed::Probed(payload)) = Probed::read(event)? else {
            return Err(Error::internal(format!("unexpected {}", event.event_type)));
        };
        let fixed = db::query_row("SELECT 1 FROM fixed", &[])?.is_some();
        if payload.poison && !fixed {
            return Err(Error::internal(format!(
                "poisoned event {} of key {}",
                payload.seq, event.key
            )));
        }
        // An event's effect must commit with its inbox row, at the end.
        if !matches!(db::commit(), Err(db::Error::Denied(_))) {
            return Err(Error::internal("the host let a delivery commit midway"));
        }
        db::execute(
            "INSERT INTO seen (key, seq) VALUES (?, ?)",
            &[event.key.as_str().into(), payload.seq.into()],
        )?;
        Ok(())
    }

    fn reset() -> Result<(), Error> {
        db::execute("DELETE FROM seen", &[])?;
        Ok(())
    }
}

rentcar_sdk::export!(Probe);

rentcar_sdk::events! {
    enum Probed {
        Probed(Payload),
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    seq: i64,
    #[serde(default)]
    poison: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    keys: u32,
    count: u32,
    #[serde(default)]
    poison: bool,
    #[serde(default)]
    from: i64,
}

fn publish_many(request: &Request, _: &Params) -> Result<Response, Error> {
    let request: PublishRequest = request.json()?;
    let keys = request.keys.max(1);
    for i in 0..request.count {
        let payload = Payload {
            seq: request.from + i64::from(i / keys),
            poison: request.poison,
        };
        publish(format!("k{}", i % keys), &Probed::Probed(payload))?;
    }
    Ok(Response::json(202, &serde_json::json!({ "published": request.count })))
}

/// Records `("split", 1)`, commits, records `("split", 2)` and fails.
fn split(_: &Request, _: &Params) -> Result<Response, Error> {
    let record = |seq: i64| db::execute("INSERT INTO seen (key, seq) VALUES ('split', ?)", &[seq.into()]);
    record(1)?;
    db::commit()?;
    record(2)?;
    Err(Error::internal("failed after a commit midway"))
}

fn fix(_: &Request, _: &Params) -> Result<Response, Error> {
    db::execute("INSERT INTO fixed (yes) VALUES (1)", &[])?;
    Ok(Response::json(200, &serde_json::json!({ "fixed": true })))
}

#[derive(Deserialize)]
struct FillRequest {
    size: i64,
}

/// Writes blobs of `size` bytes, each committed, until the database is
/// full; answers how many it wrote. (SQLite ends the transaction of the
/// write that does not fit, which fails the invocation: the blobs before
/// it stay.)
fn fill(request: &Request, _: &Params) -> Result<Response, Error> {
    let size = request.json::<FillRequest>()?.size;
    let mut blobs = 0;
    while db::execute("INSERT INTO blobs VALUES (zeroblob(?))", &[size.into()]).is_ok() {
        blobs += 1;
        db::commit()?;
    }
    Ok(Response::json(200, &serde_json::json!({ "blobs": blobs })))
}

fn free(_: &Request, _: &Params) -> Result<Response, Error> {
    db::execute("DELETE FROM blobs", &[])?;
    Ok(Response::json(200, &serde_json::json!({ "freed": true })))
}

/// What the handler applied, in order.
fn seen(_: &Request, _: &Params) -> Result<Response, Error> {
    let seen = db::query("SELECT key, seq FROM seen ORDER BY n", &[])?
        .iter()
        .map(|row| Ok(serde_json::json!({ "key": row.text(0)?, "seq": row.int(1)? })))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Response::json(200, &seen))
}
