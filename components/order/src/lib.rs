//! The order bounded context (the core).
//!
//! `POST /orders` pays through a synchronous call to payment and records the
//! order under its payment's id, in one invocation: if payment fails or
//! cannot be reached the answer is 503 and nothing is recorded, so an order
//! without a completed payment never exists. Rentcar's events then move the
//! order to `RESERVED` or `REJECTED`. `POST /orders/{id}/cancel` cancels the
//! payment synchronously; rentcar releases the cars on `PaymentCancelled`.
//!
//! Committing before calling. A request that calls payment commits what it
//! read or claimed first (`db::commit`) and lets go of order's database
//! while payment works, so that orders, cancels and reads do not queue on
//! order's database behind each other's payment calls.
//!
//! Idempotency-Key. `POST /orders` with a key claims it in `placing`
//! (key -> what is ordered, when) and commits the claim before it pays, so
//! a duplicate that arrives meanwhile never calls payment: it answers 409
//! `order-in-progress` (422 if it orders something else), and once the
//! order is placed, the order (its insert drops the claim in the same
//! transaction). A placement that fails (payment refused or unreachable)
//! drops its claim and commits that before answering, so a retry can go
//! ahead at once. A claim whose request died (a crash, an internal error)
//! expires after `claim_expires_ms` (wasi:config, default 15 s: longer
//! than order's deadline, beyond which the host lets no invocation run),
//! and the next request with the key takes it over.
//!
//! Orphan payments. A payment can still be approved with no order to show
//! for it: the host died between payment's commit and order's, or the
//! request outlived the wait below. Order hears every `PaymentApproved`;
//! when its order is missing and the approval is older than
//! `abandon_after_ms` (wasi:config, default 5 s: far longer than the rest of
//! a `POST /orders` takes), order records the id as abandoned and publishes
//! `OrderAbandoned`, and payment refunds. A younger approval is retried
//! later (the host redelivers it). The abandoned record and the order's
//! insert exclude each other in order's database, so a request that
//! outlives the wait answers 503 instead of placing an order whose payment
//! is being refunded. Likewise a `PaymentCancelled` whose order is not
//! cancelled (died between the two commits of a cancel) cancels the order.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::{Error, Id, Page, Params, Request, Response, Router};
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
/// Longest customer name and Idempotency-Key, in characters.
const MAX_CHARS: usize = 200;
/// How long after its approval a payment without an order is abandoned,
/// unless the config says `abandon_after_ms`.
const ABANDON_AFTER_MS: i64 = 5_000;
/// How long a `POST /orders` holds its Idempotency-Key at most, unless the
/// config says `claim_expires_ms`: longer than any placement can run (the
/// host ends an invocation at order's `timeout_ms`, 10 s by default, plus
/// a second's grace), so a claim that old belongs to a request that died.
const CLAIM_EXPIRES_MS: i64 = 15_000;

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
            // Idempotency-Keys held by a `POST /orders` while it pays, with
            // what it orders (a duplicate for something else is 422) and
            // when it claimed the key (ms since the Unix epoch).
            "CREATE TABLE placing (
                idempotency_key TEXT PRIMARY KEY,
                car_id INTEGER NOT NULL,
                qty INTEGER NOT NULL,
                customer TEXT NOT NULL,
                claimed_at INTEGER NOT NULL
            )",
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

fn find(order_id: impl Into<db::Value>) -> Result<Option<Order>, db::Error> {
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
            // A cancel that died between payment's commit and its own. The
            // order may have been rejected meanwhile: its payment, cancelled
            // instead of refunded, makes it cancelled all the same.
            "PaymentCancelled" => set_status(&event, parse()?, "CANCELLED", &["PAID", "RESERVED", "REJECTED"]),
            "PaymentApproved" => abandon_if_missing(&event, parse()?),
            _ => Ok(()),
        };
        result.map_err(|err| err.to_string())
    }
}

/// Whether an order missing now may still be placed by a `POST /orders` in
/// flight: its payment was approved less than `abandon_after_ms` ago.
fn may_be_in_flight(event: &Event) -> bool {
    let approved = i64::try_from(event.time).unwrap_or(i64::MAX);
    now_ms().saturating_sub(approved) < config_ms("abandon_after_ms", ABANDON_AFTER_MS)
}

/// A duration from order's config (wasi:config), or `default`.
fn config_ms(key: &str, default: i64) -> i64 {
    rentcar_sdk::config::get(key)
        .ok()
        .flatten()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(default)
}

/// Wall-clock time, in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
        rentcar_sdk::serve(request, out, |request| {
            Router::new()
                .post("/orders", place)
                .get("/orders", list)
                .get("/orders/:id", get)
                .post("/orders/:id/cancel", cancel)
                .get("/orders/:id/payment", payment_of)
                .handle(&request)
        });
    }
}

fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let rows = db::query(&format!("{SELECT} WHERE id > ? ORDER BY id LIMIT ?"), &page.params())?;
    Ok(page.answer(rows.into_iter().map(from_row).collect(), |order| order.id))
}

fn get(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    Ok(match find(id)? {
        Some(order) => Response::json(200, &order),
        None => Response::not_found(&format!("no order {id}")),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewOrder {
    car_id: Id,
    qty: u32,
    customer: String,
}

fn place(request: &Request, _: &Params) -> Result<Response, Error> {
    let new: NewOrder = request.json()?;
    let customer = new.customer.trim();
    if new.qty == 0 || new.qty > MAX_QTY {
        return Ok(Response::bad_request(&format!("qty must be between 1 and {MAX_QTY}")));
    }
    if customer.is_empty() || customer.chars().count() > MAX_CHARS {
        return Ok(Response::bad_request(&format!(
            "customer must be 1 to {MAX_CHARS} characters"
        )));
    }
    let key = request.header("idempotency-key")?.map(str::trim);
    if key.is_some_and(|key| key.is_empty() || key.chars().count() > MAX_CHARS) {
        return Ok(Response::bad_request(&format!(
            "Idempotency-Key must be 1 to {MAX_CHARS} characters"
        )));
    }
    let claim = match key {
        Some(key) => match claim(key, &new, customer)? {
            Claimed::Ours(claim) => Some(claim),
            Claimed::Answered(answer) => return Ok(answer),
        },
        None => None,
    };
    // Commits the claim, and lets other orders use the database while
    // payment works (crate docs).
    db::commit()?;

    let placed = pay_and_record(&new, customer, claim.as_ref());
    // A placement that failed (payment refused or unreachable, or too
    // late) gives its key up at once, so that a retry can go ahead.
    // Committed here: a 5xx answer rolls back the rest. It wrote nothing
    // else. After an internal error the claim is left to expire.
    if let (Some(claim), Ok(response)) = (&claim, &placed)
        && response.status != 201
    {
        claim.release()?;
        db::commit()?;
    }
    placed
}

/// Pays for `new` and records it under the payment's id; gives up the
/// key's claim in the same transaction.
fn pay_and_record(new: &NewOrder, customer: &str, claim: Option<&Claim>) -> Result<Response, Error> {
    let payment = match payments::approve(new.car_id.unsigned(), new.qty, customer) {
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
            claim.map_or(db::Value::Null, |claim| claim.key.as_str().into()),
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
        // The key's claim expired while this request was still paying (it
        // outlived order's deadline, which the host does not allow) and a
        // later request with the key placed its order: answer with that
        // order; this payment is refunded as abandoned.
        Err(db::Error::Constraint(_)) if claim.is_some() => {
            if let Some(claim) = claim
                && let Some(earlier) = placed_with(&claim.key, new, customer)?
            {
                claim.release()?;
                return Ok(earlier);
            }
            return Err(Error::Internal("idempotency key conflict without an order".into()));
        }
        Err(err) => return Err(err.into()),
    }
    if let Some(claim) = claim {
        claim.release()?;
    }
    let order = find(payment.order_id)?.ok_or_else(|| Error::Internal("order vanished".into()))?;
    Ok(Response::json(201, &order))
}

/// A `POST /orders` holds its Idempotency-Key in `placing` while it pays, so
/// that a duplicate never calls payment (crate docs).
struct Claim {
    key: String,
    /// When it was claimed (ms since the Unix epoch); also tells this
    /// claim from a later one that took the key over after it expired.
    at: i64,
}

impl Claim {
    /// Gives the key up, unless another request has taken it over since.
    fn release(&self) -> Result<(), db::Error> {
        db::execute(
            "DELETE FROM placing WHERE idempotency_key = ? AND claimed_at = ?",
            &[self.key.as_str().into(), self.at.into()],
        )?;
        Ok(())
    }
}

enum Claimed {
    Ours(Claim),
    /// The order placed earlier with this key (201), the key taken by a
    /// placement in flight (409), or used for another order (422).
    Answered(Response),
}

/// Claims `key` for a new placement, unless an order with it exists or
/// another placement holds it and has not expired.
fn claim(key: &str, new: &NewOrder, customer: &str) -> Result<Claimed, Error> {
    if let Some(earlier) = placed_with(key, new, customer)? {
        return Ok(Claimed::Answered(earlier));
    }
    let at = now_ms();
    let expired = at.saturating_sub(config_ms("claim_expires_ms", CLAIM_EXPIRES_MS));
    let claimed = db::execute(
        "INSERT INTO placing (idempotency_key, car_id, qty, customer, claimed_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (idempotency_key) DO UPDATE SET car_id = excluded.car_id, qty = excluded.qty,
             customer = excluded.customer, claimed_at = excluded.claimed_at
         WHERE placing.claimed_at <= ?6",
        &[
            key.into(),
            new.car_id.into(),
            new.qty.into(),
            customer.into(),
            at.into(),
            expired.into(),
        ],
    )?;
    if claimed.rows_affected == 1 {
        return Ok(Claimed::Ours(Claim { key: key.into(), at }));
    }
    let holder = db::query_row(
        "SELECT car_id, qty, customer FROM placing WHERE idempotency_key = ?",
        &[key.into()],
    )?
    .ok_or_else(|| Error::Internal("a claim neither taken nor held".into()))?;
    let same = holder.int(0) == new.car_id.get() && holder.int(1) == i64::from(new.qty) && holder.text(2) == customer;
    if !same {
        return Ok(Claimed::Answered(key_reused()));
    }
    let mut busy = Response::error(
        409,
        "order-in-progress",
        "an order with this Idempotency-Key is being placed; retry shortly for its result",
    );
    busy.headers.push(("retry-after".into(), "1".into()));
    Ok(Claimed::Answered(busy))
}

/// The answer for an order placed earlier with the same Idempotency-Key:
/// that order, or 422 if it was for something else.
fn placed_with(key: &str, new: &NewOrder, customer: &str) -> Result<Option<Response>, db::Error> {
    let earlier = db::query_row(&format!("{SELECT} WHERE idempotency_key = ?"), &[key.into()])?;
    Ok(earlier.map(from_row).map(|order| {
        let same = order.car_id == new.car_id.get() && order.qty == i64::from(new.qty) && order.customer == customer;
        if same {
            Response::json(201, &order)
        } else {
            key_reused()
        }
    }))
}

fn key_reused() -> Response {
    Response::error(
        422,
        "idempotency-key-reused",
        "this Idempotency-Key was used for a different order",
    )
}

/// Cancels the order's payment, then the order. Like placing, it commits
/// its read before the call, so that other requests do not wait on
/// order's database while payment works (crate docs).
fn cancel(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let Some(order) = find(id)? else {
        return Ok(Response::not_found(&format!("no order {id}")));
    };
    if !matches!(order.status.as_str(), "PAID" | "RESERVED") {
        return Ok(Response::conflict(&format!("order {id} is {}", order.status)));
    }
    db::commit()?;
    // A second cancel racing this one is refused by payment (the payment
    // is cancelled already): 409.
    if let Err(err) = payments::cancel(payment_id(&order)?) {
        return Ok(payment_failure(err));
    }
    // Rentcar may have rejected the order meanwhile; its payment, cancelled
    // now, is not refunded, so the order is cancelled all the same. Applied
    // by `PaymentCancelled` already, it changes nothing.
    db::execute(
        "UPDATE orders SET status = 'CANCELLED' WHERE id = ? AND status IN ('PAID', 'RESERVED', 'REJECTED')",
        &[id.into()],
    )?;
    let order = find(id)?.ok_or_else(|| Error::Internal("order vanished".into()))?;
    Ok(Response::json(200, &order))
}

/// The order's payment, asked of payment synchronously (`lookup` is
/// idempotent, so the link may retry it).
fn payment_of(_: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let Some(order) = find(id)? else {
        return Ok(Response::not_found(&format!("no order {id}")));
    };
    db::commit()?;
    Ok(match payments::lookup(payment_id(&order)?) {
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

/// The order's payment id as payment's interface takes it.
fn payment_id(order: &Order) -> Result<u64, Error> {
    u64::try_from(order.payment_id).map_err(|_| Error::Internal(format!("order {} has no valid payment id", order.id)))
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
