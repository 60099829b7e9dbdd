//! The native ceiling of `cargo xtask bench`: the same work as the rentcar
//! components, as a plain axum + rusqlite program. Each context keeps its
//! own SQLite database (WAL, `synchronous=NORMAL`, 1 KiB pages, like the host), behind an
//! async mutex held for the whole transaction (like the host), and
//! `POST /orders` pays in-process with the same statements as payment and
//! order, outbox row included. With `--events` it also does what the
//! host's relays and consumers do with that outbox row (see `events`).
//!
//! `native-baseline --listen 127.0.0.1:0 --data-dir DIR [--events]` prints
//! `listening on http://ADDR` on stderr.

mod events;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Json, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

/// The same allocator as the host.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Dbs {
    order: Mutex<Connection>,
    payment: Mutex<Connection>,
    /// The availability `GET /availability` reads.
    view: Mutex<Connection>,
    /// With `--events`.
    events: Option<events::Events>,
}

fn open(path: PathBuf, schema: &str) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch("PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let dir = PathBuf::from(flag("--data-dir").unwrap_or_else(|| "native-data".into()));
    std::fs::create_dir_all(&dir)?;
    let with_events = args.iter().any(|a| a == "--events");
    let dbs = Arc::new(Dbs {
        order: Mutex::new(open(
            dir.join("order.db"),
            &format!(
                "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, car_id INTEGER NOT NULL, qty INTEGER NOT NULL,
                    customer TEXT NOT NULL, status TEXT NOT NULL, payment_id INTEGER NOT NULL, idempotency_key TEXT);
                 CREATE UNIQUE INDEX IF NOT EXISTS orders_by_idempotency_key ON orders (idempotency_key)
                    WHERE idempotency_key IS NOT NULL;
                 {} {}",
                events::INBOX,
                events::OUTBOX
            ),
        )?),
        payment: Mutex::new(open(
            dir.join("payment.db"),
            &format!(
                "CREATE TABLE IF NOT EXISTS payments (id INTEGER PRIMARY KEY AUTOINCREMENT, order_id INTEGER NOT NULL,
                    car_id INTEGER NOT NULL, qty INTEGER NOT NULL, customer TEXT NOT NULL, status TEXT NOT NULL);
                 CREATE INDEX IF NOT EXISTS payments_by_order ON payments (order_id);
                 {} {}",
                events::INBOX,
                events::OUTBOX
            ),
        )?),
        view: Mutex::new(open(
            dir.join("view.db"),
            &format!(
                "CREATE TABLE IF NOT EXISTS availability (car_id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                    stock INTEGER NOT NULL, available INTEGER NOT NULL, version INTEGER NOT NULL);
                 {}",
                events::INBOX
            ),
        )?),
        events: with_events.then(|| events::Events::open(&dir)).transpose()?,
    });
    if with_events {
        tokio::spawn(events::run(dbs.clone()));
    }
    let app = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/cars", post(register))
        .route("/availability", get(availability))
        .route("/availability/{id}", get(availability_of))
        .route("/orders", post(order))
        // Orders whose events are not all applied yet (0 without `--events`).
        .route(
            "/lag",
            get(|State(dbs): State<Arc<Dbs>>| async move {
                Json(json!({ "lag": dbs.events.as_ref().map_or(0, events::Events::lag) }))
            }),
        )
        .with_state(dbs);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn failed(err: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
}

#[derive(Deserialize)]
struct NewCar {
    name: String,
    stock: u32,
}

async fn register(State(dbs): State<Arc<Dbs>>, Json(car): Json<NewCar>) -> Response {
    let conn = dbs.view.lock().await;
    let id = match conn.execute(
        "INSERT INTO availability (name, stock, available, version) VALUES (?1, ?2, ?2, 1)",
        params![car.name, car.stock],
    ) {
        Ok(_) => conn.last_insert_rowid(),
        Err(err) => return failed(err),
    };
    // The fleet holds the same car, under the same id (setup, not measured).
    if let Some(events) = &dbs.events
        && let Err(err) = events.fleet.lock().await.execute(
            "INSERT INTO cars (id, name, stock, available, version) VALUES (?1, ?2, ?3, ?3, 1)",
            params![id, car.name, car.stock],
        )
    {
        return failed(err);
    }
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": car.name, "stock": car.stock, "available": car.stock })),
    )
        .into_response()
}

fn availability_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<serde_json::Value> {
    Ok(
        json!({ "carId": row.get::<_, i64>(0)?, "name": row.get::<_, String>(1)?,
               "stock": row.get::<_, i64>(2)?, "available": row.get::<_, i64>(3)? }),
    )
}

async fn availability(State(dbs): State<Arc<Dbs>>) -> Response {
    let conn = dbs.view.lock().await;
    let rows = conn
        .prepare_cached("SELECT car_id, name, stock, available FROM availability ORDER BY car_id")
        .and_then(|mut stmt| {
            stmt.query_map([], availability_json)?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    match rows {
        Ok(rows) => Json(rows).into_response(),
        Err(err) => failed(err),
    }
}

async fn availability_of(State(dbs): State<Arc<Dbs>>, Path(id): Path<i64>) -> Response {
    let conn = dbs.view.lock().await;
    let row = conn
        .prepare_cached("SELECT car_id, name, stock, available FROM availability WHERE car_id = ?")
        .and_then(|mut stmt| stmt.query_row([id], availability_json).optional());
    match row {
        Ok(Some(row)) => Json(row).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => failed(err),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewOrder {
    car_id: u64,
    qty: u32,
    customer: String,
}

/// `POST /orders` runs as a task of its own, as in the host: a client that
/// hangs up must not cut it short between its `BEGIN` and `COMMIT` (the
/// connection would be left inside a transaction).
async fn order(State(dbs): State<Arc<Dbs>>, Json(new): Json<NewOrder>) -> Response {
    tokio::spawn(place(dbs, new)).await.unwrap_or_else(failed)
}

/// The same transactions as order -> payment in the host: order's database
/// is held while payment commits, then order commits.
async fn place(dbs: Arc<Dbs>, new: NewOrder) -> Response {
    let order = dbs.order.lock().await;
    let result: rusqlite::Result<serde_json::Value> = (|| {
        order.execute_batch("BEGIN")?;
        order
            .prepare_cached("SELECT id FROM orders WHERE idempotency_key = ?")?
            .query_row([""], |_| Ok(()))
            .optional()?;
        Ok(json!(null))
    })();
    if let Err(err) = result {
        let _ = order.execute_batch("ROLLBACK");
        return failed(err);
    }
    let payment_id = {
        let payment = dbs.payment.lock().await;
        let paid: rusqlite::Result<i64> = (|| {
            payment.execute_batch("BEGIN")?;
            payment
                .prepare_cached(
                    "INSERT INTO payments (id, order_id, car_id, qty, customer, status)
                     SELECT next, next, ?, ?, ?, 'AUTHORIZED'
                     FROM (SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'payments'), 0) + 1 AS next)",
                )?
                .execute(params![new.car_id, new.qty, new.customer])?;
            let id = payment.last_insert_rowid();
            let payload = json!({ "id": id, "orderId": id, "carId": new.car_id, "qty": new.qty,
                                  "customer": new.customer, "status": "AUTHORIZED" })
            .to_string();
            payment
                .prepare_cached(
                    "INSERT INTO _rc_outbox (event_id, topic, key, type, time, schema_version, payload)
                     VALUES (?, 'payment', ?, 'PaymentAuthorized', 0, 1, ?)",
                )?
                .execute(params![format!("evt-{id}"), id.to_string(), payload])?;
            payment.execute_batch("COMMIT")?;
            Ok(id)
        })();
        match paid {
            Ok(id) => id,
            Err(err) => {
                let _ = payment.execute_batch("ROLLBACK");
                let _ = order.execute_batch("ROLLBACK");
                return failed(err);
            }
        }
    };
    let placed: rusqlite::Result<()> = (|| {
        order
            .prepare_cached(
                "INSERT INTO orders (id, car_id, qty, customer, status, payment_id, idempotency_key)
                 VALUES (?, ?, ?, ?, 'PAID', ?, NULL)",
            )?
            .execute(params![payment_id, new.car_id, new.qty, new.customer, payment_id])?;
        order
            .prepare_cached(
                "INSERT INTO _rc_outbox (event_id, topic, key, type, time, schema_version, payload)
                 VALUES (?, 'order', ?, 'OrderPlaced', 0, 1, ?)",
            )?
            .execute(params![
                format!("placed-{payment_id}"),
                payment_id.to_string(),
                json!({ "orderId": payment_id, "paymentId": payment_id }).to_string()
            ])?;
        order.execute_batch("COMMIT")
    })();
    if placed.is_ok()
        && let Some(events) = &dbs.events
    {
        events.placed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        events.wake.notify_one();
    }
    match placed {
        Ok(()) => (
            StatusCode::CREATED,
            Json(
                json!({ "id": payment_id, "carId": new.car_id, "qty": new.qty, "customer": new.customer,
                         "status": "PAID", "paymentId": payment_id }),
            ),
        )
            .into_response(),
        Err(err) => {
            let _ = order.execute_batch("ROLLBACK");
            failed(err)
        }
    }
}
