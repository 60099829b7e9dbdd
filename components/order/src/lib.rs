//! The order bounded context (the core).
//!
//! `POST /orders` records the order and pays for it through a synchronous
//! call to payment in the same invocation: if payment fails or cannot be
//! reached the answer is 503 and the host rolls the order back, so an order
//! without a completed payment never exists. Rentcar's events on the
//! `rentcar` topic then move the order to `RESERVED` or `REJECTED`.
//! `POST /orders/{id}/cancel` cancels the payment synchronously; rentcar
//! releases the cars when it sees `PaymentCancelled`.

#![allow(
    unsafe_code,
    reason = "the export glue that wit-bindgen generates is unsafe"
)]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::{Request, Response};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    path: "../../wit",
    world: "rentcar:host/order",
    with: {
        "rentcar:host/sql@0.1.0": rentcar_sdk::bindings::rentcar::host::sql,
        "rentcar:host/events@0.1.0": rentcar_sdk::bindings::rentcar::host::events,
        "wasi:config/store@0.2.0-rc.1": rentcar_sdk::bindings::wasi::config::store,
        "rentcar:payment/payments@0.1.0": generate,
    },
});

use exports::rentcar::host::event_handler::{self, Event};
use exports::rentcar::host::lifecycle;
use rentcar::payment::payments::{self, CallError};

/// Largest quantity one order may ask for.
const MAX_QTY: u32 = 1_000;

struct Component;

impl lifecycle::Guest for Component {
    fn init() -> Result<(), String> {
        db::migrate(&["CREATE TABLE orders (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                car_id INTEGER NOT NULL,
                qty INTEGER NOT NULL,
                customer TEXT NOT NULL,
                status TEXT NOT NULL,
                payment_id INTEGER
            )"])
        .map_err(|err| err.to_string())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    id: i64,
    car_id: i64,
    qty: i64,
    customer: String,
    status: String,
    payment_id: Option<i64>,
}

const SELECT: &str = "SELECT id, car_id, qty, customer, status, payment_id FROM orders";

fn from_row(row: Row) -> Order {
    Order {
        id: row.int(0),
        car_id: row.int(1),
        qty: row.int(2),
        customer: row.text(3),
        status: row.text(4),
        payment_id: Some(row.int(5)).filter(|id| *id > 0),
    }
}

fn find(order_id: u64) -> Result<Option<Order>, db::Error> {
    Ok(db::query_row(&format!("{SELECT} WHERE id = ?"), &[order_id.into()])?.map(from_row))
}

/// The part of rentcar's reservation events an order needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    order_id: u64,
}

impl event_handler::Guest for Component {
    fn handle(event: Event) -> Result<(), String> {
        let status = match event.event_type.as_str() {
            "CarReserved" => "RESERVED",
            "ReservationRejected" => "REJECTED",
            _ => return Ok(()),
        };
        let reservation: Reservation = serde_json::from_str(&event.payload)
            .map_err(|err| format!("bad {} payload: {err}", event.event_type))?;
        // Only a paid order moves on; one cancelled meanwhile stays cancelled.
        db::execute(
            "UPDATE orders SET status = ? WHERE id = ? AND status = 'PAID'",
            &[status.into(), reservation.order_id.into()],
        )
        .map_err(|err| err.to_string())?;
        Ok(())
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(
        request: wasip2::http::types::IncomingRequest,
        out: wasip2::http::types::ResponseOutparam,
    ) {
        rentcar_sdk::serve(request, out, route);
    }
}

fn route(request: Request) -> Response {
    let result = match (request.method.as_str(), request.segments().as_slice()) {
        ("POST", ["orders"]) => place(&request),
        ("GET", ["orders"]) => db::query(&format!("{SELECT} ORDER BY id"), &[])
            .map(|rows| Response::json(200, &rows.into_iter().map(from_row).collect::<Vec<_>>())),
        ("GET", ["orders", id]) => with_id(id, |id| {
            Ok(match find(id)? {
                Some(order) => Response::json(200, &order),
                None => Response::not_found(&format!("no order {id}")),
            })
        }),
        ("POST", ["orders", id, "cancel"]) => with_id(id, cancel),
        (_, ["orders", ..]) => Ok(Response::method_not_allowed()),
        _ => Ok(Response::not_found("no such route")),
    };
    result.unwrap_or_else(|err| Response::internal(&err.to_string()))
}

fn with_id(
    id: &str,
    then: impl FnOnce(u64) -> Result<Response, db::Error>,
) -> Result<Response, db::Error> {
    match id.parse::<u64>() {
        Ok(id) => then(id),
        Err(_) => Ok(Response::bad_request("order id must be a positive integer")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewOrder {
    car_id: u64,
    qty: u32,
    customer: String,
}

fn place(request: &Request) -> Result<Response, db::Error> {
    let new: NewOrder = match request.json() {
        Ok(new) => new,
        Err(response) => return Ok(response),
    };
    let customer = new.customer.trim();
    if new.qty == 0 || new.qty > MAX_QTY {
        return Ok(Response::bad_request(&format!(
            "qty must be between 1 and {MAX_QTY}"
        )));
    }
    if new.car_id == 0 {
        return Ok(Response::bad_request("carId must be a positive integer"));
    }
    if customer.is_empty() || customer.len() > 200 {
        return Ok(Response::bad_request(
            "customer must be 1 to 200 characters",
        ));
    }
    let inserted = db::execute(
        "INSERT INTO orders (car_id, qty, customer, status) VALUES (?, ?, ?, 'PENDING')",
        &[new.car_id.into(), new.qty.into(), customer.into()],
    )?;
    let order_id = inserted.last_insert_id as u64;
    match payments::approve(order_id, new.car_id, new.qty, customer) {
        Ok(payment) => {
            db::execute(
                "UPDATE orders SET status = 'PAID', payment_id = ? WHERE id = ?",
                &[payment.id.into(), order_id.into()],
            )?;
            let order = find(order_id)?.ok_or_else(|| db::Error::Other("order vanished".into()))?;
            Ok(Response::json(201, &order))
        }
        Err(err) => {
            // No payment, no order: the 5xx below rolls the insert back, and
            // a 4xx removes it here.
            db::execute("DELETE FROM orders WHERE id = ?", &[order_id.into()])?;
            Ok(payment_failure(err))
        }
    }
}

fn cancel(order_id: u64) -> Result<Response, db::Error> {
    let Some(order) = find(order_id)? else {
        return Ok(Response::not_found(&format!("no order {order_id}")));
    };
    let payment_id = match (order.status.as_str(), order.payment_id) {
        ("PAID" | "RESERVED", Some(payment_id)) => payment_id as u64,
        (status, _) => return Ok(Response::conflict(&format!("order {order_id} is {status}"))),
    };
    if let Err(err) = payments::cancel(payment_id) {
        return Ok(payment_failure(err));
    }
    db::execute(
        "UPDATE orders SET status = 'CANCELLED' WHERE id = ?",
        &[order_id.into()],
    )?;
    let order = find(order_id)?.ok_or_else(|| db::Error::Other("order vanished".into()))?;
    Ok(Response::json(200, &order))
}

fn payment_failure(err: CallError) -> Response {
    match err {
        CallError::Unavailable(reason) => {
            let mut response = Response::error(
                503,
                "payment-unavailable",
                &format!("payment is unavailable, retry shortly: {reason}"),
            );
            response.headers.push(("retry-after".into(), "1".into()));
            response
        }
        CallError::NotFound => {
            Response::error(409, "conflict", "the order's payment does not exist")
        }
        CallError::Conflict(reason) => Response::conflict(&reason),
        CallError::Invalid(reason) => Response::bad_request(&reason),
    }
}

export!(Component);
wasip2::http::proxy::export!(Component);
