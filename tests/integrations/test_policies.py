"""Policy objects: defaults, settings precedence, overrides, and reloading on settings changes."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from integrations import BreakerPolicy, RetryPolicy, Timeout


def test_defaults_match_the_documented_settings():
    assert Timeout.for_service("any") == Timeout(connect=3.05, read=10.0, write=10.0, pool=5.0)
    assert RetryPolicy.for_service("any") == RetryPolicy(
        max_attempts=3, base_delay=0.5, max_delay=8.0, deadline=30.0
    )
    breaker = BreakerPolicy.for_service("any")
    assert (breaker.failure_threshold, breaker.reset_timeout, breaker.half_open_max_calls) == (
        5,
        30.0,
        1,
    )
    assert breaker.cache_ttl == 1.0 and breaker.fail_open_on_db_error is True


@override_settings(
    INTEGRATIONS={
        "TIMEOUT": {"READ": 20.0},
        "RETRY": {"MAX_ATTEMPTS": 5},
        "SERVICES": {"slow": {"TIMEOUT": {"CONNECT": 1.0}, "RETRY": {"DEADLINE": 90}}},
    }
)
def test_global_then_per_service_key_by_key():
    assert Timeout.for_service("other") == Timeout(read=20.0)
    assert Timeout.for_service("slow") == Timeout(connect=1.0, read=20.0)
    assert RetryPolicy.for_service("slow") == RetryPolicy(max_attempts=5, deadline=90)


def test_settings_changes_are_seen_at_once():
    assert RetryPolicy.for_service("svc").max_attempts == 3
    with override_settings(INTEGRATIONS={"RETRY": {"MAX_ATTEMPTS": 9}}):
        assert RetryPolicy.for_service("svc").max_attempts == 9
    assert RetryPolicy.for_service("svc").max_attempts == 3


def test_resolve_applies_overrides_lowest_first():
    policy = RetryPolicy.resolve("svc", {"MAX_ATTEMPTS": 4}, None, {"base_delay": 0.1})
    assert policy == RetryPolicy(max_attempts=4, base_delay=0.1)
    assert RetryPolicy.resolve("svc", {"MAX_ATTEMPTS": 4}, RetryPolicy(deadline=5)) == RetryPolicy(
        deadline=5
    )


def test_unknown_override_key_names_the_known_ones():
    with pytest.raises(ImproperlyConfigured, match=r"READ_TIMEOUT.*CONNECT"):
        Timeout.resolve("svc", {"READ_TIMEOUT": 3})


def test_override_of_the_wrong_kind_is_refused():
    with pytest.raises(ImproperlyConfigured, match="Timeout or a dict"):
        Timeout.resolve("svc", RetryPolicy())


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (100.0, Timeout(connect=3.05, read=10.0, write=10.0, pool=5.0)),
        (4.0, Timeout(connect=3.05, read=4.0, write=4.0, pool=4.0)),
        (0.5, Timeout(connect=0.5, read=0.5, write=0.5, pool=0.5)),
        (0.0, Timeout(connect=0.001, read=0.001, write=0.001, pool=0.001)),
    ],
)
def test_capped_to_what_the_deadline_leaves(remaining, expected):
    assert Timeout().capped(remaining) == expected


@pytest.mark.parametrize("policy", [Timeout, RetryPolicy, BreakerPolicy])
def test_every_field_has_its_default_in_settings_and_the_two_agree(policy):
    from dataclasses import fields

    from integrations.conf import DEFAULTS

    section = DEFAULTS[policy.section]
    assert {f.name.upper() for f in fields(policy)} == set(section)
    assert policy.for_service("any") == policy()


def test_service_settings_are_merged_once_per_settings_change():
    from integrations.conf import integrations_settings, service_settings

    with override_settings(INTEGRATIONS={"SERVICES": {"rates": {"RETRY": {"MAX_ATTEMPTS": 2}}}}):
        first = service_settings("rates")
        assert service_settings("rates") is first  # memoized, shared
        assert first["RETRY"]["MAX_ATTEMPTS"] == 2
        assert RetryPolicy.for_service("rates").max_attempts == 2
        integrations_settings.reload()
        assert service_settings("rates") is not first  # a reload invalidates it
    assert service_settings("rates")["RETRY"]["MAX_ATTEMPTS"] == 3
    assert RetryPolicy.for_service("rates").max_attempts == 3
