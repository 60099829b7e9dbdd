//! The availability view (CQRS read model).
//!
//! Built only from the events rentcar publishes on the `rentcar` topic; it
//! never reads another context's data. Each event carries a snapshot of the
//! car with a version, and a snapshot older than the one stored is ignored,
//! so redelivery and reordering cannot move the view backwards.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::{Error, Page, Params, Request, Response, Router};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    path: "../../wit",
    world: "rentcar:host/view",
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
    /// The view is built only from events: dropping it lets a replay of the
    /// log rebuild it.
    fn reset() -> Result<(), String> {
        db::execute("DELETE FROM availability", &[]).map_err(|err| err.to_string())?;
        Ok(())
    }

    fn init() -> Result<(), String> {
        db::migrate(&["CREATE TABLE availability (
                car_id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                stock INTEGER NOT NULL,
                available INTEGER NOT NULL,
                version INTEGER NOT NULL
            )"])
        .map_err(|err| err.to_string())
    }
}

#[derive(Deserialize)]
struct Snapshot {
    car: Option<Car>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Car {
    id: i64,
    name: String,
    stock: i64,
    available: i64,
    version: i64,
}

impl event_handler::Guest for Component {
    fn handle(event: Event) -> Result<(), String> {
        let snapshot: Snapshot =
            serde_json::from_str(&event.payload).map_err(|err| format!("bad {} payload: {err}", event.event_type))?;
        let Some(car) = snapshot.car else {
            return Ok(());
        };
        db::execute(
            "INSERT INTO availability (car_id, name, stock, available, version) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (car_id) DO UPDATE SET name = excluded.name, stock = excluded.stock,
                 available = excluded.available, version = excluded.version
             WHERE excluded.version > availability.version",
            &[
                car.id.into(),
                car.name.into(),
                car.stock.into(),
                car.available.into(),
                car.version.into(),
            ],
        )
        .map_err(|err| err.to_string())?;
        Ok(())
    }
}

/// What `GET /availability` shows of a car.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Availability {
    car_id: i64,
    name: String,
    stock: i64,
    available: i64,
}

fn from_row(row: Row) -> Availability {
    Availability {
        car_id: row.int(0),
        name: row.text(1),
        stock: row.int(2),
        available: row.int(3),
    }
}

const SELECT: &str = "SELECT car_id, name, stock, available FROM availability";

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
        rentcar_sdk::serve(request, out, |request| {
            Router::new()
                .get("/availability", list)
                .get("/availability/:id", get)
                .handle(&request)
        });
    }
}

/// The view a page at a time, in car id order (`?after=` is a car id).
fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let rows = db::query(
        &format!("{SELECT} WHERE car_id > ? ORDER BY car_id LIMIT ?"),
        &page.params(),
    )?;
    Ok(page.answer(rows.into_iter().map(from_row).collect(), |car| car.car_id))
}

fn get(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let row = db::query_row(&format!("{SELECT} WHERE car_id = ?"), &[id.into()])?;
    Ok(match row {
        Some(row) => Response::json(200, &from_row(row)),
        None => Response::not_found(&format!("no car {id} in the availability view")),
    })
}

export!(Component);
wasip2::http::proxy::export!(Component);
