//! A misbehaving component for the host's isolation tests, never deployed.
//! Each route attacks the host in its own way:
//!
//! - `/hostile/loop`: spins forever;
//! - `/hostile/alloc`: allocates without bound;
//! - `/hostile/recurse`: recurses until the stack overflows;
//! - `/hostile/huge`: answers with a 100 MiB body;
//! - `/hostile/trap`: panics (a trap) on every call;
//! - `/hostile/escape`: tries to read the environment, the filesystem and
//!   the network, and reports what it got;
//! - `/hostile/sql/rollback`: ends the host's transaction with
//!   `INSERT OR ROLLBACK`, then writes again (`/hostile/sql/count` counts
//!   what was kept);
//! - `/hostile/sql/sequence`: rewrites `sqlite_sequence`, where the host's
//!   outbox keeps its ids;
//! - `/hostile/sql/forever`: a statement that never ends;
//! - `/hostile/sql/fill`: writes 100 KiB blobs until the database is full.
//!
//! The SQL attacks answer 200 with `{"result": ...}`, the outcome the guest
//! saw, when the host lets the guest go on.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use std::hint::black_box;

use rentcar_sdk::{Request, Response, db};
use wasip2::http::types::{Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

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
        db::migrate(&["CREATE TABLE t (k INTEGER PRIMARY KEY)", "CREATE TABLE blobs (b BLOB)"])
            .map_err(|err| format!("{err:?}"))
    }

    fn reset() -> Result<(), String> {
        Ok(())
    }
}

impl event_handler::Guest for Component {
    fn handle(_event: Event) -> Result<(), String> {
        panic!("hostile handler")
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: ResponseOutparam) {
        if request.path_with_query().as_deref() == Some("/hostile/huge") {
            return flood(out);
        }
        rentcar_sdk::serve(request, out, route);
    }
}

fn route(request: Request) -> Response {
    match request.segments().as_slice() {
        ["hostile", "loop"] => loop {
            black_box(());
        },
        ["hostile", "alloc"] => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 1024 * 1024]));
            }
        }
        ["hostile", "recurse"] => Response::json(200, &recurse(black_box(1))),
        ["hostile", "trap"] => panic!("trapping on purpose"),
        ["hostile", "escape"] => escape(),
        ["hostile", "sql", attack] => sql(attack),
        _ => Response::not_found("no such attack"),
    }
}

#[allow(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(frame[depth as usize % 64] + 1) + frame[0]
}

fn flood(out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("first call to body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("first call to write");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..1600 {
        if stream.blocking_write_and_flush(&chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn sql(attack: &str) -> Response {
    let result = match attack {
        "rollback" => {
            let _ = db::execute("INSERT OR ROLLBACK INTO t VALUES (1)", &[]);
            let _ = db::execute("INSERT OR ROLLBACK INTO t VALUES (1)", &[]);
            format!("{:?}", db::execute("INSERT INTO t VALUES (2)", &[]))
        }
        "count" => format!(
            "{:?}",
            db::query_row("SELECT COUNT(*) FROM t", &[]).map(|row| row.map(|r| r.int(0)))
        ),
        "sequence" => format!(
            "{:?}",
            db::execute("UPDATE sqlite_sequence SET seq = 9223372036854775807", &[])
        ),
        "fill" => {
            let fill = || loop {
                db::execute("INSERT INTO blobs VALUES (zeroblob(100000))", &[])?;
            };
            let result: Result<(), db::Error> = fill();
            format!("{result:?}")
        }
        "forever" => format!(
            "{:?}",
            db::query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
                &[]
            )
            .map(|rows| rows.len())
        ),
        _ => return Response::not_found("no such attack"),
    };
    Response::json(200, &serde_json::json!({ "result": result }))
}

fn escape() -> Response {
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let file = std::fs::read_to_string("/etc/passwd")
        .map(|s| s.len())
        .map_err(|e| e.to_string());
    let dir = std::fs::read_dir("/").map(|d| d.count()).map_err(|e| e.to_string());
    let net = std::net::TcpStream::connect("127.0.0.1:22")
        .map(|_| ())
        .map_err(|e| e.to_string());
    Response::json(
        200,
        &serde_json::json!({
            "env": env,
            "args": args,
            "file": format!("{file:?}"),
            "dir": format!("{dir:?}"),
            "net": format!("{net:?}"),
        }),
    )
}

export!(Component);
wasip2::http::proxy::export!(Component);
