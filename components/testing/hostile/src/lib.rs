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
//! - `/hostile/sql/fill`: writes 100 KiB blobs until the database is full;
//! - `/hostile/sql/fill-kept/{size}`: writes blobs of `size` bytes, each
//!   committed, until the database is full;
//! - `/hostile/sql/publish-full`: publishes big events until that fails
//!   (into a full database, say), then writes again;
//! - `/hostile/sql/trigger`: a trigger that rewrites `sqlite_sequence`,
//!   compiled into a statement prepared before it;
//! - `/hostile/sql/temp`, `/hostile/sql/pragma`: a TEMP table, and the
//!   host's data path through `pragma_database_list`;
//! - `/hostile/sql/sort`: a sort far larger than SQLite's cache;
//! - `/hostile/sql/result/{mib}`: a query whose result is `mib` MiB;
//! - `/hostile/hold/{mib}/{ms}`: holds memory for a while;
//! - `/hostile/publish/{count}`: publishes `count` events of 200 KiB;
//! - `/hostile/init-plan/{sleep_ms}/{fail}`: makes the next `init` sleep,
//!   and fail if `fail` is 1 (to try a deploy on).
//!
//! The SQL attacks answer 200 with `{"result": ...}`, the outcome the guest
//! saw, when the host lets the guest go on.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use std::hint::black_box;

use rentcar_sdk::events::publish;
use rentcar_sdk::{Error, Request, Response, db};
use serde::{Deserialize, Serialize};
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
    /// Migrates, then follows the plan `/hostile/init-plan` left: a slow
    /// and perhaps failing migration, to try a deploy on.
    fn init() -> Result<(), String> {
        db::migrate(&[
            "CREATE TABLE t (k INTEGER PRIMARY KEY)",
            "CREATE TABLE blobs (b BLOB)",
            "CREATE TABLE init_plan (sleep_ms INTEGER NOT NULL, fail INTEGER NOT NULL)",
        ])
        .map_err(|err| format!("{err:?}"))?;
        let plan = db::query_row("SELECT sleep_ms, fail FROM init_plan", &[]).map_err(|err| format!("{err:?}"))?;
        if let Some(plan) = plan {
            let (sleep_ms, fail) = (plan.get::<u64>(0), plan.int(1));
            std::thread::sleep(std::time::Duration::from_millis(
                sleep_ms.map_err(|err| err.to_string())?,
            ));
            if fail != Ok(0) {
                return Err("failing as planned".into());
            }
        }
        Ok(())
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
        rentcar_sdk::http::serve(request, out, route);
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
        ["hostile", "sql", "fill-kept", size] => {
            // Each blob commits: what fits stays when the database is full.
            let filled = (0..1_000_000).find_map(|_| {
                db::execute("INSERT INTO blobs VALUES (zeroblob(?))", &[number(size).into()])
                    .and_then(|_| db::commit())
                    .err()
            });
            Response::json(200, &serde_json::json!({ "result": format!("{filled:?}") }))
        }
        ["hostile", "sql", "result", mib] => {
            // A query whose rows the host builds before the guest gets them.
            let rows = db::query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) SELECT zeroblob(65536) FROM c",
                &[(number(mib) * 16).into()],
            );
            Response::json(
                200,
                &serde_json::json!({ "result": format!("{:?}", rows.map(|rows| rows.len())) }),
            )
        }
        ["hostile", "sql", attack] => sql(attack),
        ["hostile", "init-plan", sleep_ms, fail] => {
            let plan = [number(sleep_ms).into(), number(fail).into()];
            let planned = db::execute("DELETE FROM init_plan", &[])
                .and_then(|_| db::execute("INSERT INTO init_plan (sleep_ms, fail) VALUES (?, ?)", &plan));
            Response::json(200, &serde_json::json!({ "result": format!("{planned:?}") }))
        }
        ["hostile", "hold", mib, ms] => hold(number(mib), number(ms)),
        ["hostile", "publish", count] => {
            let published: Result<(), Error> = (0..number(count)).try_for_each(|i| publish(i, &big()));
            Response::json(200, &serde_json::json!({ "result": format!("{published:?}") }))
        }
        _ => Error::not_found("no such attack").into_response(),
    }
}

rentcar_sdk::events! {
    enum Published {
        Big(Filler),
    }
}

#[derive(Serialize, Deserialize)]
struct Filler {
    filler: String,
}

/// An event of 200 KiB.
fn big() -> Published {
    Published::Big(Filler {
        filler: "x".repeat(200 * 1024),
    })
}

fn number(text: &str) -> i64 {
    text.parse().unwrap_or(0)
}

/// Holds `mib` MiB of memory for `ms` ms, then answers.
fn hold(mib: i64, ms: i64) -> Response {
    let hoard = black_box(vec![1u8; mib as usize * 1024 * 1024]);
    std::thread::sleep(std::time::Duration::from_millis(ms as u64));
    Response::json(200, &serde_json::json!({ "held": hoard.len() }))
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
            db::query_row("SELECT COUNT(*) FROM t", &[]).map(|row| row.and_then(|r| r.int(0).ok()))
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
        // Fills the database, keeps it, then publishes into the full
        // database, then writes once more: nothing of the last part may
        // commit (the guest answers 500 anyway).
        "publish-full" => {
            let published = (0..50).find_map(|i| publish(i, &big()).err());
            let after = db::execute("INSERT INTO t VALUES (99)", &[]);
            return Error::internal(format!("published: {published:?}, after: {after:?}")).into_response();
        }
        // A statement prepared before a trigger exists is prepared again
        // when it runs next, with the trigger compiled into it.
        "trigger" => {
            let insert = "INSERT INTO t (k) VALUES (?)";
            let first = db::execute(insert, &[1i64.into()]);
            let trigger = db::execute(
                "CREATE TRIGGER rewind AFTER INSERT ON t BEGIN UPDATE sqlite_sequence SET seq = 0; END",
                &[],
            );
            let again = db::execute(insert, &[2i64.into()]);
            format!("first: {first:?}, trigger: {trigger:?}, again: {again:?}")
        }
        "temp" => format!("{:?}", db::execute("CREATE TEMP TABLE hoard (b BLOB)", &[])),
        // Two million rows through a sorter: beyond its cache, SQLite would
        // spill them to temporary files, outside the database's bound.
        "sort" => format!(
            "{:?}",
            db::query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000000) \
                 SELECT x FROM c ORDER BY randomblob(16) LIMIT 1 OFFSET 1999999",
                &[]
            )
            .map(|rows| rows.len())
        ),
        "pragma" => format!(
            "{:?}",
            db::query("SELECT file FROM pragma_database_list", &[])
                .map(|rows| rows.iter().map(|row| row.text(0)).collect::<Vec<_>>())
        ),
        "forever" => format!(
            "{:?}",
            db::query(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
                &[]
            )
            .map(|rows| rows.len())
        ),
        _ => return Error::not_found("no such attack").into_response(),
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
