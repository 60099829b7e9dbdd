"""Loyalty: the points customers earn for the cars they rent.

A supporting context, built only from events: order's `OrderReserved`
earns 100 points per car, and `OrderCancelled` of a reserved order takes
them back. Its store is `wasi:keyvalue`, which the host keeps with the
invocation's transaction: an event's effect commits together with its inbox
row, so a redelivered event has no second effect, and a failed one leaves
nothing behind.

Written in Python and built with componentize-py against the
`rentcar:host/keyvalue-context` world (wit/host.wit); `cargo xtask build`
does both.

Keys, in the bucket "loyalty":
    customer/NAME   {"customer", "points", "reservedOrders"} (JSON)
    order/ID        {"customer", "qty"}, while the order holds points

Routes:
    GET /loyalty/NAME   a customer's points: their own, or anyone's for an admin
    GET /loyalty        the top customers by points (?limit=1..100, default 10);
                        a customer sees only themselves
"""

import json
from urllib.parse import parse_qs, unquote, urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import batch, wasi_keyvalue_store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

POINTS_PER_CAR = 100
BUCKET = "loyalty"
IDENTITY_HEADER = "rentcar-identity"


# ---- The domain ---------------------------------------------------------------

class Store:
    """Loyalty's documents in its key-value bucket."""

    def __init__(self):
        self.bucket = wasi_keyvalue_store.open(BUCKET)

    def read(self, key):
        value = self.bucket.get(key)
        return None if value is None else json.loads(value)

    def write(self, key, document):
        self.bucket.set(key, json.dumps(document).encode())

    def account(self, customer):
        return self.read(f"customer/{customer}") or {"customer": customer, "points": 0, "reservedOrders": 0}

    def keys(self, prefix=""):
        """Every key of the bucket with `prefix`, a page at a time."""
        cursor = None
        while True:
            page = self.bucket.list_keys(cursor)
            yield from (key for key in page.keys if key.startswith(prefix))
            if page.cursor is None:
                return
            cursor = page.cursor

    def accounts(self):
        keys = list(self.keys("customer/"))
        for start in range(0, len(keys), 1000):
            for found in batch.get_many(self.bucket, keys[start:start + 1000]):
                if found is not None:
                    yield json.loads(found[1])

    def clear(self):
        keys = list(self.keys())
        for start in range(0, len(keys), 1000):
            batch.delete_many(self.bucket, keys[start:start + 1000])


def reserved(store, order):
    """An order's cars are reserved: its customer earns points, once."""
    key = f"order/{order['orderId']}"
    if store.read(key) is not None:
        return
    customer, qty = order["customer"], int(order["qty"])
    store.write(key, {"customer": customer, "qty": qty})
    account = store.account(customer)
    account["points"] += POINTS_PER_CAR * qty
    account["reservedOrders"] += 1
    store.write(f"customer/{customer}", account)


def cancelled(store, order):
    """An order is cancelled: the points it earned go, if it earned any."""
    key = f"order/{order['orderId']}"
    held = store.read(key)
    if held is None:
        return
    store.bucket.delete(key)
    account = store.account(held["customer"])
    account["points"] -= POINTS_PER_CAR * held["qty"]
    account["reservedOrders"] -= 1
    store.write(f"customer/{held['customer']}", account)


APPLY = {"OrderReserved": reserved, "OrderCancelled": cancelled}


# ---- Who is asking ---------------------------------------------------------------

class Caller:
    """The caller as the host verified it (the `rentcar-identity` header)."""

    def __init__(self, identity):
        self.kind = identity.get("kind")
        self.sub = identity.get("sub")
        self.roles = identity.get("roles") or []

    @classmethod
    def of(cls, request):
        values = request.headers().get(IDENTITY_HEADER)
        return cls(json.loads(values[0]) if values else {"kind": "anonymous"})

    def is_admin(self):
        return self.kind == "unchecked" or "admin" in self.roles

    def owns(self, customer):
        return self.is_admin() or (self.kind == "user" and self.sub == customer)


# ---- HTTP --------------------------------------------------------------------------

class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def route(method, target, caller):
    """The answer (status, JSON document) to a request."""
    url = urlsplit(target)
    parts = [unquote(part) for part in url.path.strip("/").split("/")]
    if parts[0] != "loyalty" or len(parts) > 2:
        raise Refused(404, "not-found", f"no route for {url.path}")
    if not isinstance(method, Method_Get):
        raise Refused(405, "method-not-allowed", "loyalty is read-only: points come from events")
    if caller.kind == "anonymous":
        raise Refused(401, "unauthorized", "this needs a bearer token")
    store = Store()
    if len(parts) == 2:
        customer = parts[1]
        if not customer or not caller.owns(customer):
            raise Refused(404, "not-found", f"no loyalty account of {customer!r}")
        return 200, store.account(customer)
    limit = parse_limit(parse_qs(url.query).get("limit", ["10"])[0])
    if not caller.is_admin():
        return 200, {"items": [store.account(caller.sub)]}
    top = sorted(store.accounts(), key=lambda a: (-a["points"], a["customer"]))
    return 200, {"items": top[:limit]}


def parse_limit(text):
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise Refused(400, "invalid-request", "limit must be an integer from 1 to 100")
    return int(text)


def respond(response_out, status, document):
    body = json.dumps(document).encode()
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with outgoing.write() as stream:
        # At most 4096 bytes per call (wasi:io).
        for start in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[start:start + 4096])
    OutgoingBody.finish(outgoing, None)


# ---- The exports the host drives ---------------------------------------------------

class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            status, document = route(request.method(), request.path_with_query() or "/", Caller.of(request))
        except Refused as refused:
            status, document = refused.status, {"error": refused.code, "message": refused.message}
        respond(response_out, status, document)


class EventHandler(exports.EventHandler):
    def handle(self, event) -> None:
        apply = APPLY.get(event.event_type)
        if apply is None:
            return
        try:
            apply(Store(), json.loads(event.payload))
        except (KeyError, TypeError, ValueError) as err:
            raise Err(f"cannot apply {event.event_type} {event.id}: {err!r}")


class Lifecycle(exports.Lifecycle):
    def init(self) -> None:
        # No schema: keys and values. Opening the bucket checks the store.
        Store()

    def reset(self) -> None:
        # Everything here is built from events: replaying the log rebuilds it.
        Store().clear()
