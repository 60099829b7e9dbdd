//! The payment bounded context.
//!
//! Order calls `rentcar:payment/payments` synchronously to pay for an order
//! or cancel its payment; every change is published on the `payment` topic
//! with the order id as key.
//!
//! Two steps, so that a payment whose order never commits holds no car.
//! `approve` records the payment as `AUTHORIZED` (`PaymentAuthorized`) and
//! order commits the order with `OrderPlaced`; hearing that, payment marks
//! it `APPROVED` (`PaymentApproved`), on which rentcar reserves. A payment
//! whose order never came (the host died between the two commits) stays
//! authorized until order gives up on it (`OrderAbandoned`) and payment
//! refunds it, having reserved nothing meanwhile. An approved payment is
//! refunded when rentcar rejects the reservation. HTTP: `GET /payments` and
//! `GET /payments?orderId=..` (paginated: `?limit=`, `?after=`),
//! `GET /payments/{id}`.
//!
//! Payment's own failures (its database refusing a statement, a publish
//! refused) are `failed` to order, never `unavailable`: that case says the
//! host could not reach payment, and a retry may succeed.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::events::publish;
use rentcar_sdk::{Component, Envelope, Error, Events as _, Id, Page, Params, Request, Response, Router};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    path: "../../wit",
    world: "rentcar:payment/callee",
});

use exports::rentcar::payment::payments::{self, CallError, Payment, PaymentStatus};

struct Payments;

impl Component for Payments {
    const MIGRATIONS: &'static [&'static str] = &[
        "CREATE TABLE payments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            order_id INTEGER NOT NULL,
            car_id INTEGER NOT NULL,
            qty INTEGER NOT NULL,
            customer TEXT NOT NULL,
            status TEXT NOT NULL
        )",
        "CREATE INDEX payments_by_order ON payments (order_id)",
        // A customer's own payments, page by page.
        "CREATE INDEX payments_by_customer ON payments (customer, id)",
    ];

    fn routes() -> Router {
        Router::new().get("/payments", list).get("/payments/:id", get)
    }

    /// Order's `OrderPlaced` approves the payment; rentcar's
    /// `ReservationRejected` or order's `OrderAbandoned` refund it: either
    /// way it is not for a valid order any more.
    fn on_event(event: &Envelope) -> Result<(), Error> {
        match Heard::read(event)? {
            Some(Heard::OrderPlaced(placed)) => approve_placed(placed.payment_id),
            Some(Heard::ReservationRejected(gone) | Heard::OrderAbandoned(gone)) => refund(gone.payment_id),
            // Rentcar's other events, and order's other types, if any.
            None => Ok(()),
        }
    }

    fn reset() -> Result<(), Error> {
        Err(Error::internal(
            "payments are the source of truth, not built from events",
        ))
    }
}

rentcar_sdk::export!(Payments);
export!(Payments);

rentcar_sdk::events! {
    /// What payment hears on the `rentcar` and `order` topics.
    enum Heard {
        OrderPlaced(OfPayment),
        ReservationRejected(OfPayment),
        OrderAbandoned(OfPayment),
    }
}

rentcar_sdk::events! {
    /// What payment publishes on the `payment` topic.
    enum Published {
        PaymentAuthorized(PaymentJson),
        PaymentApproved(PaymentJson),
        PaymentCancelled(PaymentJson),
        PaymentRefunded(PaymentJson),
    }
}

/// The part of the events payment hears that it needs.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OfPayment {
    payment_id: Id,
}

impl payments::Guest for Payments {
    fn approve(car_id: u64, qty: u32, customer: String) -> Result<Payment, CallError> {
        if qty == 0 {
            return Err(CallError::Invalid("qty must be at least 1".into()));
        }
        // Stored as SQLite's signed integer: beyond, it would read back as
        // another (negative) id.
        let car_id = Id::from_unsigned(car_id)
            .ok_or_else(|| CallError::Invalid(format!("carId must be {}", rentcar_sdk::id::EXPECTED)))?;
        // The order takes the payment's id. It is the id AUTOINCREMENT would
        // pick (one past the table's sequence; the invocation holds the
        // database), written with the row so that the index gets one entry
        // instead of a placeholder and its replacement (two pages fewer in
        // the write-ahead log per payment).
        let changes = db::execute(
            "INSERT INTO payments (id, order_id, car_id, qty, customer, status)
             SELECT next, next, ?, ?, ?, 'AUTHORIZED'
             FROM (SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'payments'), 0) + 1 AS next)",
            &[car_id.into(), qty.into(), customer.as_str().into()],
        )
        .map_err(failed)?;
        let id = Id::new(changes.last_insert_id).ok_or_else(|| {
            failed(Error::internal(format!(
                "payment inserted as id {}",
                changes.last_insert_id
            )))
        })?;
        let payment = Payment {
            id: id.unsigned(),
            order_id: id.unsigned(),
            car_id: car_id.unsigned(),
            qty,
            customer,
            status: PaymentStatus::Authorized,
        };
        announce(Published::PaymentAuthorized, &payment).map_err(failed)?;
        Ok(payment)
    }

    fn cancel(payment_id: u64) -> Result<Payment, CallError> {
        let mut payment = find(payment_id)?.ok_or(CallError::NotFound)?;
        if !matches!(payment.status, PaymentStatus::Authorized | PaymentStatus::Approved) {
            return Err(CallError::Conflict(format!(
                "payment {payment_id} is {}",
                status_name(payment.status)
            )));
        }
        set_status(&payment, PaymentStatus::Cancelled).map_err(failed)?;
        payment.status = PaymentStatus::Cancelled;
        announce(Published::PaymentCancelled, &payment).map_err(failed)?;
        Ok(payment)
    }

    fn lookup(payment_id: u64) -> Result<Payment, CallError> {
        find(payment_id)?.ok_or(CallError::NotFound)
    }
}

/// Payment's own failure, as order sees it.
fn failed(err: impl Into<Error>) -> CallError {
    CallError::Failed(err.into().to_string())
}

/// The payment `payment_id`, if there is one (an id out of range has none).
fn find(payment_id: u64) -> Result<Option<Payment>, CallError> {
    let Some(id) = Id::from_unsigned(payment_id) else {
        return Ok(None);
    };
    find_by_id(id).map_err(failed)
}

fn find_by_id(id: Id) -> Result<Option<Payment>, Error> {
    db::query_row(&format!("{SELECT} WHERE id = ?"), &[id.into()])?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Approves the payment of an order just placed, unless it was cancelled
/// meanwhile (then it holds nothing, and stays so).
fn approve_placed(payment_id: Id) -> Result<(), Error> {
    change(
        payment_id,
        &[PaymentStatus::Authorized],
        PaymentStatus::Approved,
        Published::PaymentApproved,
    )
}

/// Refunds an authorized or approved payment; one cancelled meanwhile has
/// nothing left to refund.
fn refund(payment_id: Id) -> Result<(), Error> {
    change(
        payment_id,
        &[PaymentStatus::Authorized, PaymentStatus::Approved],
        PaymentStatus::Refunded,
        Published::PaymentRefunded,
    )
}

/// Moves a payment in one of the states `from` to `to`, and publishes
/// `event`; a payment in another state is left as it is.
fn change(
    payment_id: Id,
    from: &[PaymentStatus],
    to: PaymentStatus,
    event: fn(PaymentJson) -> Published,
) -> Result<(), Error> {
    let Some(mut payment) = find_by_id(payment_id)? else {
        return Ok(());
    };
    if from.contains(&payment.status) {
        set_status(&payment, to)?;
        payment.status = to;
        announce(event, &payment)?;
    }
    Ok(())
}

const SELECT: &str = "SELECT id, order_id, car_id, qty, customer, status FROM payments";

fn set_status(payment: &Payment, status: PaymentStatus) -> Result<(), Error> {
    // Read from the table, through `Id`: always an id.
    let id = Id::from_unsigned(payment.id).ok_or_else(|| Error::internal(format!("payment id {}", payment.id)))?;
    db::execute(
        "UPDATE payments SET status = ? WHERE id = ?",
        &[status_name(status).into(), id.into()],
    )?;
    Ok(())
}

fn from_row(row: &Row) -> Result<Payment, Error> {
    let status = row.text(5)?;
    Ok(Payment {
        id: row.get::<Id>(0)?.unsigned(),
        order_id: row.get::<Id>(1)?.unsigned(),
        car_id: row.get::<Id>(2)?.unsigned(),
        qty: row.get(3)?,
        customer: row.text(4)?,
        status: match status.as_str() {
            "AUTHORIZED" => PaymentStatus::Authorized,
            "APPROVED" => PaymentStatus::Approved,
            "CANCELLED" => PaymentStatus::Cancelled,
            "REFUNDED" => PaymentStatus::Refunded,
            other => return Err(Error::internal(format!("payment status `{other}` is unknown"))),
        },
    })
}

fn status_name(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Authorized => "AUTHORIZED",
        PaymentStatus::Approved => "APPROVED",
        PaymentStatus::Cancelled => "CANCELLED",
        PaymentStatus::Refunded => "REFUNDED",
    }
}

/// The JSON shape of a payment, in the API and in events.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentJson {
    id: u64,
    order_id: u64,
    car_id: u64,
    qty: u32,
    customer: String,
    status: String,
}

impl From<&Payment> for PaymentJson {
    fn from(payment: &Payment) -> Self {
        PaymentJson {
            id: payment.id,
            order_id: payment.order_id,
            car_id: payment.car_id,
            qty: payment.qty,
            customer: payment.customer.clone(),
            status: status_name(payment.status).into(),
        }
    }
}

/// Publishes what happened to `payment`, keyed by its order.
fn announce(event: fn(PaymentJson) -> Published, payment: &Payment) -> Result<(), Error> {
    publish(payment.order_id, &event(payment.into()))
}

/// A customer's own payment; someone else's is as missing as one that
/// never was, so that ids tell nothing.
fn get(request: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let caller = request.caller()?;
    let payment = find_by_id(id)?
        .filter(|payment| caller.owns(&payment.customer))
        .ok_or_else(|| Error::not_found(format!("no payment {id}")))?;
    Ok(Response::json(200, &PaymentJson::from(&payment)))
}

/// `GET /payments`, or only an order's with `?orderId=`, a page at a time;
/// a customer sees only their own.
fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let [after, limit] = page.params();
    let mut filters = Vec::new();
    let mut params = Vec::new();
    if let Some(customer) = request.caller()?.scope()? {
        filters.push("customer = ? AND ");
        params.push(customer.into());
    }
    if let Some(order_id) = request.query_param("orderId") {
        let order_id = Id::parse(order_id).ok_or_else(|| {
            Error::bad_request(format!(
                "orderId must be {}, not `{order_id}`",
                rentcar_sdk::id::EXPECTED
            ))
        })?;
        filters.push("order_id = ? AND ");
        params.push(order_id.into());
    }
    params.extend([after, limit]);
    let rows = db::query(
        &format!("{SELECT} WHERE {}id > ? ORDER BY id LIMIT ?", filters.concat()),
        &params,
    )?;
    let payments = rows
        .iter()
        .map(|row| from_row(row).map(|payment| PaymentJson::from(&payment)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page.answer(payments, |payment| payment.id.cast_signed()))
}
