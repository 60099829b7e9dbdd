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
use rentcar_sdk::{Error, Page, Params, Request, Response, Router, config, publish};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    path: "../../wit",
    world: "rentcar:host/rentcar",
    with: {
        "rentcar:host/sql@0.1.0": rentcar_sdk::bindings::rentcar::host::sql,
        "rentcar:host/events@0.1.0": rentcar_sdk::bindings::rentcar::host::events,
        "wasi:config/store@0.2.0-rc.1": rentcar_sdk::bindings::wasi::config::store,
    },
});

use exports::rentcar::host::event_handler::{self, Event};
use exports::rentcar::host::lifecycle;

const TOPIC: &str = "rentcar";
/// Bounds a registration can ask for; beyond them it is surely a typo.
const MAX_STOCK: u32 = 1_000_000;
const MAX_NAME_CHARS: usize = 200;

struct Component;

impl lifecycle::Guest for Component {
    fn reset() -> Result<(), String> {
        Err("the fleet is the source of truth, not built from events".into())
    }

    fn init() -> Result<(), String> {
        db::migrate(&[
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
        ])
        .map_err(|err| err.to_string())
    }
}

/// A car as the API and the events show it. `version` grows with every
/// change, so a read model can ignore stale snapshots.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Car {
    id: i64,
    name: String,
    stock: i64,
    available: i64,
    version: i64,
}

const SELECT: &str = "SELECT id, name, stock, available, version FROM cars";

fn from_row(row: Row) -> Car {
    Car {
        id: row.int(0),
        name: row.text(1),
        stock: row.int(2),
        available: row.int(3),
        version: row.int(4),
    }
}

fn find(car_id: impl Into<db::Value>) -> Result<Option<Car>, db::Error> {
    Ok(db::query_row(&format!("{SELECT} WHERE id = ?"), &[car_id.into()])?.map(from_row))
}

/// The part of a payment event rentcar needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentEvent {
    id: u64,
    order_id: u64,
    car_id: u64,
    qty: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    order_id: u64,
    payment_id: u64,
    car_id: u64,
    qty: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    car: Option<Car>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl event_handler::Guest for Component {
    fn handle(event: Event) -> Result<(), String> {
        let result = match event.event_type.as_str() {
            "PaymentApproved" => reserve(parse(&event)?),
            "PaymentCancelled" | "PaymentRefunded" => release(parse(&event)?),
            _ => Ok(()),
        };
        result.map_err(|err| err.to_string())
    }
}

fn parse(event: &Event) -> Result<PaymentEvent, String> {
    serde_json::from_str(&event.payload).map_err(|err| format!("bad {} payload: {err}", event.event_type))
}

fn reserve(payment: PaymentEvent) -> Result<(), db::Error> {
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
    let (status, event_type, car, reason) = if taken.rows_affected == 1 {
        ("ACTIVE", "CarReserved", find(payment.car_id)?, None)
    } else {
        let reason = match find(payment.car_id)? {
            Some(car) => format!(
                "only {} of car {} available, {} asked",
                car.available, car.id, payment.qty
            ),
            None => format!("no car {}", payment.car_id),
        };
        ("REJECTED", "ReservationRejected", None, Some(reason))
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
    announce(event_type, payment, car, reason)
}

fn release(payment: PaymentEvent) -> Result<(), db::Error> {
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
    announce("CarReleased", payment, car, None)
}

fn announce(
    event_type: &str,
    payment: PaymentEvent,
    car: Option<Car>,
    reason: Option<String>,
) -> Result<(), db::Error> {
    let key = payment.order_id.to_string();
    let reservation = Reservation {
        order_id: payment.order_id,
        payment_id: payment.id,
        car_id: payment.car_id,
        qty: payment.qty,
        car,
        reason,
    };
    publish(TOPIC, &key, event_type, &reservation).map_err(db::Error::Other)
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
        rentcar_sdk::serve(request, out, |request| {
            Router::new()
                .post("/cars", register)
                .get("/cars", list)
                .get("/cars/:id", get)
                .get("/fleet", fleet)
                .handle(&request)
        });
    }
}

fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let rows = db::query(&format!("{SELECT} WHERE id > ? ORDER BY id LIMIT ?"), &page.params())?;
    Ok(page.answer(rows.into_iter().map(from_row).collect(), |car| car.id))
}

fn get(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    Ok(match find(id)? {
        Some(car) => Response::json(200, &car),
        None => Response::not_found(&format!("no car {id}")),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCar {
    name: String,
    stock: u32,
}

fn register(request: &Request, _: &Params) -> Result<Response, Error> {
    let new: NewCar = request.json()?;
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Ok(Response::bad_request(&format!(
            "name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if new.stock > MAX_STOCK {
        return Ok(Response::bad_request(&format!("stock must be at most {MAX_STOCK}")));
    }
    let changes = db::execute(
        "INSERT INTO cars (name, stock, available, version) VALUES (?1, ?2, ?2, 1)",
        &[name.into(), new.stock.into()],
    )?;
    let car = Car {
        id: changes.last_insert_id,
        name: name.to_string(),
        stock: new.stock.into(),
        available: new.stock.into(),
        version: 1,
    };
    let key = format!("car-{}", car.id);
    publish(TOPIC, &key, "CarRegistered", &serde_json::json!({ "car": &car })).map_err(Error::Internal)?;
    Ok(Response::json(201, &car))
}

/// Where this fleet is, from the host's configuration (`wasi:config`).
fn fleet(_: &Request, _: &Params) -> Result<Response, Error> {
    let setting = |key: &str| config::get(key).ok().flatten();
    let cars = db::query_row("SELECT COUNT(*), COALESCE(SUM(stock), 0) FROM cars", &[])?;
    let (models, stock) = cars.map_or((0, 0), |row| (row.int(0), row.int(1)));
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

export!(Component);
wasip2::http::proxy::export!(Component);
