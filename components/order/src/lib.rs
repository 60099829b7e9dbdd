//! The order bounded context (the core).
//!
//! `POST /orders` pays through a synchronous call to payment and records the
//! order under its payment's id, in one invocation: if payment fails or
//! cannot be reached the answer is 503 and nothing is recorded, so an order
//! without a completed payment never exists. Rentcar's events then move the
//! order to `RESERVED` or `REJECTED`. `POST /orders/{id}/cancel` cancels the
//! payment synchronously; rentcar releases the cars on `PaymentCancelled`.
//!
//! Orphan payments. `POST /orders` commits its idempotency check and lets go
//! of order's database while payment works (`db::commit`), so orders are not
//! serialized behind each other's payment calls. A payment can then be
//! approved with no order to show for it: the host died between payment's
//! commit and order's, or a concurrent request with the same
//! Idempotency-Key won. Order hears every `PaymentApproved`; when its order
//! is missing and the approval is older than `abandon_after_ms` (wasi:config,
//! default 5 s: far longer than the rest of a `POST /orders` takes), order
//! records the id as abandoned and publishes `OrderAbandoned`, and payment
//! refunds. A younger approval is retried later (the host redelivers it).
//! The abandoned record and the order's insert exclude each other in order's
//! database, so a request that outlives the wait answers 503 instead of
//! placing an order whose payment is being refunded. Likewise a
//! `PaymentCancelled` whose order is not cancelled (died between the two
//! commits of a cancel) cancels the order.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

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
use rentcar::payment::payments::{self, CallError, PaymentStatus};

/// Where order publishes (`OrderAbandoned`).
const TOPIC: &str = "order";
/// Largest quantity one order may ask for.
const MAX_QTY: u32 = 1_000;
/// How long after its approval a payment without an order is abandoned,
/// unless the config says `abandon_after_ms`.
const ABANDON_AFTER_MS: u64 = 5_000;

struct Component;

impl lifecycle::Guest for Component {
    fn init() -> Result<(), String> {
        db::migrate(&[
            "CREATE TABLE orders (
                id INTEGER PRIMARY KEY,
                car_id INTEGER NOT NULL,
                qty INTEGER NOT NULL,
                customer TEXT NOT NULL,
                status TEXT NOT NULL,
                payment_id INTEGER NOT NULL,
                idempotency_key TEXT UNIQUE
            )",
            // Payments given up for abandoned: no order may take their id.
            "CREATE TABLE abandoned (id INTEGER PRIMARY KEY)",
            // Keys are unique among the orders that have one; orders without
            // (most) no longer write an index entry each.
            "CREATE TABLE orders_keyed (
                id INTEGER PRIMARY KEY,
                car_id INTEGER NOT NULL,
                qty INTEGER NOT NULL,
                customer TEXT NOT NULL,
                status TEXT NOT NULL,
                payment_id INTEGER NOT NULL,
                idempotency_key TEXT
            )",
            "INSERT INTO orders_keyed SELECT id, car_id, qty, customer, status, payment_id, idempotency_key FROM orders",
            "DROP TABLE orders",
            "ALTER TABLE orders_keyed RENAME TO orders",
            "CREATE UNIQUE INDEX orders_by_idempotency_key ON orders (idempotency_key) WHERE idempotency_key IS NOT NULL",
        ])
        .map_err(|err| err.to_string())
    }

    fn reset() -> Result<(), String> {
        Err("orders are the source of truth, not built from events".into())
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
    payment_id: i64,
}

const SELECT: &str = "SELECT id, car_id, qty, customer, status, payment_id FROM orders";

fn from_row(row: Row) -> Order {
    Order {
        id: row.int(0),
        car_id: row.int(1),
        qty: row.int(2),
        customer: row.text(3),
        status: row.text(4),
        payment_id: row.int(5),
    }
}

fn find(order_id: u64) -> Result<Option<Order>, db::Error> {
    Ok(db::query_row(&format!("{SELECT} WHERE id = ?"), &[order_id.into()])?.map(from_row))
}

/// The part of rentcar's and payment's events an order needs. Payment
/// events carry the payment's `id`, rentcar's its `paymentId`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderEvent {
    order_id: u64,
    #[serde(alias = "id")]
    payment_id: u64,
}

impl event_handler::Guest for Component {
    fn handle(event: Event) -> Result<(), String> {
        let parse = || -> Result<OrderEvent, String> {
            serde_json::from_str(&event.payload).map_err(|err| format!("bad {} payload: {err}", event.event_type))
        };
        let result = match event.event_type.as_str() {
            // Only a paid order moves on; one cancelled meanwhile stays so.
            "CarReserved" => set_status(&event, parse()?, "RESERVED", &["PAID"]),
            "ReservationRejected" => set_status(&event, parse()?, "REJECTED", &["PAID"]),
            "PaymentCancelled" => set_status(&event, parse()?, "CANCELLED", &["PAID", "RESERVED"]),
            "PaymentApproved" => abandon_if_missing(&event, parse()?),
            _ => Ok(()),
        };
        result.map_err(|err| err.to_string())
    }
}

/// Whether an order missing now may still be placed by a `POST /orders` in
/// flight: its payment was approved less than `abandon_after_ms` ago.
fn may_be_in_flight(event: &Event) -> bool {
    let wait = rentcar_sdk::config::get("abandon_after_ms")
        .ok()
        .flatten()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(ABANDON_AFTER_MS);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub(event.time) < wait
}

/// The error that makes the host deliver the event again later.
fn not_placed_yet(event: &OrderEvent) -> db::Error {
    db::Error::Other(format!("order {} is not placed yet; checking again", event.order_id))
}

fn set_status(event: &Event, order: OrderEvent, status: &str, from: &[&str]) -> Result<(), db::Error> {
    let mut changed = 0;
    for current in from {
        changed += db::execute(
            "UPDATE orders SET status = ? WHERE id = ? AND payment_id = ? AND status = ?",
            &[
                status.into(),
                order.order_id.into(),
                order.payment_id.into(),
                (*current).into(),
            ],
        )?
        .rows_affected;
    }
    if changed == 0 && find(order.order_id)?.is_none() && !is_abandoned(order.order_id)? && may_be_in_flight(event) {
        return Err(not_placed_yet(&order));
    }
    Ok(())
}

fn is_abandoned(order_id: u64) -> Result<bool, db::Error> {
    Ok(db::query_row("SELECT 1 FROM abandoned WHERE id = ?", &[order_id.into()])?.is_some())
}

fn abandon_if_missing(event: &Event, order: OrderEvent) -> Result<(), db::Error> {
    let exists = db::query_row(
        "SELECT 1 FROM orders WHERE id = ? AND payment_id = ?",
        &[order.order_id.into(), order.payment_id.into()],
    )?;
    if exists.is_some() || is_abandoned(order.order_id)? {
        return Ok(());
    }
    if may_be_in_flight(event) {
        return Err(not_placed_yet(&order));
    }
    db::execute("INSERT INTO abandoned (id) VALUES (?)", &[order.order_id.into()])?;
    let payload = serde_json::json!({ "orderId": order.order_id, "paymentId": order.payment_id });
    rentcar_sdk::publish(TOPIC, &order.order_id.to_string(), "OrderAbandoned", &payload).map_err(db::Error::Other)?;
    Ok(())
}

impl wasip2::exports::http::incoming_handler::Guest for Component {
    fn handle(request: wasip2::http::types::IncomingRequest, out: wasip2::http::types::ResponseOutparam) {
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
        ("GET", ["orders", id, "payment"]) => with_id(id, payment_of),
        (_, ["orders", ..]) => Ok(Response::method_not_allowed()),
        _ => Ok(Response::not_found("no such route")),
    };
    result.unwrap_or_else(|err| Response::internal(&err.to_string()))
}

fn with_id(id: &str, then: impl FnOnce(u64) -> Result<Response, db::Error>) -> Result<Response, db::Error> {
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
        return Ok(Response::bad_request(&format!("qty must be between 1 and {MAX_QTY}")));
    }
    if new.car_id == 0 {
        return Ok(Response::bad_request("carId must be a positive integer"));
    }
    if customer.is_empty() || customer.len() > 200 {
        return Ok(Response::bad_request("customer must be 1 to 200 characters"));
    }
    let key = request.header("idempotency-key").map(str::trim);
    if key.is_some_and(|key| key.is_empty() || key.len() > 200) {
        return Ok(Response::bad_request("Idempotency-Key must be 1 to 200 characters"));
    }

    if let Some(earlier) = placed_with(key, &new, customer)? {
        return Ok(earlier);
    }
    // Let other orders use the database while payment works (crate docs).
    db::commit()?;

    let payment = match payments::approve(new.car_id, new.qty, customer) {
        Ok(payment) => payment,
        Err(err) => return Ok(payment_failure(err)),
    };
    let inserted = db::execute(
        "INSERT INTO orders (id, car_id, qty, customer, status, payment_id, idempotency_key)
         SELECT ?, ?, ?, ?, 'PAID', ?, ? WHERE NOT EXISTS (SELECT 1 FROM abandoned WHERE id = ?)",
        &[
            payment.order_id.into(),
            new.car_id.into(),
            new.qty.into(),
            customer.into(),
            payment.id.into(),
            key.map_or(db::Value::Null, Into::into),
            payment.order_id.into(),
        ],
    );
    match inserted {
        Ok(changes) if changes.rows_affected == 1 => {}
        Ok(_) => {
            return Ok(Response::unavailable(
                "payment-unconfirmed",
                "the payment was not confirmed in time and is refunded; retry",
            ));
        }
        // A request with the same Idempotency-Key placed its order while
        // this one was paying: answer with that order; this payment is
        // refunded as abandoned.
        Err(db::Error::Constraint(_)) if key.is_some() => {
            if let Some(earlier) = placed_with(key, &new, customer)? {
                return Ok(earlier);
            }
            return Err(db::Error::Other("idempotency key conflict without an order".into()));
        }
        Err(err) => return Err(err),
    }
    let order = find(payment.order_id)?.ok_or_else(|| db::Error::Other("order vanished".into()))?;
    Ok(Response::json(201, &order))
}

/// The answer for an order placed earlier with the same Idempotency-Key:
/// that order, or 422 if it was for something else.
fn placed_with(key: Option<&str>, new: &NewOrder, customer: &str) -> Result<Option<Response>, db::Error> {
    let Some(key) = key else {
        return Ok(None);
    };
    let earlier = db::query_row(&format!("{SELECT} WHERE idempotency_key = ?"), &[key.into()])?;
    Ok(earlier.map(from_row).map(|order| {
        let same = order.car_id as u64 == new.car_id && order.qty == i64::from(new.qty) && order.customer == customer;
        if same {
            Response::json(201, &order)
        } else {
            Response::error(
                422,
                "idempotency-key-reused",
                "this Idempotency-Key was used for a different order",
            )
        }
    }))
}

fn cancel(order_id: u64) -> Result<Response, db::Error> {
    let Some(order) = find(order_id)? else {
        return Ok(Response::not_found(&format!("no order {order_id}")));
    };
    if !matches!(order.status.as_str(), "PAID" | "RESERVED") {
        return Ok(Response::conflict(&format!("order {order_id} is {}", order.status)));
    }
    let payment_id = order.payment_id as u64;
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

/// The order's payment, asked of payment synchronously (`lookup` is
/// idempotent, so the link may retry it).
fn payment_of(order_id: u64) -> Result<Response, db::Error> {
    let Some(order) = find(order_id)? else {
        return Ok(Response::not_found(&format!("no order {order_id}")));
    };
    Ok(match payments::lookup(order.payment_id as u64) {
        Ok(payment) => Response::json(
            200,
            &serde_json::json!({
                "id": payment.id,
                "orderId": payment.order_id,
                "status": match payment.status {
                    PaymentStatus::Approved => "APPROVED",
                    PaymentStatus::Cancelled => "CANCELLED",
                    PaymentStatus::Refunded => "REFUNDED",
                },
            }),
        ),
        Err(err) => payment_failure(err),
    })
}

fn payment_failure(err: CallError) -> Response {
    match err {
        CallError::Unavailable(reason) => Response::unavailable(
            "payment-unavailable",
            &format!("payment is unavailable, retry shortly: {reason}"),
        ),
        CallError::NotFound => Response::error(409, "conflict", "the order's payment does not exist"),
        CallError::Conflict(reason) => Response::conflict(&reason),
        CallError::Invalid(reason) => Response::bad_request(&reason),
    }
}

export!(Component);
wasip2::http::proxy::export!(Component);
