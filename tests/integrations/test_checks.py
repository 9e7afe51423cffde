"""System checks for settings.INTEGRATIONS: each id, with its hint, and a clean default."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from integrations.checks import check_integrations_settings


def ids(**integrations) -> list[str]:
    with override_settings(INTEGRATIONS=integrations):
        return [message.id for message in check_integrations_settings()]


def test_defaults_and_a_full_valid_configuration_pass():
    assert ids() == []
    assert (
        ids(
            TIMEOUT={"CONNECT": 1, "READ": 2.5, "WRITE": 2.5, "POOL": 1},
            RETRY={"MAX_ATTEMPTS": 4, "BASE_DELAY": 0, "MAX_DELAY": 5, "DEADLINE": 20},
            BREAKER={"FAILURE_THRESHOLD": 3, "FAILURE_RATE": 0.5, "FAIL_OPEN_ON_DB_ERROR": False},
            SERVICES={
                "rates": {
                    "BASE_URL": "https://rates.example.com/v1",
                    "API_KEY": "anything",  # vendor options are the vendor's business
                    "RETRY": {"MAX_ATTEMPTS": 1},
                    "BREAKER": {"FAILURE_RATE": None},
                },
                "unset": {"BASE_URL": ""},
            },
        )
        == []
    )


def test_e001_integrations_must_be_a_dict():
    with override_settings(INTEGRATIONS=["RETRY"]):
        [error] = check_integrations_settings()
    assert error.id == "integrations.E001"
    assert error.hint


def test_e002_unknown_top_level_key_with_suggestion():
    with override_settings(INTEGRATIONS={"TIMEOUTS": {}}):
        [error] = check_integrations_settings()
    assert error.id == "integrations.E002"
    assert "Did you mean 'TIMEOUT'" in error.hint


def test_e003_policy_section_must_be_a_dict():
    assert ids(TIMEOUT=5) == ["integrations.E003"]
    assert ids(SERVICES={"x": {"RETRY": [3]}}) == ["integrations.E003"]


def test_e004_unknown_key_in_a_policy_section():
    assert ids(RETRY={"ATTEMPTS": 3}) == ["integrations.E004"]
    with override_settings(INTEGRATIONS={"SERVICES": {"x": {"TIMEOUT": {"REED": 1}}}}):
        [error] = check_integrations_settings()
    assert error.id == "integrations.E004"
    assert "'x'" in error.msg and "READ" in error.hint


@pytest.mark.parametrize(
    "integrations",
    [
        {"TIMEOUT": {"READ": "10"}},
        {"RETRY": {"MAX_ATTEMPTS": 2.5}},
        {"RETRY": {"DEADLINE": True}},
        {"BREAKER": {"FAIL_OPEN_ON_DB_ERROR": "yes"}},
        {"BREAKER": {"FAILURE_RATE": "half"}},
        {"SERVICES": {"x": {"BREAKER": {"FAILURE_THRESHOLD": None}}}},
    ],
)
def test_e005_wrong_type(integrations):
    assert ids(**integrations) == ["integrations.E005"]


@pytest.mark.parametrize(
    "integrations",
    [
        {"TIMEOUT": {"CONNECT": -1}},
        {"TIMEOUT": {"READ": 0}},
        {"RETRY": {"MAX_ATTEMPTS": 0}},
        {"RETRY": {"BASE_DELAY": -0.5}},
        {"RETRY": {"DEADLINE": 0}},
        {"BREAKER": {"HALF_OPEN_MAX_CALLS": 0}},
        {"BREAKER": {"FAILURE_RATE": 1.5}},
        {"SERVICES": {"x": {"TIMEOUT": {"POOL": -3}}}},
    ],
)
def test_e006_out_of_range(integrations):
    assert ids(**integrations) == ["integrations.E006"]


def test_e007_services_shape():
    assert ids(SERVICES=["rates"]) == ["integrations.E007"]
    assert ids(SERVICES={"rates": "https://rates.example.com"}) == ["integrations.E007"]


@pytest.mark.parametrize("url", ["rates.example.com", "ftp://rates.example.com", "https://", 42])
def test_e008_base_url(url):
    assert ids(SERVICES={"rates": {"BASE_URL": url}}) == ["integrations.E008"]


@pytest.mark.parametrize(
    ("integrations", "expected"),
    [
        ({"MAX_RESPONSE_BYTES": 1}, []),
        ({"SERVICES": {"x": {"MAX_RESPONSE_BYTES": 50 * 1024 * 1024}}}, []),
        ({"MAX_RESPONSE_BYTES": "10MB"}, ["integrations.E005"]),
        ({"MAX_RESPONSE_BYTES": 1.5e6}, ["integrations.E005"]),
        ({"MAX_RESPONSE_BYTES": True}, ["integrations.E005"]),
        ({"MAX_RESPONSE_BYTES": None}, ["integrations.E005"]),
        ({"MAX_RESPONSE_BYTES": 0}, ["integrations.E006"]),
        ({"SERVICES": {"x": {"MAX_RESPONSE_BYTES": -1}}}, ["integrations.E006"]),
    ],
)
def test_max_response_bytes(integrations, expected):
    assert ids(**integrations) == expected


@pytest.mark.parametrize(
    "origins",
    [
        "https://files.example.com",  # a string, not a list
        ["files.example.com"],
        ["ftp://files.example.com"],
        ["https://files.example.com/downloads"],  # an origin has no path
        ["https://files.example.com?x=1"],
        ["https://user:pw@files.example.com"],
        ["https://files.example.com:99999"],
        [None],
    ],
)
def test_e009_allowed_origins(origins):
    with override_settings(INTEGRATIONS={"SERVICES": {"x": {"ALLOWED_ORIGINS": origins}}}):
        [error] = check_integrations_settings()
    assert error.id == "integrations.E009"
    assert "'x'" in error.msg and error.hint


def test_allowed_origins_that_are_origins_pass():
    origins = ["https://files.example.com", "http://127.0.0.1:8080/", "https://[::1]:8443"]
    assert ids(SERVICES={"x": {"ALLOWED_ORIGINS": origins}}) == []
    assert ids(SERVICES={"x": {"ALLOWED_ORIGINS": ()}}) == []


def test_w001_max_delay_below_base_delay():
    assert ids(RETRY={"BASE_DELAY": 5, "MAX_DELAY": 1}) == ["integrations.W001"]


def test_several_problems_are_all_reported():
    found = ids(
        TIMEOUT={"READ": -1, "CONECT": 1},
        SERVICES={"a": {"BASE_URL": "nope"}, "b": {"RETRY": {"MAX_ATTEMPTS": "3"}}},
    )
    assert sorted(found) == [
        "integrations.E004",
        "integrations.E005",
        "integrations.E006",
        "integrations.E008",
    ]


def test_manage_py_check_reports_it():
    with (
        override_settings(INTEGRATIONS={"TIMEOUT": {"READ": -1}}),
        pytest.raises(SystemCheckError, match=r"integrations\.E006"),
    ):
        call_command("check")
