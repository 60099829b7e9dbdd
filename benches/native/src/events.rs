//! `--events`: what the host's relays and consumers do after each order,
//! in-process with the same statements, so that the host running its
//! subscribers has a native ceiling doing the same work.
//!
//! After an order commits, payment's and order's outbox rows are relayed
//! into the log (`bus.db`, the host's schema). Each subscription of
//! `runtime.toml` reads its topic from the log after its position, keeps the
//! event types it wants, and applies them in runs of up to [`RUN`] events
//! per transaction, each event in a savepoint with its inbox row: order
//! checks the authorization, payment approves on `OrderPlaced` and publishes
//! `PaymentApproved` (relayed in turn), rentcar reserves the car and
//! publishes `CarReserved` (relayed in turn), order records the reservation,
//! the view updates, payment skips what it does not refund. Batches start at most every [`LINGER`] under load (the
//! host's default `linger_ms`); relayed rows are deleted and positions
//! saved every [`SAVE_EVERY`], like the host. What the host does on top:
//! a fresh WebAssembly instance per run, and one task per subscription
//! where this is one task for all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, Notify};

use crate::{Dbs, open};

const LINGER: Duration = Duration::from_millis(2);
const SAVE_EVERY: Duration = Duration::from_millis(100);
const BATCH: i64 = 256;
const RUN: usize = 32;

/// The databases only the events touch.
pub struct Events {
    /// Rentcar's fleet: cars and reservations.
    pub fleet: Mutex<Connection>,
    pub bus: Mutex<Connection>,
    /// Woken by every order that commits.
    pub wake: Notify,
    /// Orders placed, and orders whose events the view has applied.
    pub placed: AtomicU64,
    applied: AtomicU64,
}

pub const INBOX: &str =
    "CREATE TABLE IF NOT EXISTS _rc_inbox (event_id TEXT PRIMARY KEY, received_at INTEGER NOT NULL) WITHOUT ROWID;";
pub const OUTBOX: &str =
    "CREATE TABLE IF NOT EXISTS _rc_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
    topic TEXT NOT NULL, key TEXT NOT NULL, type TEXT NOT NULL, time INTEGER NOT NULL,
    schema_version INTEGER NOT NULL, payload TEXT NOT NULL, request_id TEXT);";

impl Events {
    pub fn open(dir: &std::path::Path) -> anyhow::Result<Events> {
        Ok(Events {
            fleet: Mutex::new(open(
                dir.join("rentcar.db"),
                &format!(
                    "CREATE TABLE IF NOT EXISTS cars (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                        stock INTEGER NOT NULL, available INTEGER NOT NULL CHECK (available >= 0 AND available <= stock),
                        version INTEGER NOT NULL);
                     CREATE TABLE IF NOT EXISTS reservations (order_id INTEGER PRIMARY KEY, car_id INTEGER NOT NULL,
                        qty INTEGER NOT NULL, status TEXT NOT NULL);
                     {INBOX} {OUTBOX}"
                ),
            )?),
            bus: Mutex::new(open(
                dir.join("bus.db"),
                "CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                    topic TEXT NOT NULL, key TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL,
                    time INTEGER NOT NULL, schema_version INTEGER NOT NULL, payload TEXT NOT NULL, request_id TEXT);
                 CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, position);
                 CREATE TABLE IF NOT EXISTS positions (consumer TEXT NOT NULL, topic TEXT NOT NULL,
                    position INTEGER NOT NULL, PRIMARY KEY (consumer, topic)) WITHOUT ROWID;",
            )?),
            wake: Notify::new(),
            placed: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        })
    }

    /// Orders whose events are not all applied yet.
    pub fn lag(&self) -> u64 {
        self.placed
            .load(Ordering::Relaxed)
            .saturating_sub(self.applied.load(Ordering::Relaxed))
    }
}

/// An event as a consumer reads it from the log.
struct Event {
    id: String,
    kind: String,
    payload: String,
}

/// A relay's progress through one outbox.
#[derive(Default)]
struct Relay {
    relayed: i64,
    deleted: i64,
    deleted_at: Option<Instant>,
}

impl Relay {
    /// Moves the committed outbox rows into the log.
    async fn drain(&mut self, source: &str, outbox: &Mutex<Connection>, bus: &Mutex<Connection>) -> anyhow::Result<()> {
        loop {
            let rows = {
                let conn = outbox.lock().await;
                let mut stmt = conn.prepare_cached(
                    "SELECT id, event_id, topic, key, type, time, schema_version, payload, request_id
                     FROM _rc_outbox WHERE id > ? ORDER BY id LIMIT ?",
                )?;
                stmt.query_map(params![self.relayed, BATCH], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, String>(7)?,
                        row.get::<_, Option<String>>(8)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let Some(last) = rows.last().map(|row| row.0) else {
                break;
            };
            {
                let conn = bus.lock().await;
                conn.execute_batch("BEGIN")?;
                let mut insert = conn.prepare_cached(
                    "INSERT OR IGNORE INTO events (id, topic, key, type, source, time, schema_version, payload, request_id)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )?;
                for (_, id, topic, key, kind, time, version, payload, request_id) in &rows {
                    insert.execute(params![
                        id, topic, key, kind, source, time, version, payload, request_id
                    ])?;
                }
                // The host's append reads the log's head to wake the
                // topic's dispatchers; nothing here waits on it, but the
                // ceiling pays the same statement.
                conn.prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")?
                    .query_row([], |row| row.get::<_, i64>(0))?;
                conn.execute_batch("COMMIT")?;
            }
            self.relayed = last;
            if (rows.len() as i64) < BATCH {
                break;
            }
        }
        if self.relayed > self.deleted && self.deleted_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY) {
            outbox
                .lock()
                .await
                .prepare_cached("DELETE FROM _rc_outbox WHERE id <= ?")?
                .execute([self.relayed])?;
            (self.deleted, self.deleted_at) = (self.relayed, Some(Instant::now()));
        }
        Ok(())
    }
}

/// What applies an event to a consumer's database.
type Apply = fn(&Connection, &str) -> anyhow::Result<()>;

/// One subscription of `runtime.toml`: a consumer, its topic, the types it
/// wants, and where it stands in the log.
struct Subscription {
    consumer: &'static str,
    topic: &'static str,
    wants: &'static [(&'static str, Apply)],
    position: i64,
}

impl Subscription {
    /// Applies what the log holds after the position; returns how many
    /// events it read.
    async fn deliver(&mut self, bus: &Mutex<Connection>, db: &Mutex<Connection>) -> anyhow::Result<usize> {
        let mut read = 0;
        loop {
            let batch = {
                let conn = bus.lock().await;
                let mut stmt = conn.prepare_cached(
                    "SELECT position, id, type, payload FROM events WHERE topic = ? AND position > ?
                     ORDER BY position LIMIT ?",
                )?;
                stmt.query_map(params![self.topic, self.position, BATCH], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        Event {
                            id: row.get(1)?,
                            kind: row.get(2)?,
                            payload: row.get(3)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let Some(&(last, _)) = batch.last() else {
                return Ok(read);
            };
            read += batch.len();
            let wanted: Vec<(Apply, Event)> = batch
                .into_iter()
                .filter_map(|(_, event)| {
                    let apply = self.wants.iter().find(|(kind, _)| *kind == event.kind)?.1;
                    Some((apply, event))
                })
                .collect();
            for run in wanted.chunks(RUN) {
                apply_run(db, run).await?;
            }
            self.position = last;
        }
    }
}

/// Runs the events of every order as they commit, until the process ends;
/// exits the process if a step fails (its events would be lost).
pub async fn run(dbs: Arc<Dbs>) {
    let Some(events) = &dbs.events else { return };
    let (mut payments, mut orders, mut reservations) = (Relay::default(), Relay::default(), Relay::default());
    let subscription = |consumer, topic, wants| Subscription {
        consumer,
        topic,
        wants,
        position: 0,
    };
    let mut rentcar = subscription("rentcar", "payment", &[("PaymentApproved", reserve as Apply)]);
    let mut order_payments = subscription("order", "payment", &[("PaymentAuthorized", check_order as Apply)]);
    let mut payment_orders = subscription("payment", "order", &[("OrderPlaced", approve_placed as Apply)]);
    let mut order_reservations = subscription("order", "rentcar", &[("CarReserved", record_reservation as Apply)]);
    let mut view = subscription("view", "rentcar", &[("CarReserved", update_view as Apply)]);
    // Payment refunds rejected reservations: it reads rentcar's events and
    // applies none of these.
    let mut payment = subscription("payment", "rentcar", &[]);
    let mut last: Option<Instant> = None;
    let mut saved_at = Instant::now();
    loop {
        events.wake.notified().await;
        if let Some(ready) = last.map(|at| at + LINGER)
            && ready > Instant::now()
        {
            tokio::time::sleep_until(ready.into()).await;
        }
        last = Some(Instant::now());
        let step = async {
            payments.drain("payment", &dbs.payment, &events.bus).await?;
            order_payments.deliver(&events.bus, &dbs.order).await?;
            orders.drain("order", &dbs.order, &events.bus).await?;
            payment_orders.deliver(&events.bus, &dbs.payment).await?;
            payments.drain("payment", &dbs.payment, &events.bus).await?;
            rentcar.deliver(&events.bus, &events.fleet).await?;
            reservations.drain("rentcar", &events.fleet, &events.bus).await?;
            order_reservations.deliver(&events.bus, &dbs.order).await?;
            let applied = view.deliver(&events.bus, &dbs.view).await?;
            events.applied.fetch_add(applied as u64, Ordering::Relaxed);
            payment.deliver(&events.bus, &dbs.payment).await?;
            if saved_at.elapsed() >= SAVE_EVERY {
                let conn = events.bus.lock().await;
                conn.execute_batch("BEGIN")?;
                let mut save = conn
                    .prepare_cached("INSERT OR REPLACE INTO positions (consumer, topic, position) VALUES (?, ?, ?)")?;
                for s in [
                    &rentcar,
                    &order_payments,
                    &payment_orders,
                    &order_reservations,
                    &view,
                    &payment,
                ] {
                    save.execute(params![s.consumer, s.topic, s.position])?;
                }
                conn.execute_batch("COMMIT")?;
                saved_at = Instant::now();
            }
            anyhow::Ok(())
        };
        if let Err(err) = step.await {
            eprintln!("events failed: {err:#}");
            std::process::exit(1);
        }
    }
}

/// Applies a run of events to a consumer's database in one transaction,
/// each in a savepoint with its inbox row (so applied once).
async fn apply_run(db: &Mutex<Connection>, run: &[(Apply, Event)]) -> anyhow::Result<()> {
    let conn = db.lock().await;
    conn.execute_batch("BEGIN")?;
    let applied = (|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (apply, event) in run {
            conn.execute_batch("SAVEPOINT event")?;
            let fresh = conn
                .prepare_cached("INSERT OR IGNORE INTO _rc_inbox (event_id, received_at) VALUES (?, ?)")?
                .execute(params![event.id, now])?;
            if fresh == 1 {
                apply(&conn, &event.payload)?;
            }
            conn.execute_batch("RELEASE event")?;
        }
        anyhow::Ok(())
    })();
    match applied {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Approved {
    id: i64,
    order_id: i64,
    car_id: i64,
    qty: i64,
}

/// Rentcar on `PaymentApproved`: rentcar's statements.
fn reserve(conn: &Connection, payload: &str) -> anyhow::Result<()> {
    let payment: Approved = serde_json::from_str(payload)?;
    let seen = conn
        .prepare_cached("SELECT 1 FROM reservations WHERE order_id = ?")?
        .query_row([payment.order_id], |_| Ok(()))
        .optional()?;
    if seen.is_some() {
        return Ok(());
    }
    let taken = conn
        .prepare_cached(
            "UPDATE cars SET available = available - ?1, version = version + 1 WHERE id = ?2 AND available >= ?1",
        )?
        .execute(params![payment.qty, payment.car_id])?;
    let car = conn
        .prepare_cached("SELECT id, name, stock, available, version FROM cars WHERE id = ?")?
        .query_row([payment.car_id], |row| {
            Ok(
                json!({ "id": row.get::<_, i64>(0)?, "name": row.get::<_, String>(1)?, "stock": row.get::<_, i64>(2)?,
                       "available": row.get::<_, i64>(3)?, "version": row.get::<_, i64>(4)? }),
            )
        })
        .optional()?;
    let (status, kind) = if taken == 1 {
        ("ACTIVE", "CarReserved")
    } else {
        ("REJECTED", "ReservationRejected")
    };
    conn.prepare_cached("INSERT INTO reservations (order_id, car_id, qty, status) VALUES (?, ?, ?, ?)")?
        .execute(params![payment.order_id, payment.car_id, payment.qty, status])?;
    let reservation = json!({ "orderId": payment.order_id, "paymentId": payment.id, "carId": payment.car_id,
                              "qty": payment.qty, "car": car });
    conn.prepare_cached(
        "INSERT INTO _rc_outbox (event_id, topic, key, type, time, schema_version, payload)
         VALUES (?, 'rentcar', ?, ?, 0, 1, ?)",
    )?
    .execute(params![
        format!("reservation-{}", payment.order_id),
        payment.order_id.to_string(),
        kind,
        reservation.to_string()
    ])?;
    Ok(())
}

/// Order on `PaymentAuthorized`: is the order there (else the payment would
/// be abandoned)?
fn check_order(conn: &Connection, payload: &str) -> anyhow::Result<()> {
    let payment: Approved = serde_json::from_str(payload)?;
    conn.prepare_cached("SELECT 1 FROM orders WHERE id = ? AND payment_id = ?")?
        .query_row(params![payment.order_id, payment.id], |_| Ok(()))
        .optional()?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Placed {
    payment_id: i64,
}

/// Payment on `OrderPlaced`: approves the authorized payment and publishes
/// `PaymentApproved`.
fn approve_placed(conn: &Connection, payload: &str) -> anyhow::Result<()> {
    let placed: Placed = serde_json::from_str(payload)?;
    let payment = conn
        .prepare_cached("SELECT id, order_id, car_id, qty, customer, status FROM payments WHERE id = ?")?
        .query_row([placed.payment_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    let Some((id, order_id, car_id, qty, customer, status)) = payment else {
        return Ok(());
    };
    if status != "AUTHORIZED" {
        return Ok(());
    }
    conn.prepare_cached("UPDATE payments SET status = ? WHERE id = ?")?
        .execute(params!["APPROVED", id])?;
    let payload = json!({ "id": id, "orderId": order_id, "carId": car_id, "qty": qty,
                          "customer": customer, "status": "APPROVED" });
    conn.prepare_cached(
        "INSERT INTO _rc_outbox (event_id, topic, key, type, time, schema_version, payload)
         VALUES (?, 'payment', ?, 'PaymentApproved', 0, 1, ?)",
    )?
    .execute(params![
        format!("approved-{id}"),
        order_id.to_string(),
        payload.to_string()
    ])?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reserved {
    order_id: i64,
    payment_id: i64,
    car: Option<Car>,
}

#[derive(Deserialize)]
struct Car {
    id: i64,
    name: String,
    stock: i64,
    available: i64,
    version: i64,
}

/// Order on `CarReserved`: a paid order becomes reserved.
fn record_reservation(conn: &Connection, payload: &str) -> anyhow::Result<()> {
    let reserved: Reserved = serde_json::from_str(payload)?;
    conn.prepare_cached("UPDATE orders SET status = ? WHERE id = ? AND payment_id = ? AND status = ?")?
        .execute(params!["RESERVED", reserved.order_id, reserved.payment_id, "PAID"])?;
    Ok(())
}

/// The view on `CarReserved`: the view's upsert.
fn update_view(conn: &Connection, payload: &str) -> anyhow::Result<()> {
    let Some(car) = serde_json::from_str::<Reserved>(payload)?.car else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO availability (car_id, name, stock, available, version) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (car_id) DO UPDATE SET name = excluded.name, stock = excluded.stock,
             available = excluded.available, version = excluded.version
         WHERE excluded.version > availability.version",
    )?
    .execute(params![car.id, car.name, car.stock, car.available, car.version])?;
    Ok(())
}
