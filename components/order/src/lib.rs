//! The order bounded context (the core).
//!
//! `POST /orders` pays through a synchronous call to payment and records the
//! order under its payment's id, in one invocation: if payment cannot be
//! reached the answer is 503 `payment-unavailable` (retry shortly), if it
//! fails on its own 502 `payment-failed` (nothing was charged), and either
//! way nothing is recorded, so an order without a completed payment never
//! exists. The order commits with `OrderPlaced`, on which payment approves
//! the payment it authorized, and rentcar reserves on that: only an order
//! that exists ever holds a car. Rentcar's events then move the
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
//! Orphan payments. A payment can still be authorized with no order to show
//! for it: the host died between payment's commit and order's, or the
//! request outlived the wait below. It holds no car (it is never approved),
//! but the customer's money: order hears every `PaymentAuthorized`;
//! when its order is missing and the authorization is older than
//! `abandon_after_ms` (wasi:config, default 5 s: far longer than the rest of
//! a `POST /orders` takes), order records the id as abandoned and publishes
//! `OrderAbandoned`, and payment refunds. A younger authorization is retried
//! later (the host redelivers it). The abandoned record and the order's
//! insert exclude each other in order's database, so a request that
//! outlives the wait answers 503 instead of placing an order whose payment
//! is being refunded. Likewise a `PaymentCancelled` whose order is not
//! cancelled (died between the two commits of a cancel) cancels the order.

#![allow(unsafe_code, reason = "the export glue that wit-bindgen generates is unsafe")]

use rentcar_sdk::db::{self, Row};
use rentcar_sdk::events::publish;
use rentcar_sdk::{Component, Envelope, Error, Events as _, Id, Page, Params, Request, Response, Router};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({
    path: "../../wit",
    world: "rentcar:payment/caller",
});

use rentcar::payment::payments::{self, CallError, PaymentStatus};

/// Largest quantity one order may ask for.
const MAX_QTY: u32 = 1_000;
/// The role that may order.
const CUSTOMER: &str = "customer";
/// Longest customer name and Idempotency-Key, in characters.
const MAX_CHARS: usize = 200;
/// How long after its authorization a payment without an order is abandoned,
/// unless the config says `abandon_after_ms`.
const ABANDON_AFTER_MS: i64 = 5_000;
/// How long a `POST /orders` holds its Idempotency-Key at most, unless the
/// config says `claim_expires_ms`: longer than any placement can run (the
/// host ends an invocation at order's `timeout_ms`, 10 s by default, plus
/// a second's grace), so a claim that old belongs to a request that died.
const CLAIM_EXPIRES_MS: i64 = 15_000;

struct Orders;

impl Component for Orders {
    const MIGRATIONS: &'static [&'static str] = &[
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
        // A customer's own orders, page by page.
        "CREATE INDEX orders_by_customer ON orders (customer, id)",
    ];

    fn routes() -> Router {
        Router::new()
            .post("/orders", place)
            .get("/orders", list)
            .get("/orders/:id", get)
            .post("/orders/:id/cancel", cancel)
            .get("/orders/:id/payment", payment_of)
    }

    fn on_event(event: &Envelope) -> Result<(), Error> {
        match Heard::read(event)? {
            // Only a paid order moves on; one cancelled meanwhile stays so.
            Some(Heard::CarReserved(order)) => {
                if set_status(event, &order, "RESERVED", &["PAID"])? {
                    announce(order.order_id, Published::OrderReserved)?;
                }
                Ok(())
            }
            Some(Heard::ReservationRejected(order)) => set_status(event, &order, "REJECTED", &["PAID"]).map(drop),
            // A cancel that died between payment's commit and its own. The
            // order may have been rejected meanwhile: its payment, cancelled
            // instead of refunded, makes it cancelled all the same.
            Some(Heard::PaymentCancelled(order)) => {
                if set_status(event, &order, "CANCELLED", &["PAID", "RESERVED", "REJECTED"])? {
                    announce(order.order_id, Published::OrderCancelled)?;
                }
                Ok(())
            }
            Some(Heard::PaymentAuthorized(order)) => abandon_if_missing(event, &order),
            // The subscriptions list the types above; nothing else is ours.
            None => Ok(()),
        }
    }

    fn reset() -> Result<(), Error> {
        Err(Error::internal("orders are the source of truth, not built from events"))
    }
}

rentcar_sdk::export!(Orders);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    id: Id,
    car_id: Id,
    qty: u32,
    customer: String,
    status: String,
    payment_id: Id,
}

const SELECT: &str = "SELECT id, car_id, qty, customer, status, payment_id FROM orders";

fn from_row(row: &Row) -> Result<Order, Error> {
    Ok(Order {
        id: row.get(0)?,
        car_id: row.get(1)?,
        qty: row.get(2)?,
        customer: row.text(3)?,
        status: row.text(4)?,
        payment_id: row.get(5)?,
    })
}

fn find(order_id: Id) -> Result<Option<Order>, Error> {
    db::query_row(&format!("{SELECT} WHERE id = ?"), &[order_id.into()])?
        .as_ref()
        .map(from_row)
        .transpose()
}

rentcar_sdk::events! {
    /// What order hears: rentcar's reservations, payment's authorizations
    /// and cancels.
    enum Heard {
        CarReserved(OrderEvent),
        ReservationRejected(OrderEvent),
        PaymentAuthorized(OrderEvent),
        PaymentCancelled(OrderEvent),
    }
}

rentcar_sdk::events! {
    /// What order publishes on the `order` topic: a placed order (for
    /// payment to approve its payment) or an abandoned payment (for payment
    /// to refund), and the orders that were reserved and cancelled (for
    /// loyalty, with the customer).
    enum Published {
        OrderPlaced(OrderEvent),
        OrderAbandoned(OrderEvent),
        OrderReserved(Announced),
        OrderCancelled(Announced),
    }
}

/// An order that was reserved or cancelled, as loyalty needs it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Announced {
    order_id: Id,
    customer: String,
    car_id: Id,
    qty: u32,
}

/// Publishes that an order moved on, in the transaction that moved it.
fn announce(order_id: Id, event: fn(Announced) -> Published) -> Result<(), Error> {
    let order = find(order_id)?.ok_or_else(|| Error::internal(format!("order {order_id} vanished")))?;
    let announced = Announced {
        order_id: order.id,
        customer: order.customer,
        car_id: order.car_id,
        qty: order.qty,
    };
    publish(order_id, &event(announced))
}

/// An order and its payment: the part of rentcar's and payment's events an
/// order needs (payment's carry the payment's `id`, rentcar's its
/// `paymentId`), and what payment needs of an order placed or abandoned.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderEvent {
    order_id: Id,
    #[serde(alias = "id")]
    payment_id: Id,
}

/// Whether an order missing now may still be placed by a `POST /orders` in
/// flight: its payment was authorized less than `abandon_after_ms` ago.
fn may_be_in_flight(event: &Envelope) -> bool {
    let authorized = i64::try_from(event.time).unwrap_or(i64::MAX);
    now_ms().saturating_sub(authorized) < config_ms("abandon_after_ms", ABANDON_AFTER_MS)
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
fn not_placed_yet(event: &OrderEvent) -> Error {
    Error::internal(format!("order {} is not placed yet; checking again", event.order_id))
}

/// Moves an order to `status` from one of `from`; whether it moved.
fn set_status(event: &Envelope, order: &OrderEvent, status: &str, from: &[&str]) -> Result<bool, Error> {
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
        return Err(not_placed_yet(order));
    }
    Ok(changed > 0)
}

fn is_abandoned(order_id: Id) -> Result<bool, Error> {
    Ok(db::query_row("SELECT 1 FROM abandoned WHERE id = ?", &[order_id.into()])?.is_some())
}

fn abandon_if_missing(event: &Envelope, order: &OrderEvent) -> Result<(), Error> {
    let exists = db::query_row(
        "SELECT 1 FROM orders WHERE id = ? AND payment_id = ?",
        &[order.order_id.into(), order.payment_id.into()],
    )?;
    if exists.is_some() || is_abandoned(order.order_id)? {
        return Ok(());
    }
    if may_be_in_flight(event) {
        return Err(not_placed_yet(order));
    }
    db::execute("INSERT INTO abandoned (id) VALUES (?)", &[order.order_id.into()])?;
    let abandoned = OrderEvent {
        order_id: order.order_id,
        payment_id: order.payment_id,
    };
    publish(order.order_id, &Published::OrderAbandoned(abandoned))
}

/// What a failed call to payment means for the client.
impl From<CallError> for Error {
    fn from(err: CallError) -> Error {
        match err {
            CallError::Unavailable(reason) => Error::unavailable(
                "payment-unavailable",
                format!("payment is unavailable, retry shortly: {reason}"),
            ),
            // Not worth retrying: payment itself is broken. Its call rolled
            // back, so nothing was charged (or cancelled).
            CallError::Failed(reason) => Error::refused(502, "payment-failed", format!("payment failed: {reason}")),
            CallError::NotFound => Error::conflict("the order's payment does not exist"),
            CallError::Conflict(reason) => Error::conflict(reason),
            CallError::Invalid(reason) => Error::bad_request(reason),
        }
    }
}

/// Every order, a page at a time; a customer's own only.
fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let page = Page::from_request(request)?;
    let [after, limit] = page.params();
    let rows = match request.caller()?.scope()? {
        Some(customer) => db::query(
            &format!("{SELECT} WHERE customer = ? AND id > ? ORDER BY id LIMIT ?"),
            &[customer.into(), after, limit],
        )?,
        None => db::query(&format!("{SELECT} WHERE id > ? ORDER BY id LIMIT ?"), &[after, limit])?,
    };
    let orders = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.answer(orders, |order| order.id.get()))
}

fn get(request: &Request, params: &Params) -> Result<Response, Error> {
    Ok(Response::json(200, &existing(request, params.id("id"))?))
}

/// The order `id`, or 404; a customer's own only: someone else's is as
/// missing as one that never was, so that ids tell nothing.
fn existing(request: &Request, id: Id) -> Result<Order, Error> {
    let caller = request.caller()?;
    find(id)?
        .filter(|order| caller.owns(&order.customer))
        .ok_or_else(|| Error::not_found(format!("no order {id}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewOrder {
    car_id: Id,
    qty: u32,
    /// Read only when the host checks no tokens; else the token's subject
    /// is the customer.
    #[serde(default)]
    customer: Option<String>,
}

/// A customer orders for themselves: the customer is the token's subject,
/// whatever the body says.
fn place(request: &Request, _: &Params) -> Result<Response, Error> {
    let caller = request.caller()?;
    caller.require(CUSTOMER)?;
    let new: NewOrder = request.json()?;
    let customer = match caller.subject() {
        Some(subject) => subject,
        None => new
            .customer
            .as_deref()
            .ok_or_else(|| Error::bad_request("customer is required"))?,
    }
    .trim();
    if new.qty == 0 || new.qty > MAX_QTY {
        return Err(Error::bad_request(format!("qty must be between 1 and {MAX_QTY}")));
    }
    if customer.is_empty() || customer.chars().count() > MAX_CHARS {
        return Err(Error::bad_request(format!(
            "customer must be 1 to {MAX_CHARS} characters"
        )));
    }
    let key = request.header("idempotency-key")?.map(str::trim);
    if key.is_some_and(|key| key.is_empty() || key.chars().count() > MAX_CHARS) {
        return Err(Error::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_CHARS} characters"
        )));
    }
    let claim = match key {
        Some(key) => match claim(key, &new, customer)? {
            Claimed::Ours(claim) => Some(claim),
            // A retry of a request that placed its order: its result.
            Claimed::Placed(earlier) => return Ok(Response::json(201, &earlier)),
        },
        None => None,
    };
    // Commits the claim, and lets other orders use the database while
    // payment works (crate docs).
    db::commit()?;

    let placed = pay_and_record(&new, customer, claim.as_ref());
    // A placement that failed (payment refused, unreachable or failed, or
    // too late) gives its key up at once, so that a retry can go ahead.
    // Committed here: a 5xx answer rolls back the rest. It wrote nothing
    // else. After an internal error the claim is left to expire.
    if let (Some(claim), Err(err)) = (&claim, &placed)
        && !err.is_internal()
    {
        claim.release()?;
        db::commit()?;
    }
    Ok(Response::json(201, &placed?))
}

/// Pays for `new` and records it under the payment's id, with `OrderPlaced`
/// for payment to approve what it authorized; gives up the key's claim in
/// the same transaction.
fn pay_and_record(new: &NewOrder, customer: &str, claim: Option<&Claim>) -> Result<Order, Error> {
    let payment = payments::approve(new.car_id.unsigned(), new.qty, customer)?;
    let (order_id, payment_id) = match (Id::from_unsigned(payment.order_id), Id::from_unsigned(payment.id)) {
        (Some(order_id), Some(payment_id)) => (order_id, payment_id),
        _ => {
            return Err(Error::internal(format!(
                "payment answered with ids out of range: {payment:?}"
            )));
        }
    };
    let inserted = db::execute(
        "INSERT INTO orders (id, car_id, qty, customer, status, payment_id, idempotency_key)
         SELECT ?, ?, ?, ?, 'PAID', ?, ? WHERE NOT EXISTS (SELECT 1 FROM abandoned WHERE id = ?)",
        &[
            order_id.into(),
            new.car_id.into(),
            new.qty.into(),
            customer.into(),
            payment_id.into(),
            claim.map(|claim| claim.key.as_str()).into(),
            order_id.into(),
        ],
    );
    match inserted {
        Ok(changes) if changes.rows_affected == 1 => {}
        Ok(_) => {
            return Err(Error::unavailable(
                "payment-unconfirmed",
                "the payment was not confirmed in time and is refunded; retry",
            ));
        }
        // The key's claim expired while this request was still paying (it
        // outlived order's deadline, which the host does not allow) and a
        // later request with the key placed its order: answer with that
        // order; this payment is refunded as abandoned.
        Err(db::Error::Constraint(reason)) => {
            let Some(claim) = claim else {
                return Err(Error::internal(reason));
            };
            let earlier = placed_with(&claim.key, new, customer)?
                .ok_or_else(|| Error::internal("idempotency key conflict without an order"))?;
            claim.release()?;
            return Ok(earlier);
        }
        Err(err) => return Err(err.into()),
    }
    if let Some(claim) = claim {
        claim.release()?;
    }
    let placed = OrderEvent { order_id, payment_id };
    publish(order_id, &Published::OrderPlaced(placed))?;
    find(order_id)?.ok_or_else(|| Error::internal("order vanished"))
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
    fn release(&self) -> Result<(), Error> {
        db::execute(
            "DELETE FROM placing WHERE idempotency_key = ? AND claimed_at = ?",
            &[self.key.as_str().into(), self.at.into()],
        )?;
        Ok(())
    }
}

enum Claimed {
    Ours(Claim),
    /// The order placed earlier with this key.
    Placed(Order),
}

/// Claims `key` for a new placement, unless an order with it exists or
/// another placement holds it and has not expired (409), or it was used
/// for another order (422).
fn claim(key: &str, new: &NewOrder, customer: &str) -> Result<Claimed, Error> {
    if let Some(earlier) = placed_with(key, new, customer)? {
        return Ok(Claimed::Placed(earlier));
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
    .ok_or_else(|| Error::internal("a claim neither taken nor held"))?;
    let same = holder.get::<Id>(0)? == new.car_id && holder.get::<u32>(1)? == new.qty && holder.text(2)? == customer;
    if !same {
        return Err(key_reused());
    }
    Err(Error::refused(
        409,
        "order-in-progress",
        "an order with this Idempotency-Key is being placed; retry shortly for its result",
    )
    .retry_after(1))
}

/// The order placed earlier with the same Idempotency-Key, if any; 422 if
/// it was for something else.
fn placed_with(key: &str, new: &NewOrder, customer: &str) -> Result<Option<Order>, Error> {
    let Some(row) = db::query_row(&format!("{SELECT} WHERE idempotency_key = ?"), &[key.into()])? else {
        return Ok(None);
    };
    let order = from_row(&row)?;
    if order.car_id != new.car_id || order.qty != new.qty || order.customer != customer {
        return Err(key_reused());
    }
    Ok(Some(order))
}

fn key_reused() -> Error {
    Error::refused(
        422,
        "idempotency-key-reused",
        "this Idempotency-Key was used for a different order",
    )
}

/// Cancels the order's payment, then the order. Like placing, it commits
/// its read before the call, so that other requests do not wait on
/// order's database while payment works (crate docs).
fn cancel(request: &Request, params: &Params) -> Result<Response, Error> {
    let id = params.id("id");
    let order = existing(request, id)?;
    if !matches!(order.status.as_str(), "PAID" | "RESERVED") {
        return Err(Error::conflict(format!("order {id} is {}", order.status)));
    }
    db::commit()?;
    // A second cancel racing this one is refused by payment (the payment
    // is cancelled already): 409.
    payments::cancel(order.payment_id.unsigned())?;
    // Rentcar may have rejected the order meanwhile; its payment, cancelled
    // now, is not refunded, so the order is cancelled all the same. Applied
    // by `PaymentCancelled` already, it changes nothing.
    let cancelled = db::execute(
        "UPDATE orders SET status = 'CANCELLED' WHERE id = ? AND status IN ('PAID', 'RESERVED', 'REJECTED')",
        &[id.into()],
    )?;
    if cancelled.rows_affected > 0 {
        announce(id, Published::OrderCancelled)?;
    }
    let order = find(id)?.ok_or_else(|| Error::internal("order vanished"))?;
    Ok(Response::json(200, &order))
}

/// The order's payment, asked of payment synchronously (`lookup` is
/// idempotent, so the link may retry it).
fn payment_of(request: &Request, params: &Params) -> Result<Response, Error> {
    let order = existing(request, params.id("id"))?;
    db::commit()?;
    let payment = payments::lookup(order.payment_id.unsigned())?;
    Ok(Response::json(
        200,
        &serde_json::json!({
            "id": payment.id,
            "orderId": payment.order_id,
            "status": match payment.status {
                PaymentStatus::Authorized => "AUTHORIZED",
                PaymentStatus::Approved => "APPROVED",
                PaymentStatus::Cancelled => "CANCELLED",
                PaymentStatus::Refunded => "REFUNDED",
            },
        }),
    ))
}
