"""Heal a gap: Stripe failed to deliver a ``payment_intent.succeeded``; ``reconcile_webhooks``
finds it in Stripe's events list and the demo's order ends paid.

Starts ``integrations.testing.stripe.FakeStripe`` on 127.0.0.1 with a new pending order's
PaymentIntent and three events: its ``payment_intent.succeeded`` (never delivered), one that
was delivered (Stripe does not list it), and a ``customer.created`` (no handler: not stored).
Then runs ``reconcile_webhooks stripe --dry-run`` and ``reconcile_webhooks stripe`` twice with
the ``stripe`` service pointed at the fake: the undelivered event is stored (``source``
``reconcile``) and enqueued, and the second run finds it already stored (Stripe still lists it:
its delivery never succeeded); once the worker has processed it, the order is paid.

With ``--serve`` the fake keeps running instead, and the command prints the environment to run
``reconcile_webhooks stripe`` yourself, from another shell, against it.
"""

from __future__ import annotations

import time
import uuid
from io import StringIO
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.test import override_settings

from integrations.conf import integrations_settings
from integrations.testing.stripe import FakeStripe
from tether.conf import deep_merge

from ...models import Order

#: The fake's API key (a test key: the fake checks it as Stripe would).
API_KEY = "sk_test_sandbox_reconcile_demo"
ADMIN_PAGE = "/admin/webhooks/webhookevent/?source__exact=reconcile"


class Command(BaseCommand):
    help = (
        "Show reconcile_webhooks healing a gap: a fake Stripe lists a payment_intent.succeeded "
        "it never delivered; reconcile stores it and the worker marks the demo order paid."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--serve",
            action="store_true",
            help="keep the fake Stripe running and print how to reconcile against it yourself",
        )
        parser.add_argument(
            "--port", type=int, default=0, help="the fake's port with --serve (default: any)"
        )

    def handle(self, *args: Any, serve: bool, port: int, **options: Any) -> None:
        order = Order.objects.create(reference=f"demo-{uuid.uuid4().hex[:8]}", amount=1099)
        with FakeStripe(api_key=API_KEY, port=port if serve else 0) as fake:
            payment_intent = fake.add_payment_intent(amount=order.amount, currency=order.currency)
            payment_intent["metadata"] = {"order_id": order.reference}
            missed = fake.add_event("payment_intent.succeeded", data_object=payment_intent)
            fake.add_event("payment_intent.succeeded", delivered=True)
            fake.add_event("customer.created")
            self.stdout.write(
                f"Order {order.reference} is pending. A fake Stripe on {fake.base_url} holds "
                f"its payment_intent.succeeded ({missed['id']}), never delivered, beside a "
                "delivered event and a customer.created."
            )
            if serve:
                self._serve(fake)
                return
            merged = deep_merge(
                integrations_settings.merged,
                {"SERVICES": {"stripe": {"API_KEY": API_KEY, "BASE_URL": fake.base_url}}},
            )
            with override_settings(INTEGRATIONS=merged):
                for extra in (["--dry-run"], [], []):
                    self.stdout.write(f"\n$ manage.py reconcile_webhooks stripe {' '.join(extra)}")
                    out = StringIO()
                    try:
                        call_command("reconcile_webhooks", "stripe", *extra, stdout=out)
                    except CommandError as exc:
                        raise CommandError(f"reconcile_webhooks failed: {exc}") from exc
                    self.stdout.write(out.getvalue().rstrip())
        self.stdout.write(
            f"\nThe event is stored once, with source 'reconcile' (see {ADMIN_PAGE}), and "
            f"enqueued: once the worker has processed it, order {order.reference} is paid "
            "(Demo > Orders)."
        )

    def _serve(self, fake: FakeStripe) -> None:
        self.stdout.write(
            "\nIn another shell, with the sandbox's worker running:\n\n"
            f"  STRIPE_API_KEY={API_KEY} STRIPE_API_BASE={fake.base_url} "
            ".venv/bin/python manage.py reconcile_webhooks stripe\n\n"
            "Ctrl-C stops the fake."
        )
        self.stdout.flush()
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            self.stdout.write("\nStopped.")
