"""Handler registry: patterns, registration, autodiscovery; and the same patterns in the DB."""

from __future__ import annotations

import pytest

from tests.webhooks.factories import WebhookEventFactory
from webhooks import on
from webhooks.registry import handlers_for, pattern_matches, registry
from webhooks.selectors import filter_events


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("*", "invoice.paid", True),
        ("*", "push", True),
        ("invoice.*", "invoice.paid", True),
        ("invoice.*", "invoice.payment.failed", True),
        ("invoice.*", "invoice", False),
        ("invoice.*", "invoiceitem.created", False),
        ("customer.*.created", "customer.subscription.created", True),
        ("customer.*.created", "customer.subscription.deleted", False),
        ("charge.?efunded", "charge.refunded", True),
        ("pull_request", "pull_request", True),
        ("pull_request", "pull_request.opened", True),
        ("pull_request", "pull_request_review", False),
        ("pull_request", "pull_request_review.submitted", False),
        ("pull_request.opened", "pull_request.opened", True),
        ("pull_request.opened", "pull_request.closed", False),
        ("push", "pushed", False),
        # Regex metacharacters are literal in a pattern.
        ("a+b", "aab", False),
        ("a+b", "a+b", True),
        ("a.b", "axb", False),
        ("(x)*", "(x)yz", True),
    ],
)
def test_pattern_matches(pattern, event_type, expected):
    assert pattern_matches(pattern, event_type) is expected


@pytest.mark.django_db
@pytest.mark.parametrize(
    "pattern",
    ["*", "invoice.*", "customer.*.created", "pull_request", "charge.?efunded", "a+b", "(x)*"],
)
def test_database_filter_agrees_with_pattern_matches(pattern):
    types = [
        "invoice.paid", "invoice.payment.failed", "invoice", "invoiceitem.created",
        "customer.subscription.created", "customer.subscription.deleted", "charge.refunded",
        "pull_request", "pull_request.opened", "pull_request_review", "a+b", "aab", "(x)yz",
    ]  # fmt: skip
    for event_type in types:
        WebhookEventFactory(event_type=event_type)
    matched = set(filter_events(type_pattern=pattern).values_list("event_type", flat=True))
    assert matched == {t for t in types if pattern_matches(pattern, t)}
    assert matched  # every pattern above matches something


def test_on_registers_in_order_and_returns_the_function(handlers):
    def first(event): ...

    def second(event): ...

    def other(event): ...

    assert on("stripe", "invoice.*")(first) is first
    on("stripe", "invoice.paid")(second)
    on("github", "invoice.paid")(other)
    assert handlers_for("stripe", "invoice.paid")[-2:] == [first, second]
    assert other not in handlers_for("stripe", "invoice.paid")
    assert handlers_for("github", "invoice.paid")[-1] is other
    assert first not in handlers_for("stripe", "invoicex")


def test_registering_the_same_function_again_does_not_run_it_twice(handlers):
    def handler(event): ...

    on("stripe", "x.y")(handler)
    on("stripe", "x.y")(handler)
    assert handlers_for("stripe", "x.y").count(handler) == 1


@pytest.mark.parametrize(("endpoint", "pattern"), [("", "x"), ("stripe", ""), (None, "x")])
def test_on_rejects_an_empty_endpoint_or_pattern(handlers, endpoint, pattern):
    with pytest.raises(ValueError):
        on(endpoint, pattern)(lambda event: None)


def test_on_rejects_a_non_callable(handlers):
    with pytest.raises(TypeError):
        registry.register("stripe", "x", "not callable")


def test_autodiscover_found_the_sandbox_demo_handlers():
    # sandbox_project.demo.webhooks is imported by WebhooksConfig.ready() -> autodiscover().
    modules = {getattr(r.handler, "__module__", "") for r in registry}
    assert "sandbox_project.demo.webhooks" in modules
    assert handlers_for("stripe", "payment_intent.succeeded")
    assert handlers_for("github", "push")


def test_a_handler_for_an_unconfigured_endpoint_is_a_system_check_warning(handlers):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    call_command("check", fail_level="WARNING")  # every registered handler is reachable

    @on("strpie", "invoice.paid")  # a typo: never configured
    def typo(event): ...

    with pytest.raises(SystemCheckError) as excinfo:
        call_command("check", fail_level="WARNING")
    message = str(excinfo.value)
    assert "webhooks.W001" in message
    assert "test_registry" in message and "typo" in message and "'strpie'" in message
    assert "stripe" in message  # the hint lists the configured endpoints


def test_an_ordered_handler_without_a_version_on_an_endpoint_without_times_is_a_warning(
    handlers, settings
):
    """GitHub deliveries carry no occurred time, the default version: W005 at start-up rather
    than every run failing. Stripe's events have theirs; naming a version settles it."""
    from webhooks.checks import check_webhook_handlers

    @on("stripe", "customer.subscription.*", ordering_key="data.object.id")
    def by_time(event): ...

    @on("github", "pull_request", ordering_key="pull_request.id",
        ordering_version="pull_request.updated_at")  # fmt: skip
    def by_version(event): ...

    assert [m.id for m in check_webhook_handlers()] == []

    @on("github", "issues", ordering_key="issue.id")
    def no_version(event): ...

    [warning] = check_webhook_handlers()
    assert warning.id == "webhooks.W005"
    assert "no_version" in warning.msg and "'issue.id'" in warning.msg and "'github'" in warning.msg
    assert "ordering_version=" in warning.hint

    # hmac: its signed timestamp is the occurred time; without TIMESTAMP_HEADER there is none.
    hmac = {"PROVIDER": "hmac", "SECRETS": ["s3cr3t-value"], "HEADER": "X-Sig",
            "EVENT_ID": "json:id", "EVENT_TYPE": "json:type"}  # fmt: skip
    endpoints = {"untimed": hmac, "timed": {**hmac, "TIMESTAMP_HEADER": "X-Time"}}
    settings.WEBHOOKS = {**settings.WEBHOOKS, "ENDPOINTS": endpoints}
    handlers.restore([])  # only the two below

    @on("untimed", "order.*", ordering_key="data.id")
    def untimed(event): ...

    @on("timed", "order.*", ordering_key="data.id")
    def timed(event): ...

    assert [(m.id, "untimed" in m.msg) for m in check_webhook_handlers()] == [
        ("webhooks.W005", True)
    ]
