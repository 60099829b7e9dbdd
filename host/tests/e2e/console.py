"""The web console in a real browser: headless Chromium driven by Selenium.

Run by the end-to-end test `console::customers_and_operators_use_the_console`
(host/tests/e2e/console.rs), which starts the real host, registers a car and
passes what this script needs in the environment:

  CONSOLE_URL      the console of the host under test
  CUSTOMER_TOKEN   a token for the customer `lee`
  OPERATOR_TOKEN   a token with the admin role
  BROKEN_WASM      a payment component the readiness gate refuses
  PAYMENT_WASM     the payment component that runs
  CAR_ID           a car with 2 in stock
  ADMIN_TOKEN      the operator's static token (the break-glass)
  OUT_DIR          where the screenshots go
  CHROMEDRIVER     chromedriver (default /usr/bin/chromedriver)
  CHROMIUM         the browser (default /usr/bin/chromium)

Each step waits for what a person would see; a failure saves a screenshot
and the page's text in OUT_DIR and exits non-zero.
"""

import base64
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["CONSOLE_URL"]
BASE = URL.rsplit("/console", 1)[0]
CUSTOMER = os.environ["CUSTOMER_TOKEN"]
OPERATOR = os.environ["OPERATOR_TOKEN"]
CAR = os.environ["CAR_ID"]
OUT = Path(os.environ["OUT_DIR"])

WAIT_S = 30


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    # Headless, and nothing that reaches for the internet (this machine has
    # none): no background networking, updates, sync or QUIC.
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1360,1100",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=options, service=service)


class Console:
    """The page, as a person sees and uses it."""

    def __init__(self, driver):
        self.driver = driver

    def wait(self, what, check, timeout=WAIT_S):
        """Waits until `check()` is truthy (a re-rendered element counts as not yet)."""
        waiter = WebDriverWait(
            self.driver, timeout, poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            return waiter.until(lambda _: check())
        except TimeoutException:
            raise AssertionError(f"waited {timeout} s for {what}") from None

    def find(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css):
        return self.find(css).text

    def visible(self, css):
        return self.find(css).is_displayed()

    def click(self, css, what=None):
        """Clicks an element that a refresh may replace at any moment."""
        def clicked():
            element = self.find(css)
            if not element.is_enabled():
                return False
            element.click()
            return True
        self.wait(what or f"{css} to be clickable", clicked)

    def feedback(self, expected, error=False):
        """Waits for the feedback line to say `expected`; answers its text."""
        def says():
            line = self.find("#feedback")
            is_error = "error" in line.get_attribute("class").split()
            return line.text if expected in line.text and is_error == error else None
        return self.wait(f"feedback {'error ' if error else ''}saying {expected!r}", says)

    def sign_in(self, token):
        self.driver.get(URL)
        field = self.wait("the sign-in form", lambda: self.find("#token"))
        field.clear()
        field.send_keys(token)
        self.click("#sign-in")

    def sign_out(self):
        self.click("#sign-out")
        self.wait("the sign-in form", lambda: self.visible("#sign-in-view"))

    def cell(self, row_css, column):
        return self.find(f"{row_css} td:nth-child({column})").text

    def screenshot(self, name):
        """The whole page, beyond the window's height (Chrome's DevTools protocol)."""
        OUT.mkdir(parents=True, exist_ok=True)
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        (OUT / name).write_bytes(base64.b64decode(shot["data"]))
        print(f"console test: screenshot {OUT / name}")


def post(token, path, body):
    """A request from another client, through the public API."""
    request = urllib.request.Request(
        f"{BASE}{path}", method="POST", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.status


def with_version_tag(wasm, tag, directory):
    """The same component with a custom section added: a new version digest."""
    name = b"rentcar-test-version"
    payload = bytes([len(name)]) + name + tag.encode()
    data = Path(wasm).read_bytes() + bytes([0, len(payload)]) + payload
    path = Path(directory) / f"payment-{tag}.wasm"
    path.write_bytes(data)
    return path


def customer(page):
    # A token the host refuses is said so, and the console stays signed out.
    page.sign_in("not-a-token")
    page.feedback("Sign-in refused", error=True)
    assert page.visible("#sign-in-view")

    page.sign_in(CUSTOMER)
    page.wait("the customer view", lambda: page.visible("#customer-view"))
    assert "lee" in page.text("#who"), page.text("#who")
    assert not page.visible("#tab-operator"), "a customer sees no operator view"

    car_row = f'#availability tr[data-id="{CAR}"]'
    page.wait("the car with 2 available", lambda: page.cell(car_row, 3) == "2")
    Select(page.find("#order-car")).select_by_value(CAR)
    qty = page.find("#order-qty")
    qty.clear()
    qty.send_keys("1")
    page.click("#order")
    said = page.feedback("placed and paid")
    order = said.split("Order ", 1)[1].split(" ", 1)[0]

    order_row = f'#orders tr[data-id="{order}"]'
    page.wait("the order to turn RESERVED", lambda: page.find(order_row).get_attribute("data-status") == "RESERVED")
    page.wait("availability to drop to 1 (live)", lambda: page.cell(car_row, 3) == "1")
    page.wait("its payment, APPROVED", lambda: page.find(f'#payments tr[data-id="{order}"]').get_attribute("data-status") == "APPROVED")
    page.screenshot("customer.png")

    page.click(f'{order_row} button[data-action="cancel-order"]')
    page.feedback(f"Order {order} cancelled")
    page.wait("the order to turn CANCELLED", lambda: page.find(order_row).get_attribute("data-status") == "CANCELLED")
    page.wait("its payment, CANCELLED", lambda: page.find(f'#payments tr[data-id="{order}"]').get_attribute("data-status") == "CANCELLED")
    page.wait("the car to be free again", lambda: page.cell(car_row, 3) == "2")
    page.sign_out()


def operator(page, scratch):
    page.sign_in(OPERATOR)
    page.wait("the operator tab", lambda: page.visible("#tab-operator"))
    page.click("#tab-operator")
    page.wait("the operator view", lambda: page.visible("#operator-view"))
    for name in ["order", "payment", "rentcar", "view"]:
        page.wait(f"component {name}", lambda: page.find(f'#components tr[data-name="{name}"]'))
    page.wait("the order -> payment circuit, closed",
              lambda: page.find('#links tr[data-from="order"][data-to="payment"]').get_attribute("data-circuit") == "closed")

    # Stop rentcar: orders are still taken, and its lag rises.
    rentcar = '#components tr[data-name="rentcar"]'
    page.click(f'{rentcar} button[data-action="stop"]')
    page.feedback("rentcar stopped")
    page.wait("rentcar stopped", lambda: page.find(rentcar).get_attribute("data-state") == "stopped")
    for _ in range(3):
        post(CUSTOMER, "/orders", {"carId": int(CAR), "qty": 1})
    lagging = '#subscriptions tr[data-consumer="rentcar"]'

    def rentcar_lag():
        return sum(int(row.get_attribute("data-lag")) for row in page.driver.find_elements(By.CSS_SELECTOR, lagging))

    page.wait("rentcar's lag to rise", lambda: rentcar_lag() >= 3)
    page.click(f'{rentcar} button[data-action="start"]')
    page.feedback("rentcar started")
    page.wait("rentcar running", lambda: page.find(rentcar).get_attribute("data-state") == "running")
    page.wait("rentcar's lag to fall to 0", lambda: rentcar_lag() == 0)

    # Traffic from /metrics: order's request rate and p99.
    order_row = '#components tr[data-name="order"]'
    page.wait("order's p99", lambda: page.cell(order_row, 7).endswith(" ms") or page.cell(order_row, 7).endswith(" s"))

    # A broken version is refused with the gate's reason; the old one serves on.
    payment = '#components tr[data-name="payment"]'
    running = page.find(payment).get_attribute("data-version")
    Select(page.find("#deploy-component")).select_by_value("payment")
    page.find("#deploy-file").send_keys(os.environ["BROKEN_WASM"])
    page.click("#deploy")
    refused = page.feedback("the new version was refused", error=True)
    assert "HTTP 422" in refused and "init" in refused, refused
    assert page.find(payment).get_attribute("data-version") == running

    # A good new version, then a roll-back to the one before.
    page.find("#deploy-file").send_keys(str(with_version_tag(os.environ["PAYMENT_WASM"], "console", scratch)))
    page.click("#deploy")
    page.feedback("payment now runs version")
    page.wait("payment on its new version", lambda: page.find(payment).get_attribute("data-version") != running)
    page.click(f'{payment} button[data-action="rollback"]')
    page.feedback("payment rolled back")
    page.wait("payment back on its old version", lambda: page.find(payment).get_attribute("data-version") == running)

    # A fault added, shown, and removed.
    Select(page.find("#fault-component")).select_by_value("payment")
    delay = page.find("#fault-delay")
    delay.clear()
    delay.send_keys("50")
    page.click("#add-fault")
    page.feedback("Fault injected into payment")
    page.wait("the fault listed", lambda: page.cell('#faults tr[data-name="payment"]', 2) == "50 ms")

    # A poison event is dead-lettered; its replay fails until the consumer
    # is fixed, then succeeds.
    post(OPERATOR, "/probe/publish", {"keys": 1, "count": 1, "poison": True})
    letter = page.wait("a dead letter", lambda: page.find("#dead-letters tr[data-id]").get_attribute("data-id"))
    page.wait("probe's subscription counting it", lambda: page.cell('#subscriptions tr[data-consumer="probe"]', 8) == "1")
    page.screenshot("operator.png")
    replay = f'#dead-letters tr[data-id="{letter}"] button[data-action="replay"]'
    page.click(replay)
    still = page.feedback("Replay failed", error=True)
    assert "HTTP 409" in still and "poisoned" in still, still
    post(OPERATOR, "/probe/fix", {})
    page.click(replay)
    page.feedback(f"Dead letter {letter} delivered and removed")
    page.wait("no dead letters", lambda: "No dead letters" in page.text("#dead-letters tbody"))

    page.click('#faults tr[data-name="payment"] button[data-action="remove-fault"]')
    page.feedback("Fault on payment removed")
    page.wait("no faults", lambda: "No faults" in page.text("#faults tbody"))
    page.sign_out()

    # The operator's static token (the break-glass) opens the operator view
    # alone: it is no customer.
    page.sign_in(os.environ["ADMIN_TOKEN"])
    page.wait("the operator view", lambda: page.visible("#operator-view"))
    assert not page.visible("#tab-customer")
    assert page.text("#who") == "operator (static token)", page.text("#who")
    page.sign_out()

    # With order stopped, a customer still gets the customer view (its
    # panels say what fails): only a refused token closes a view.
    post(os.environ["ADMIN_TOKEN"], "/admin/components/order/stop", {})
    page.sign_in(CUSTOMER)
    page.wait("the customer view while order is stopped", lambda: page.visible("#customer-view"))
    post(os.environ["ADMIN_TOKEN"], "/admin/components/order/start", {})


def main():
    with tempfile.TemporaryDirectory() as scratch:
        driver = browser(Path(scratch) / "profile")
        page = Console(driver)
        try:
            started = time.monotonic()
            customer(page)
            print(f"console test: customer view passed ({time.monotonic() - started:.1f} s)")
            started = time.monotonic()
            operator(page, scratch)
            print(f"console test: operator view passed ({time.monotonic() - started:.1f} s)")
        except Exception:
            OUT.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(OUT / "failure.png"))
            print("---- page text ----\n" + driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
            for entry in driver.get_log("browser"):
                print(f"browser: {entry}", file=sys.stderr)
            raise
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
