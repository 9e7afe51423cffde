"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. What a call logs and the signals it
sends."""

from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.breaker import get_breaker
from integrations.exceptions import (
    CircuitOpenError,
    IntegrationUnavailable,
)
from integrations.signals import call_finished, call_retried
from integrations.testing import Reply, force_breaker
from tests.integrations.rates import Rates, configure

pytestmark = pytest.mark.django_db


# --- logging and signals ----------------------------------------------------------------------


def test_success_is_logged_with_extras(rates, vendor, caplog):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))

    with caplog.at_level(logging.INFO, logger="integrations.calls"):
        rates.rate("EUR")

    [record] = [r for r in caplog.records if r.name == "integrations.calls"]
    assert record.levelno == logging.INFO
    assert record.service == "rates"
    assert record.operation == "rate"
    assert record.status == "success"
    assert record.attempts == 1
    assert 0 < record.duration < 5
    assert record.breaker_state == "closed"


def test_the_log_line_of_a_call_whose_snapshot_expired_makes_no_query(vendor, settings, caplog):
    # The snapshot is fresh when the call starts and has expired when it ends: the log line
    # must report the state this process last saw, not re-read it from the database.
    configure(settings, vendor.url, BREAKER={"CACHE_TTL": 0.3})
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.6, Reply.json({"rate": 1})))
    client = Rates()
    get_breaker("rates").snapshot(fresh=True)  # creates the row; fresh for 0.3 s

    with (
        caplog.at_level(logging.INFO, logger="integrations.calls"),
        CaptureQueriesContext(connection) as ctx,
    ):
        assert client.rate("EUR") == 1

    assert [q["sql"] for q in ctx.captured_queries] == []
    [record] = [r for r in caplog.records if r.name == "integrations.calls"]
    assert record.breaker_state == "closed"
    assert record.duration >= 0.6


def test_failure_and_retries_are_logged(rates, vendor, caplog, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(502))

    with (
        caplog.at_level(logging.INFO, logger="integrations.calls"),
        pytest.raises(IntegrationUnavailable),
    ):
        rates.rate("EUR")

    records = [r for r in caplog.records if r.name == "integrations.calls"]
    retried = [r for r in records if r.levelno == logging.INFO]
    [finished] = [r for r in records if r.levelno == logging.WARNING]
    assert [r.attempt for r in retried] == [1, 2]
    assert all(r.status_code == 502 for r in retried)
    assert finished.status == "integration_unavailable"
    assert finished.status_code == 502
    assert finished.attempts == 3


def test_signals_report_retries_and_the_finished_call(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(), Reply.json({"rate": 1}))
    finished, retried = [], []

    def on_finished(sender, **kwargs):
        finished.append((sender, kwargs))

    def on_retried(sender, **kwargs):
        retried.append((sender, kwargs))

    call_finished.connect(on_finished)
    call_retried.connect(on_retried)
    try:
        rates.rate("EUR")
    finally:
        call_finished.disconnect(on_finished)
        call_retried.disconnect(on_retried)

    [(sender, info)] = finished
    assert sender == "rates"
    assert info["operation"] == "rate"
    assert info["outcome"] == "success"
    assert info["attempts"] == 2
    assert info["duration"] > 0
    [(sender, info)] = retried
    assert sender == "rates"
    assert info["attempt"] == 1
    assert info["delay"] == backoff.sleeps[0]
    assert isinstance(info["error"], IntegrationUnavailable)


def test_circuit_open_outcome_in_signal(rates, vendor):
    force_breaker("rates", "forced_open")
    outcomes = []

    def on_finished(sender, **kwargs):
        outcomes.append((kwargs["outcome"], kwargs["attempts"]))

    call_finished.connect(on_finished)
    try:
        with pytest.raises(CircuitOpenError):
            rates.rate("EUR")
    finally:
        call_finished.disconnect(on_finished)
    assert outcomes == [("circuit_open_error", 0)]
