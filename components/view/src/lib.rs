//! The availability view (CQRS read model).
//!
//! Built only from the events rentcar publishes on the `rentcar` topic; it
//! never reads another context's data. Each event carries a snapshot of the
//! car with a version, and a snapshot older than the one stored is ignored,
//! so redelivery and reordering cannot move the view backwards.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::{Component, Envelope, Error, Events as _, Id, Page, Params, Request, Response, Router};
use serde::{Deserialize, Serialize};

struct View;

impl Component for View {
    const MIGRATIONS: &'static [&'static str] = &["CREATE TABLE availability (
        car_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        stock INTEGER NOT NULL,
        available INTEGER NOT NULL,
        version INTEGER NOT NULL
    )"];

    fn routes() -> Router {
        Router::new().get("/availability", list).get("/availability/:id", get)
    }

    /// Every event of rentcar's that carries a car stores its snapshot.
    fn on_event(event: &Envelope) -> Result<(), Error> {
        match Heard::read(event)? {
            Some(Heard::CarRegistered(snapshot))
            | Some(Heard::CarReserved(snapshot))
            | Some(Heard::CarReleased(snapshot))
            | Some(Heard::ReservationRejected(snapshot)) => store(snapshot),
            // Other types rentcar may add say nothing the view shows.
            None => Ok(()),
        }
    }

    /// The view is built only from events: dropping it lets a replay of the
    /// log rebuild it.
    fn reset() -> Result<(), Error> {
        db::execute("DELETE FROM availability", &[])?;
        Ok(())
    }
}

rentcar_sdk::export!(View);

rentcar_sdk::events! {
    /// What the view hears on the `rentcar` topic.
    enum Heard {
        CarRegistered(Snapshot),
        CarReserved(Snapshot),
        CarReleased(Snapshot),
        ReservationRejected(Snapshot),
    }
}

/// The car an event of rentcar's carries, if any (a rejection carries none).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    car: Option<Car>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Car {
    id: Id,
    name: String,
    stock: u32,
    available: u32,
    version: i64,
}

fn store(snapshot: Snapshot) -> Result<(), Error> {
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
    )?;
    Ok(())
}

/// What `GET /availability` shows of a car.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Availability {
    car_id: Id,
    name: String,
    stock: u32,
    available: u32,
}

const SELECT: &str = "SELECT car_id, name, stock, available FROM availability";

fn from_row(row: &Row) -> Result<Availability, Error> {
    Ok(Availability {
        car_id: row.get(0)?,
        name: row.text(1)?,
        stock: row.get(2)?,
        available: row.get(3)?,
    })
}

/// The view a page at a time, in car id order (`?after=` is a car id).
fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let rows = db::query(
        &format!("{SELECT} WHERE car_id > ? ORDER BY car_id LIMIT ?"),
        &page.params(),
    )?;
    let cars = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.answer(cars, |car| car.car_id.get()))
}

fn get(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let row = db::query_row(&format!("{SELECT} WHERE car_id = ?"), &[id.into()])?
        .ok_or_else(|| Error::not_found(format!("no car {id} in the availability view")))?;
    Ok(Response::json(200, &from_row(&row)?))
}
