"""System checks of ``settings.WEBHOOKS``: each error, with the endpoint and key named."""

from __future__ import annotations

import base64

import pytest
from django.conf import settings as django_settings
from django.core.checks import WARNING, Error
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from sandbox_project import settings as sandbox_settings
from tests.vendor import vendor_json
from webhooks.checks import check_webhook_endpoints, check_webhook_signed_content
from webhooks.exceptions import UnknownEndpoint, WebhookConfigurationError
from webhooks.providers import get_provider
from webhooks.providers.standard import StandardWebhooksProvider

HMAC = {
    "PROVIDER": "hmac",
    "SECRETS": ["s3cr3t-value"],
    "HEADER": "X-Sig",
    "EVENT_ID": "json:id",
    "EVENT_TYPE": "json:type",
}


class NotAProvider:
    pass


def errors_for(settings, webhooks):
    settings.WEBHOOKS = webhooks
    return check_webhook_endpoints()


def only(errors: list[Error]) -> Error:
    assert len(errors) == 1, errors
    return errors[0]


def test_the_test_settings_are_clean():
    assert check_webhook_endpoints() == []


def test_runs_with_manage_py_check(settings):
    settings.WEBHOOKS = {"ENDPOINTS": {"x": {"PROVIDER": "nope", "SECRETS": ["a"]}}}
    with pytest.raises(SystemCheckError, match=r"webhooks\.E001"):
        call_command("check")


@pytest.mark.parametrize(
    ("provider", "detail"),
    [
        (None, "no provider set"),
        ("", "no provider set"),
        ("paypal", "unknown provider 'paypal'"),
        ("myapp.hooks.Missing", "cannot import"),
        ("tests.webhooks.test_checks.NotAProvider", "not a subclass"),
        (42, "no provider set"),
    ],
)
def test_e001_unknown_provider(settings, provider, detail):
    config = {"SECRETS": ["a"]} if provider is None else {"PROVIDER": provider, "SECRETS": ["a"]}
    error = only(errors_for(settings, {"ENDPOINTS": {"shop": config}}))
    assert error.id == "webhooks.E001"
    assert 'WEBHOOKS["ENDPOINTS"]["shop"]["PROVIDER"]' in error.msg
    assert "'shop'" in error.msg and detail in error.msg
    assert "stripe, github, standard, hmac" in error.hint


def test_dotted_path_to_a_provider_class_is_fine(settings):
    path = "webhooks.providers.github.GitHubProvider"
    assert errors_for(settings, {"ENDPOINTS": {"gh": {"PROVIDER": path, "SECRETS": ["a"]}}}) == []


@pytest.mark.parametrize("secrets", [None, []])
def test_e002_no_secrets(settings, secrets):
    config = {"PROVIDER": "github"} if secrets is None else {"PROVIDER": "github", "SECRETS": []}
    error = only(errors_for(settings, {"ENDPOINTS": {"gh": config}}))
    assert error.id == "webhooks.E002"
    assert 'WEBHOOKS["ENDPOINTS"]["gh"]["SECRETS"]' in error.msg
    assert error.hint


@pytest.mark.parametrize("secret", ["", "   "])
def test_e003_empty_secret(settings, secret):
    config = {"PROVIDER": "stripe", "SECRETS": ["whsec_ok", secret]}
    error = only(errors_for(settings, {"ENDPOINTS": {"st": config}}))
    assert error.id == "webhooks.E003"
    assert 'WEBHOOKS["ENDPOINTS"]["st"]["SECRETS"][1]' in error.msg
    assert "whsec_ok" not in error.msg + error.hint


@pytest.mark.parametrize("missing", ["HEADER", "EVENT_ID", "EVENT_TYPE"])
def test_e004_hmac_missing_option(settings, missing):
    config = {k: v for k, v in HMAC.items() if k != missing}
    error = only(errors_for(settings, {"ENDPOINTS": {"partner": config}}))
    assert error.id == "webhooks.E004"
    assert f'WEBHOOKS["ENDPOINTS"]["partner"]["{missing}"]' in error.msg
    assert "hmac endpoint 'partner'" in error.msg
    assert error.hint


def test_e004_signed_timestamp_without_its_header(settings):
    config = {**HMAC, "SIGNED_PAYLOAD": "{timestamp}.{body}"}
    error = only(errors_for(settings, {"ENDPOINTS": {"partner": config}}))
    assert (error.id, '["TIMESTAMP_HEADER"]' in error.msg) == ("webhooks.E004", True)


@pytest.mark.parametrize(
    ("webhooks", "key"),
    [
        ({"ENDPOINTS": ["stripe"]}, 'WEBHOOKS["ENDPOINTS"]'),
        ({"ENDPOINTS": {"st": "stripe"}}, 'WEBHOOKS["ENDPOINTS"]["st"]'),
        ({"ENDPOINTS": {"st": {"PROVIDER": "stripe", "SECRETS": "whsec_x"}}}, '["SECRETS"]'),
        ({"ENDPOINTS": {"st": {"PROVIDER": "stripe", "SECRETS": [b"whsec_x"]}}}, '["SECRETS"]'),
        (
            {"ENDPOINTS": {"st": {"PROVIDER": "stripe", "SECRETS": ["a"], "TOLERANCE": "300"}}},
            '["TOLERANCE"]',
        ),
        (
            {"ENDPOINTS": {"st": {"PROVIDER": "stripe", "SECRETS": ["a"], "TOLERANCE": 0}}},
            '["TOLERANCE"]',
        ),
        (
            {"ENDPOINTS": {"st": {"PROVIDER": "stripe", "SECRETS": ["a"], "MAX_BODY_BYTES": 1.5}}},
            '["MAX_BODY_BYTES"]',
        ),
        (
            {"ENDPOINTS": {"st": {"PROVIDER": "stripe", "SECRETS": ["a"], "MAX_BODY_BYTES": True}}},
            '["MAX_BODY_BYTES"]',
        ),
        ({"ENDPOINTS": {"p": {**HMAC, "HEADER": ["X-Sig"]}}}, '["HEADER"]'),
        ({"MAX_BODY_BYTES": -1}, 'WEBHOOKS["MAX_BODY_BYTES"]'),
        ({"TOLERANCE": None}, 'WEBHOOKS["TOLERANCE"]'),
    ],
)
def test_e005_wrong_types(settings, webhooks, key):
    error = only(errors_for(settings, webhooks))
    assert error.id == "webhooks.E005"
    assert key in error.msg
    assert error.hint


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("TOLERANCE", 300, True),
        ("TOLERANCE", 0.5, True),
        ("TOLERANCE", 0, False),
        ("TOLERANCE", -1.0, False),
        ("TOLERANCE", float("nan"), False),
        ("TOLERANCE", True, False),
        ("TOLERANCE", "300", False),
        ("TOLERANCE", 86_400, True),
        ("TOLERANCE", 86_400.5, False),
        ("TOLERANCE", float("inf"), False),
        ("MAX_BODY_BYTES", 1, True),
        ("MAX_BODY_BYTES", 100 * 1024 * 1024, True),
        ("MAX_BODY_BYTES", 100 * 1024 * 1024 + 1, False),
        ("MAX_BODY_BYTES", 1.0, False),
        ("MAX_BODY_BYTES", 0, False),
        ("MAX_BODY_BYTES", False, False),
        ("MAX_BODY_BYTES", None, False),
    ],
)
def test_limits_follow_one_rule_globally_and_per_endpoint(settings, option, value, valid):
    endpoint = {"PROVIDER": "stripe", "SECRETS": ["a"]}
    global_errors = errors_for(settings, {option: value, "ENDPOINTS": {"st": endpoint}})
    endpoint_errors = errors_for(settings, {"ENDPOINTS": {"st": {**endpoint, option: value}}})
    for errors, key in (
        (global_errors, f'WEBHOOKS["{option}"]'),
        (endpoint_errors, f'WEBHOOKS["ENDPOINTS"]["st"]["{option}"]'),
    ):
        if valid:
            assert errors == []
        else:
            error = only(errors)
            assert (error.id, error.msg.startswith(f"{key}:")) == ("webhooks.E005", True)


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [
        ("TOLERANCE", -1, "number (seconds) up to 86,400"),
        ("MAX_BODY_BYTES", 1.5, "integer (bytes) up to 104,857,600"),
    ],
)
def test_limit_messages_say_the_rule_and_where_the_default_comes_from(
    settings, option, value, kind
):
    endpoint = {"PROVIDER": "stripe", "SECRETS": ["a"]}
    error = only(errors_for(settings, {option: value, "ENDPOINTS": {"st": endpoint}}))
    assert error.msg == f'WEBHOOKS["{option}"]: must be a positive {kind}, not {value!r}.'
    assert error.hint == "Leave it out to use the default."
    error = only(errors_for(settings, {"ENDPOINTS": {"st": {**endpoint, option: value}}}))
    assert error.msg == (
        f'WEBHOOKS["ENDPOINTS"]["st"]["{option}"]: endpoint \'st\': {option} must be a '
        f"positive {kind}, not {value!r}."
    )
    assert error.hint == "Leave it out to use the global WEBHOOKS setting of the same name."


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"ALGORITHM": "md5"}, "ALGORITHM"),
        ({"ENCODING": "base32"}, "ENCODING"),
        ({"EVENT_ID": "id"}, "EVENT_ID"),
        ({"EVENT_TYPE": "json:a..b"}, "EVENT_TYPE"),
        ({"SIGNED_PAYLOAD": "{body}{timestamp}", "TIMESTAMP_HEADER": "X-Ts"}, "SIGNED_PAYLOAD"),
    ],
)
def test_e006_invalid_hmac_values(settings, options, key):
    error = only(errors_for(settings, {"ENDPOINTS": {"p": {**HMAC, **options}}}))
    assert error.id == "webhooks.E006"
    assert f'WEBHOOKS["ENDPOINTS"]["p"]["{key}"]' in error.msg
    assert error.hint


def test_e006_standard_secret_not_base64(settings):
    config = {
        "PROVIDER": "standard",
        "SECRETS": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!x"],
    }
    error = only(errors_for(settings, {"ENDPOINTS": {"acme": config}}))
    assert error.id == "webhooks.E006"
    assert 'WEBHOOKS["ENDPOINTS"]["acme"]["SECRETS"][1]' in error.msg
    assert "whsec_!x" not in error.msg


@pytest.mark.parametrize(
    ("secret", "detail"),
    [
        # The library alone takes these: it drops stray characters and takes any key length.
        ("whsec_not base64 at all!!", "is not base64"),
        ("whsec_AA", "decodes to fewer than 24 bytes"),  # a 1-byte key
        ("whsec_" + base64.b64encode(bytes(23)).decode(), "decodes to fewer than 24 bytes"),
        ("whsec_", "decodes to fewer than 24 bytes"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", "is not base64"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8I-PZIo2LaLaSw", "is not base64"),  # URL-safe alphabet
    ],
)
def test_e006_standard_secret_not_strict_base64_of_24_bytes(settings, secret, detail):
    config = {"PROVIDER": "standard", "SECRETS": [secret]}
    error = only(errors_for(settings, {"ENDPOINTS": {"acme": config}}))
    assert error.id == "webhooks.E006"
    assert error.msg.startswith('WEBHOOKS["ENDPOINTS"]["acme"]["SECRETS"][0]: ')
    assert detail in error.msg
    assert "at least 24 bytes" in error.msg and "24 to 64 random bytes" in error.hint
    encoded = secret.removeprefix("whsec_")
    assert not encoded or encoded not in error.msg + error.hint  # never quoted
    # The same rule when the endpoint is used anyway (Provider.config_problems).
    with pytest.raises(WebhookConfigurationError, match=detail):
        get_provider("acme")


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(bytes(24)).decode(),
        "whsec_" + base64.b64encode(bytes(64)).decode(),
        "whsec_" + base64.b64encode(bytes(25)).decode().rstrip("="),  # unpadded, as Svix's
        base64.b64encode(bytes(32)).decode(),  # no prefix: decoded whole
    ],
)
def test_standard_secrets_of_24_bytes_or_more_are_fine(settings, secret):
    assert errors_for(settings, {"ENDPOINTS": {"acme": {"PROVIDER": "standard",
                                                        "SECRETS": [secret]}}}) == []  # fmt: skip


def test_every_standard_secret_the_project_ships_passes():
    shipped = {
        "vendor vectors": vendor_json("standardwebhooks/vectors.json")["sign_vector"]["secret"],
        "sandbox settings": sandbox_settings.WEBHOOKS["ENDPOINTS"]["acme"]["SECRETS"][0],
        "test settings": django_settings.WEBHOOKS["ENDPOINTS"]["acme"]["SECRETS"][0],
        "make_secret (webhooks.testing's bad_signature)": StandardWebhooksProvider.make_secret(),
    }
    for where, secret in shipped.items():
        assert StandardWebhooksProvider.secret_problems("acme", "key", secret) == [], where


@pytest.mark.parametrize("name", ["a/b", "", "with space"])
def test_e007_endpoint_name_unusable_in_a_url(settings, name):
    error = only(
        errors_for(settings, {"ENDPOINTS": {name: {"PROVIDER": "github", "SECRETS": ["a"]}}})
    )
    assert error.id == "webhooks.E007"


def test_several_problems_are_all_reported(settings):
    errors = errors_for(
        settings,
        {
            "ENDPOINTS": {
                "a": {"PROVIDER": "paypal", "SECRETS": ["x"]},
                "b": {"PROVIDER": "github"},
                "c": {**HMAC, "HEADER": None, "ALGORITHM": "md4"},
            }
        },
    )
    assert sorted(e.id for e in errors) == [
        "webhooks.E001",
        "webhooks.E002",
        "webhooks.E004",
        "webhooks.E006",
    ]


def test_no_check_message_quotes_a_secret(settings):
    errors = errors_for(
        settings,
        {"ENDPOINTS": {"p": {**HMAC, "ALGORITHM": "md5", "TOLERANCE": -1}}},
    )
    assert errors
    assert all("s3cr3t-value" not in (e.msg + (e.hint or "")) for e in errors)


def test_same_rules_at_call_time(settings):
    settings.WEBHOOKS = {"ENDPOINTS": {"gh": {"PROVIDER": "github", "SECRETS": ["ok", ""]}}}
    with pytest.raises(WebhookConfigurationError, match=r'\["gh"\]\["SECRETS"\]\[1\]'):
        get_provider("gh")
    settings.WEBHOOKS = {"ENDPOINTS": {"gh": {"PROVIDER": "gitlab", "SECRETS": ["ok"]}}}
    with pytest.raises(WebhookConfigurationError, match=r'\["gh"\]\["PROVIDER"\]'):
        get_provider("gh")
    with pytest.raises(UnknownEndpoint):
        get_provider("other")
    # WebhookConfigurationError is Django's ImproperlyConfigured.
    from django.core.exceptions import ImproperlyConfigured

    assert issubclass(WebhookConfigurationError, ImproperlyConfigured)


# -- W002: what an hmac endpoint relies on is outside what is signed ---------------------------


def warnings_for(settings, **options):
    settings.WEBHOOKS = {"ENDPOINTS": {"partner": {**HMAC, **options}}}
    return check_webhook_signed_content()


def test_w002_event_id_from_a_header_with_only_the_body_signed(settings):
    warning = only(warnings_for(settings, EVENT_ID="header:X-Event-Id"))
    assert (warning.id, warning.level) == ("webhooks.W002", WARNING)
    assert warning.msg.startswith('WEBHOOKS["ENDPOINTS"]["partner"]["EVENT_ID"]: ')
    assert "not signed" in warning.msg
    assert "under a new id" in warning.msg and "RETENTION_DAYS" in warning.msg
    assert '"json:' in warning.hint and '"{timestamp}.{body}"' in warning.hint


def test_w002_timestamp_header_outside_the_signed_payload(settings):
    warning = only(warnings_for(settings, TIMESTAMP_HEADER="X-Timestamp", SIGNED_PAYLOAD="{body}"))
    assert warning.id == "webhooks.W002"
    assert warning.msg.startswith('WEBHOOKS["ENDPOINTS"]["partner"]["SIGNED_PAYLOAD"]: ')
    assert "TOLERANCE" in warning.msg and "fresh timestamp" in warning.msg
    assert '"{timestamp}.{body}"' in warning.hint


def test_w002_both_at_once(settings):
    warnings = warnings_for(
        settings,
        EVENT_ID="header:X-Event-Id",
        TIMESTAMP_HEADER="X-Timestamp",
        SIGNED_PAYLOAD="{body}",
    )
    assert [w.id for w in warnings] == ["webhooks.W002", "webhooks.W002"]
    assert [w.msg.split(": ", 1)[0].rsplit("[", 1)[1] for w in warnings] == [
        '"EVENT_ID"]',
        '"SIGNED_PAYLOAD"]',
    ]


@pytest.mark.parametrize(
    "options",
    [
        {},  # id in the signed body, no timestamp
        {"TIMESTAMP_HEADER": "X-Timestamp"},  # the timestamp is signed by default
        {"TIMESTAMP_HEADER": "X-Timestamp", "SIGNED_PAYLOAD": "{timestamp}.{body}"},
        # An id from a header with a signed timestamp: a resend under a new id within
        # TOLERANCE is a replay of the same signed content; later, a stale timestamp.
        {"EVENT_ID": "header:X-Event-Id", "TIMESTAMP_HEADER": "X-Timestamp"},
        {"EVENT_TYPE": "header:X-Event-Type"},  # a type alone is no way to a second event
    ],
)
def test_w002_not_for_safe_configurations(settings, options):
    assert warnings_for(settings, **options) == []


def test_w002_not_for_the_built_in_schemes_nor_a_broken_endpoint(settings):
    assert check_webhook_signed_content() == []  # the test settings: stripe, github, acme...
    # A misconfigured endpoint gets its E0xx error, not a warning about a setting it lacks.
    assert warnings_for(settings, EVENT_ID="header:X-Event-Id", HEADER=None) == []


def test_w002_with_manage_py_check(settings, capsys):
    settings.WEBHOOKS = {"ENDPOINTS": {"partner": {**HMAC, "EVENT_ID": "header:X-Id"}}}
    call_command("check")
    assert "webhooks.W002" in capsys.readouterr().err


def test_e010_an_unknown_top_level_key_with_the_closest_known_one(settings):
    """A misspelt setting would be ignored without a word: MAX_ATTEMPT would leave 8 attempts."""
    errors = errors_for(settings, {**django_settings.WEBHOOKS, "MAX_ATTEMPT": 3, "ENDPOINT": {}})
    assert sorted((e.id, e.msg) for e in errors) == [
        ("webhooks.E010", "WEBHOOKS: unknown key 'ENDPOINT': it is ignored."),
        ("webhooks.E010", "WEBHOOKS: unknown key 'MAX_ATTEMPT': it is ignored."),
    ]
    hints = {e.msg.split("'")[1]: e.hint for e in errors}
    assert hints["MAX_ATTEMPT"].startswith("Did you mean 'MAX_ATTEMPTS'? Known keys: ")
    assert hints["ENDPOINT"].startswith("Did you mean 'ENDPOINTS'? ")
    assert "TASK_BACKEND" in hints["ENDPOINT"]  # every known key listed

    only_unknown = errors_for(settings, {"ZZZ": 1})
    assert only(only_unknown).hint.startswith("Known keys: ")  # nothing close: no guess
    with pytest.raises(SystemCheckError, match=r"webhooks\.E010"):
        call_command("check")
