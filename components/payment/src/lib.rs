//! The payment bounded context.
//!
//! Order calls `rentcar:payment/payments` synchronously to approve or cancel
//! the payment of an order; every change is published on the `payment` topic
//! with the order id as key. The payment is refunded when rentcar rejects
//! the reservation, or when order reports that the order was never created
//! (the host died between the two commits). HTTP: `GET /payments` and
//! `GET /payments?orderId=..` (paginated: `?limit=`, `?after=`),
//! `GET /payments/{id}`.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::{Error, Id, Page, Params, Request, Response, Router, publish};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    path: "../../wit",
    world: "rentcar:host/payment",
    with: {
        "rentcar:host/sql@0.1.0": rentcar_sdk::bindings::rentcar::host::sql,
        "rentcar:host/events@0.1.0": rentcar_sdk::bindings::rentcar::host::events,
        "wasi:config/store@0.2.0-rc.1": rentcar_sdk::bindings::wasi::config::store,
    },
});

use exports::rentcar::host::event_handler::{self, Event};
use exports::rentcar::host::lifecycle;
use exports::rentcar::payment::payments::{self, CallError, Payment, PaymentStatus};

const TOPIC: &str = "payment";

struct Component;

impl lifecycle::Guest for Component {
    fn reset() -> Result<(), String> {
        Err("payments are the source of truth, not built from events".into())
    }

    fn init() -> Result<(), String> {
        db::migrate(&[
            "CREATE TABLE payments (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                order_id INTEGER NOT NULL,
                car_id INTEGER NOT NULL,
                qty INTEGER NOT NULL,
                customer TEXT NOT NULL,
                status TEXT NOT NULL
            )",
            "CREATE INDEX payments_by_order ON payments (order_id)",
        ])
        .map_err(|err| err.to_string())
    }
}

impl payments::Guest for Component {
    fn approve(car_id: u64, qty: u32, customer: String) -> Result<Payment, CallError> {
        if qty == 0 {
            return Err(CallError::Invalid("qty must be at least 1".into()));
        }
        // Stored as SQLite's signed integer: beyond, it would read back as
        // another (negative) id.
        if Id::new(i64::try_from(car_id).unwrap_or(0)).is_none() {
            return Err(CallError::Invalid(format!(
                "carId must be {}",
                rentcar_sdk::id::EXPECTED
            )));
        }
        // The order takes the payment's id. It is the id AUTOINCREMENT would
        // pick (one past the table's sequence; the invocation holds the
        // database), written with the row so that the index gets one entry
        // instead of a placeholder and its replacement (two pages fewer in
        // the write-ahead log per payment).
        let changes = db::execute(
            "INSERT INTO payments (id, order_id, car_id, qty, customer, status)
             SELECT next, next, ?, ?, ?, 'APPROVED'
             FROM (SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'payments'), 0) + 1 AS next)",
            &[car_id.into(), qty.into(), customer.as_str().into()],
        )
        .map_err(internal)?;
        let id = changes.last_insert_id as u64;
        let payment = Payment {
            id,
            order_id: id,
            car_id,
            qty,
            customer,
            status: PaymentStatus::Approved,
        };
        announce("PaymentApproved", &payment)?;
        Ok(payment)
    }

    fn cancel(payment_id: u64) -> Result<Payment, CallError> {
        let mut payment = find(payment_id)?.ok_or(CallError::NotFound)?;
        if payment.status != PaymentStatus::Approved {
            return Err(CallError::Conflict(format!(
                "payment {payment_id} is {}",
                status_name(payment.status)
            )));
        }
        set_status(payment_id, PaymentStatus::Cancelled)?;
        payment.status = PaymentStatus::Cancelled;
        announce("PaymentCancelled", &payment)?;
        Ok(payment)
    }

    fn lookup(payment_id: u64) -> Result<Payment, CallError> {
        find(payment_id)?.ok_or(CallError::NotFound)
    }
}

/// Rentcar's `ReservationRejected` or order's `OrderAbandoned`: either way
/// the payment is not for a valid order any more.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Refund {
    payment_id: u64,
}

impl event_handler::Guest for Component {
    fn handle(event: Event) -> Result<(), String> {
        if !matches!(event.event_type.as_str(), "ReservationRejected" | "OrderAbandoned") {
            return Ok(());
        }
        let refund: Refund = serde_json::from_str(&event.payload).map_err(|err| err.to_string())?;
        let row = db::query_row(
            &format!("{SELECT} WHERE id = ? AND status = 'APPROVED'"),
            &[refund.payment_id.into()],
        )
        .map_err(|err| err.to_string())?;
        // A payment cancelled meanwhile has nothing left to refund.
        if let Some(mut payment) = row.map(from_row) {
            set_status(payment.id, PaymentStatus::Refunded).map_err(|err| format!("{err:?}"))?;
            payment.status = PaymentStatus::Refunded;
            announce("PaymentRefunded", &payment).map_err(|err| format!("{err:?}"))?;
        }
        Ok(())
    }
}

const SELECT: &str = "SELECT id, order_id, car_id, qty, customer, status FROM payments";

fn find(payment_id: u64) -> Result<Option<Payment>, CallError> {
    let row = db::query_row(&format!("{SELECT} WHERE id = ?"), &[payment_id.into()]).map_err(internal)?;
    Ok(row.map(from_row))
}

fn set_status(payment_id: u64, status: PaymentStatus) -> Result<(), CallError> {
    db::execute(
        "UPDATE payments SET status = ? WHERE id = ?",
        &[status_name(status).into(), payment_id.into()],
    )
    .map_err(internal)?;
    Ok(())
}

fn from_row(row: Row) -> Payment {
    Payment {
        id: row.int(0) as u64,
        order_id: row.int(1) as u64,
        car_id: row.int(2) as u64,
        qty: row.int(3) as u32,
        customer: row.text(4),
        status: match row.text(5).as_str() {
            "CANCELLED" => PaymentStatus::Cancelled,
            "REFUNDED" => PaymentStatus::Refunded,
            _ => PaymentStatus::Approved,
        },
    }
}

fn status_name(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Approved => "APPROVED",
        PaymentStatus::Cancelled => "CANCELLED",
        PaymentStatus::Refunded => "REFUNDED",
    }
}

fn internal(err: db::Error) -> CallError {
    CallError::Unavailable(err.to_string())
}

/// The JSON shape of a payment, in the API and in events.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentJson<'a> {
    id: u64,
    order_id: u64,
    car_id: u64,
    qty: u32,
    customer: &'a str,
    status: &'static str,
}

impl<'a> From<&'a Payment> for PaymentJson<'a> {
    fn from(payment: &'a Payment) -> Self {
        PaymentJson {
            id: payment.id,
            order_id: payment.order_id,
            car_id: payment.car_id,
            qty: payment.qty,
            customer: &payment.customer,
            status: status_name(payment.status),
        }
    }
}

fn announce(event_type: &str, payment: &Payment) -> Result<(), CallError> {
    let key = payment.order_id.to_string();
    publish(TOPIC, &key, event_type, &PaymentJson::from(payment)).map_err(CallError::Unavailable)
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
        rentcar_sdk::serve(request, out, |request| {
            Router::new()
                .get("/payments", list)
                .get("/payments/:id", get)
                .handle(&request)
        });
    }
}

fn get(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let row = db::query_row(&format!("{SELECT} WHERE id = ?"), &[id.into()])?;
    Ok(match row.map(from_row) {
        Some(payment) => Response::json(200, &PaymentJson::from(&payment)),
        None => Response::not_found(&format!("no payment {id}")),
    })
}

/// `GET /payments`, or only an order's with `?orderId=`, a page at a time.
fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let [after, limit] = page.params();
    let rows = match request.query_param("orderId") {
        Some(order_id) => {
            let Some(order_id) = Id::parse(order_id) else {
                return Ok(Response::bad_request(&format!(
                    "orderId must be {}, not `{order_id}`",
                    rentcar_sdk::id::EXPECTED
                )));
            };
            db::query(
                &format!("{SELECT} WHERE order_id = ? AND id > ? ORDER BY id LIMIT ?"),
                &[order_id.into(), after, limit],
            )?
        }
        None => db::query(&format!("{SELECT} WHERE id > ? ORDER BY id LIMIT ?"), &[after, limit])?,
    };
    let payments: Vec<Payment> = rows.into_iter().map(from_row).collect();
    let json: Vec<PaymentJson> = payments.iter().map(PaymentJson::from).collect();
    Ok(page.answer(json, |payment| payment.id.cast_signed()))
}

export!(Component);
wasip2::http::proxy::export!(Component);
