"""Screenshots of the admin pages an on-call engineer works from: ``make screenshots``.

Not run in CI (it installs a browser and takes about a minute): run it by hand after changing
an admin page, look at the PNGs, and commit them. What it does, each time from nothing:

1. installs what it needs when missing: Debian's ``chromium`` (``apt-get``, only when run as
   root; otherwise it says what to install) and Python's ``playwright`` (from PyPI, into the
   interpreter running this script; its own browser download is never used);
2. starts the sandbox's web server (``sandbox_project.settings``, SQLite in a temporary state
   directory, so the sandbox's own ``.sandbox`` is untouched) on a free port of 127.0.0.1;
3. seeds it: orders and Stripe events sent signed to the running server by
   ``send_test_webhook --data`` and processed (one processed, one failed, one ignored by its
   handler, one ignored by an operator, one still received), and circuit breakers in every
   interesting state (open after real failures, forced open with an ``until``, disabled,
   closed with successes);
4. logs into the admin in headless Chromium and saves PNGs to ``docs/images/``.

Usage: ``python docs/screenshots.py`` (``--out DIR`` to save elsewhere). Exit status 0 when every
screenshot was taken; non-zero, with the reason, otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1600, "height": 900}
USERNAME = "oncall"

#: (file name, what it shows) of every screenshot, in the order taken.
SHOTS = {
    "admin-events.png": "the webhook events changelist",
    "admin-event.png": "a failed event's page, with its buttons",
    "admin-breaker.png": "an open circuit breaker's page, with its buttons",
    "admin-breaker-action.png": "the Force open form (reason, until)",
    "admin-breaker-confirm.png": "the Force open confirmation page",
    "admin-ordering.png": "the ordering states of the ordered subscription handler",
}


# -- 1. what it needs ---------------------------------------------------------------------------


def ensure_tools() -> None:
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0:
            sys.exit(f"screenshots: {CHROMIUM} is missing: install Debian's chromium package")
        print("screenshots: installing Debian's chromium (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("screenshots: installing playwright from PyPI", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "playwright"], check=True)


# -- 2. the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        sys.exit(f"screenshots: manage.py {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def sandbox_server(env: dict[str, str], port: int) -> Iterator[str]:
    log = open(Path(env["SANDBOX_STATE_DIR"]) / "runserver.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                login = f"{url}/admin/login/"  # http://127.0.0.1:<port>, built here
                urllib.request.urlopen(login, timeout=2).close()  # noqa: S310
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    text = Path(log.name).read_text()[-3000:]
                    sys.exit(f"screenshots: the web server did not start:\n{text}")
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# -- 3. the data -------------------------------------------------------------------------------

#: Stripe events to send: (event id, type, PaymentIntent). Orders are created first (seed).
EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "evt_3Paid0rder1001",
        "payment_intent.succeeded",
        {"id": "pi_3PaidA1", "amount_received": 2000, "currency": "usd",
         "metadata": {"order_id": "ORD-1001"}},
    ),
    (
        "evt_3WrongAmount1002",
        "payment_intent.succeeded",
        {"id": "pi_3WrongB2", "amount_received": 4500, "currency": "usd",
         "metadata": {"order_id": "ORD-1002"}},
    ),
    (
        "evt_3NoOrder",
        "payment_intent.payment_failed",
        {"id": "pi_3Unknown", "amount": 900, "currency": "eur"},
    ),
    (
        "evt_3ByHand1003",
        "payment_intent.succeeded",
        {"id": "pi_3ByHandC3", "amount_received": 1200, "currency": "usd",
         "metadata": {"order_id": "ORD-1003"}},
    ),
    (
        "evt_3NotYet1004",
        "payment_intent.succeeded",
        {"id": "pi_3NotYetD4", "amount_received": 7000, "currency": "usd",
         "metadata": {"order_id": "ORD-1004"}},
    ),
]  # fmt: skip


#: Subscription events (event id, seconds before now it happened, subscription, status), sent
#: in this order: each subscription's newer event first, so that its older one is skipped.
SUBSCRIPTION_EVENTS: list[tuple[str, int, str, str]] = [
    ("evt_3SubNewer2001", 60, "sub_3Annual2001", "past_due"),
    ("evt_3SubOlder2001", 3600, "sub_3Annual2001", "active"),
    ("evt_3SubOnly2002", 600, "sub_3Monthly2002", "trialing"),
    ("evt_3SubOnly2003", 300, "sub_3Team2003", "active"),
]


def seed_before(password: str) -> None:
    """In a Django process: the admin user and the orders the events refer to."""
    from django.contrib.auth import get_user_model

    from sandbox_project.demo.models import Order

    get_user_model().objects.create_superuser(USERNAME, "oncall@example.com", password)
    for reference, amount in (("ORD-1001", 2000), ("ORD-1002", 5000), ("ORD-1003", 1200),
                              ("ORD-1004", 7000)):  # fmt: skip
        Order.objects.create(reference=reference, amount=amount, currency="usd")


def seed_after() -> None:
    """In a Django process, once the events are stored: process them as a worker would (but
    leave the last one received), an operator's "ignored", and the circuit breakers."""
    from datetime import timedelta

    from django.utils import timezone

    from integrations.breaker import (
        disable_breaker,
        flush_successes,
        force_open_breaker,
        get_breaker,
    )
    from integrations.exceptions import IntegrationUnavailable
    from webhooks.models import WebhookEvent
    from webhooks.processing import process_event
    from webhooks.services import mark_ignored

    for event_id in [event[0] for event in EVENTS[:3]] + [e[0] for e in SUBSCRIPTION_EVENTS]:
        process_event(WebhookEvent.objects.get(event_id=event_id).pk)
    by_hand = WebhookEvent.objects.get(event_id="evt_3ByHand1003")
    mark_ignored(by_hand, reason="paid by bank transfer; see ticket OPS-118")

    stripe = get_breaker("stripe")
    for _ in range(stripe.policy.failure_threshold):
        permit = stripe.acquire("create_refund")
        error = IntegrationUnavailable("stripe", "create_refund", "server error", status_code=503)
        stripe.record_failure(permit, error)
    for name in ("exchange-rates", "geocoder", "search"):
        get_breaker(name).acquire("op")  # each breaker's row is made by its first call
    force_open_breaker(
        "exchange-rates",
        actor="cli:alice",
        reason="vendor maintenance window, INC-2291",
        until=timezone.now() + timedelta(hours=2),
    )
    disable_breaker("geocoder", actor="bob", reason="breaker flapping on a healthy vendor")
    search = get_breaker("search")
    for _ in range(8):
        search.record_success(search.acquire("query"))
    flush_successes()


def send_events(env: dict[str, str], url: str) -> None:
    now = int(time.time())
    sent = [
        (event_id, event_type, now, {"object": "payment_intent", **payment_intent})
        for event_id, event_type, payment_intent in EVENTS
    ] + [
        (event_id, "customer.subscription.updated", now - ago,
         {"object": "subscription", "id": subscription, "status": status,
          "customer": "cus_3Demo", "current_period_end": now + 30 * 86400})
        for event_id, ago, subscription, status in SUBSCRIPTION_EVENTS
    ]  # fmt: skip
    for event_id, event_type, created, data_object in sent:
        payload = {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "data": {"object": data_object},
        }
        manage(
            env, "send_test_webhook", "stripe", "--url", url,
            "--data", json.dumps(payload),
        )  # fmt: skip


# -- 4. the screenshots ------------------------------------------------------------------------


def take(url: str, password: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{url}/admin/login/")
        page.fill("#id_username", USERNAME)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url(f"{url}/admin/")

        def shot(name: str, *, full_page: bool = True) -> None:
            page.screenshot(path=str(out / name), full_page=full_page)
            print(f"screenshots: {out / name}: {SHOTS[name]}", flush=True)

        page.goto(f"{url}/admin/webhooks/webhookevent/")
        shot("admin-events.png")
        row = page.locator("#result_list tbody tr", has_text="evt_3WrongAmount1002")
        row.locator("a").first.click()  # the row's link, whichever column holds it
        page.wait_for_url("**/change/")
        shot("admin-event.png")

        page.goto(f"{url}/admin/integrations/circuitbreaker/")
        page.click("#result_list a:text-is('stripe')")
        page.wait_for_url("**/change/")
        shot("admin-breaker.png")
        page.click("a.breaker-action:text-is('Force open')")
        page.fill("#id_reason", "Stripe incident: refunds failing with 503, INC-2301")
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() + 3 * 3600))
        page.fill("#id_until", until)
        shot("admin-breaker-action.png", full_page=False)
        page.click("input[type=submit]")
        page.wait_for_selector("text=Are you sure?")
        shot("admin-breaker-confirm.png", full_page=False)

        page.goto(f"{url}/admin/webhooks/orderingstate/")
        shot("admin-ordering.png", full_page=False)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--seed", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:  # the seeding steps, each in a Django process of the sandbox's settings
        import django

        django.setup()
        seed_before(os.environ["SCREENSHOTS_PASSWORD"]) if args.seed == "before" else seed_after()
        return

    ensure_tools()
    state = Path(tempfile.mkdtemp(prefix="tether-screenshots-"))
    password = secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sandbox_project.settings",
        "DJANGO_DEBUG": "1",  # runserver serves the admin's static files
        "SANDBOX_STATE_DIR": str(state),
        "SCREENSHOTS_PASSWORD": password,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for variable in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_CACHE_URL"):
        env.pop(variable, None)  # the sandbox's zero-setup defaults: SQLite, no broker server
    try:
        manage(env, "migrate", "--noinput")
        seed = [sys.executable, str(Path(__file__).resolve())]
        subprocess.run([*seed, "--seed", "before"], cwd=ROOT, env=env, check=True)
        with sandbox_server(env, free_port()) as url:
            send_events(env, url)
            subprocess.run([*seed, "--seed", "after"], cwd=ROOT, env=env, check=True)
            take(url, password, args.out)
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
