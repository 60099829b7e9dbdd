//! The rentcar (fleet) bounded context.
//!
//! An admin registers cars with a stock count (`POST /cars`). Rentcar listens
//! to the `payment` topic: an approved payment reserves the cars if enough are
//! available, otherwise the reservation is rejected (and payment refunds);
//! a cancelled or refunded payment releases what was reserved. Every change of a car is
//! published on the `rentcar` topic with a snapshot of the car, so that read
//! models never need to ask rentcar. The stock check is a single conditional
//! `UPDATE`, so no car is ever over-booked.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::events::publish;
use rentcar_sdk::{Component, Envelope, Error, Events as _, Id, Page, Params, Request, Response, Router, config};
use serde::{Deserialize, Serialize};

/// Bounds a registration can ask for; beyond them it is surely a typo.
const MAX_STOCK: u32 = 1_000_000;
const MAX_NAME_CHARS: usize = 200;

struct Fleet;

impl Component for Fleet {
    const MIGRATIONS: &'static [&'static str] = &[
        "CREATE TABLE cars (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            stock INTEGER NOT NULL,
            available INTEGER NOT NULL CHECK (available >= 0 AND available <= stock),
            version INTEGER NOT NULL
        )",
        "CREATE TABLE reservations (
            order_id INTEGER PRIMARY KEY,
            car_id INTEGER NOT NULL,
            qty INTEGER NOT NULL,
            status TEXT NOT NULL
        )",
    ];

    fn routes() -> Router {
        Router::new()
            .post("/cars", register)
            .get("/cars", list)
            .get("/cars/:id", get)
            .get("/fleet", fleet)
    }

    fn on_event(event: &Envelope) -> Result<(), Error> {
        match Heard::read(event)? {
            Some(Heard::PaymentApproved(payment)) => reserve(payment),
            Some(Heard::PaymentCancelled(payment) | Heard::PaymentRefunded(payment)) => release(payment),
            // Other types on the payment topic hold no car.
            None => Ok(()),
        }
    }

    fn reset() -> Result<(), Error> {
        Err(Error::internal(
            "the fleet is the source of truth, not built from events",
        ))
    }
}

rentcar_sdk::export!(Fleet);

/// A car as the API and the events show it. `version` grows with every
/// change, so a read model can ignore stale snapshots.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Car {
    id: Id,
    name: String,
    stock: u32,
    available: u32,
    version: i64,
}

const SELECT: &str = "SELECT id, name, stock, available, version FROM cars";

fn from_row(row: &Row) -> Result<Car, Error> {
    Ok(Car {
        id: row.get(0)?,
        name: row.text(1)?,
        stock: row.get(2)?,
        available: row.get(3)?,
        version: row.int(4)?,
    })
}

fn find(car_id: Id) -> Result<Option<Car>, Error> {
    db::query_row(&format!("{SELECT} WHERE id = ?"), &[car_id.into()])?
        .as_ref()
        .map(from_row)
        .transpose()
}

rentcar_sdk::events! {
    /// What rentcar hears on the `payment` topic.
    enum Heard {
        PaymentApproved(PaymentEvent),
        PaymentCancelled(PaymentEvent),
        PaymentRefunded(PaymentEvent),
    }
}

rentcar_sdk::events! {
    /// What rentcar publishes on the `rentcar` topic.
    enum Published {
        CarRegistered(Registered),
        CarReserved(Reservation),
        ReservationRejected(Reservation),
        CarReleased(Reservation),
    }
}

/// The part of a payment event rentcar needs.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentEvent {
    id: Id,
    order_id: Id,
    car_id: Id,
    qty: u32,
}

#[derive(Serialize, Deserialize)]
struct Registered {
    car: Car,
}

/// What happened to an order's reservation, with the car's snapshot after
/// it (none when nothing changed: a rejection).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    order_id: Id,
    payment_id: Id,
    car_id: Id,
    qty: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    car: Option<Car>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Reservation {
    fn of(payment: &PaymentEvent, car: Option<Car>, reason: Option<String>) -> Reservation {
        Reservation {
            order_id: payment.order_id,
            payment_id: payment.id,
            car_id: payment.car_id,
            qty: payment.qty,
            car,
            reason,
        }
    }
}

fn reserve(payment: PaymentEvent) -> Result<(), Error> {
    let seen = db::query_row(
        "SELECT 1 FROM reservations WHERE order_id = ?",
        &[payment.order_id.into()],
    )?;
    if seen.is_some() {
        return Ok(());
    }
    let taken = db::execute(
        "UPDATE cars SET available = available - ?1, version = version + 1 WHERE id = ?2 AND available >= ?1",
        &[payment.qty.into(), payment.car_id.into()],
    )?;
    let (status, event) = if taken.rows_affected == 1 {
        let car = find(payment.car_id)?;
        ("ACTIVE", Published::CarReserved(Reservation::of(&payment, car, None)))
    } else {
        let reason = match find(payment.car_id)? {
            Some(car) => format!(
                "only {} of car {} available, {} asked",
                car.available, car.id, payment.qty
            ),
            None => format!("no car {}", payment.car_id),
        };
        let rejected = Reservation::of(&payment, None, Some(reason));
        ("REJECTED", Published::ReservationRejected(rejected))
    };
    db::execute(
        "INSERT INTO reservations (order_id, car_id, qty, status) VALUES (?, ?, ?, ?)",
        &[
            payment.order_id.into(),
            payment.car_id.into(),
            payment.qty.into(),
            status.into(),
        ],
    )?;
    publish(payment.order_id, &event)
}

fn release(payment: PaymentEvent) -> Result<(), Error> {
    let released = db::execute(
        "UPDATE reservations SET status = 'RELEASED' WHERE order_id = ? AND status = 'ACTIVE'",
        &[payment.order_id.into()],
    )?;
    if released.rows_affected == 0 {
        // Rejected, or released before: nothing is held for this order. Or
        // not reserved yet, its approval coming late (replayed from the
        // dead letters): a released reservation stands in for it, so that
        // the approval, when it comes, holds no car for a payment cancelled.
        db::execute(
            "INSERT OR IGNORE INTO reservations (order_id, car_id, qty, status) VALUES (?, ?, ?, 'RELEASED')",
            &[payment.order_id.into(), payment.car_id.into(), payment.qty.into()],
        )?;
        return Ok(());
    }
    db::execute(
        "UPDATE cars SET available = available + ?, version = version + 1 WHERE id = ?",
        &[payment.qty.into(), payment.car_id.into()],
    )?;
    let car = find(payment.car_id)?;
    let released = Published::CarReleased(Reservation::of(&payment, car, None));
    publish(payment.order_id, &released)
}

fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let rows = db::query(&format!("{SELECT} WHERE id > ? ORDER BY id LIMIT ?"), &page.params())?;
    let cars = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.answer(cars, |car| car.id.get()))
}

fn get(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let car = find(id)?.ok_or_else(|| Error::not_found(format!("no car {id}")))?;
    Ok(Response::json(200, &car))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCar {
    name: String,
    stock: u32,
}

/// Only an admin registers cars.
fn register(request: &Request, _: &Params) -> Result<Response, Error> {
    request.caller()?.require(rentcar_sdk::caller::ADMIN)?;
    let new: NewCar = request.json()?;
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::bad_request(format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if new.stock > MAX_STOCK {
        return Err(Error::bad_request(format!("stock must be at most {MAX_STOCK}")));
    }
    let changes = db::execute(
        "INSERT INTO cars (name, stock, available, version) VALUES (?1, ?2, ?2, 1)",
        &[name.into(), new.stock.into()],
    )?;
    let id = Id::new(changes.last_insert_id)
        .ok_or_else(|| Error::internal(format!("car inserted as id {}", changes.last_insert_id)))?;
    let car = Car {
        id,
        name: name.to_string(),
        stock: new.stock,
        available: new.stock,
        version: 1,
    };
    let response = Response::json(201, &car);
    publish(format!("car-{id}"), &Published::CarRegistered(Registered { car }))?;
    Ok(response)
}

/// Where this fleet is, from the host's configuration (`wasi:config`).
fn fleet(_: &Request, _: &Params) -> Result<Response, Error> {
    let setting = |key: &str| config::get(key).ok().flatten();
    let (models, stock) = db::query_row("SELECT COUNT(*), COALESCE(SUM(stock), 0) FROM cars", &[])?
        .map(|row| Ok::<_, Error>((row.int(0)?, row.int(1)?)))
        .transpose()?
        .unwrap_or((0, 0));
    Ok(Response::json(
        200,
        &serde_json::json!({
            "country": setting("country"),
            "region": setting("region"),
            "models": models,
            "stock": stock,
        }),
    ))
}
