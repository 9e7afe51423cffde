"""Where a ServiceClient's requests, and its credentials, may go: only the base URL's origin and
path, unless the service lists other origins (which then get no credentials). Two real
FakeVendors on 127.0.0.1: the service's own, and "another origin" (another port)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from integrations import ServiceClient
from integrations.exceptions import ClientRequestError, DisallowedURLError
from integrations.models import CircuitBreaker
from integrations.testing import FakeVendor, Reply

pytestmark = pytest.mark.django_db

TOKEN = "Bearer sk_live_destinations_SECRET"


class Files(ServiceClient):
    service = "files"

    def default_headers(self) -> dict[str, str]:
        return {"Authorization": TOKEN, "X-Account": "acct_1"}


@pytest.fixture
def other() -> Iterator[FakeVendor]:
    with FakeVendor() as fake:
        yield fake


@pytest.fixture
def files(vendor, settings, backoff) -> Files:
    settings.INTEGRATIONS = {
        "SERVICES": {"files": {"BASE_URL": f"{vendor.url}/v1", "RETRY": {"MAX_ATTEMPTS": 3}}}
    }
    return Files()


def nothing_sent(*vendors: FakeVendor) -> bool:
    return all(v.count() == 0 for v in vendors)


# --- the service's own origin -------------------------------------------------------------------


def test_relative_paths_and_same_origin_absolute_urls_carry_credentials(files, vendor):
    vendor.route("GET", "/v1/items", Reply.json({"next": f"{vendor.url}/v1/items/page/2"}))
    vendor.route("GET", "/v1/items/page/2", Reply.json({"next": None}))

    first = files.get_json("/items", operation="list")
    files.get_json(first["next"], operation="list")  # a pagination link, absolute
    files.get_json(f"HTTP://{vendor.host}:{vendor.port}/v1/items/page/2", operation="list")

    assert vendor.headers_seen("Authorization") == [TOKEN, TOKEN, TOKEN]


@pytest.mark.parametrize(
    "path",
    [
        "items",
        "/items",
        "./items",
        "x/../items",  # resolves under /v1
        "{own}/v1/items",
        "{own}/v1/x/%2e%2e/items",
        "items/a%2Fb",  # an encoded slash inside an id
        "items.json",
    ],
)
def test_paths_that_stay_under_the_base_path_are_sent(files, vendor, path):
    with contextlib.suppress(ClientRequestError):  # the fake answers 404: no route
        files.request("GET", path.format(own=vendor.url), operation="get")

    [request] = vendor.requests
    assert request.path.startswith("/v1/")
    assert request.header("Authorization") == TOKEN


# --- another origin -----------------------------------------------------------------------------


def test_another_origin_is_refused_before_anything_is_sent(files, vendor, other):
    other.route("GET", "/v1/items", Reply.json({}))

    with pytest.raises(DisallowedURLError) as caught:
        files.get_json(f"{other.url}/v1/items?token=abc", operation="list")

    error = caught.value
    assert (error.service, error.operation, error.attempts) == ("files", "list", 0)
    assert not error.retryable and not error.breaker_failure
    assert f"127.0.0.1:{other.port} is not the service's origin" in str(error)
    assert "ALLOWED_ORIGINS" in str(error)
    assert "token=abc" not in str(error)
    assert nothing_sent(vendor, other)
    # Not a breaker failure, and not even a breaker check: nothing was attempted.
    assert not CircuitBreaker.objects.filter(name="files").exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://{other}/v1/items",  # another port
        "//{other}/v1/items",  # a network-path reference: the base's scheme, another host
        "https://{own}/v1/items",  # the service's host and port, but https instead of http
        "http://user:pass@{own}/v1/items",  # credentials in the URL
        "http://{own}\\@{other}/v1/items",  # userinfo trick: httpx would go to {other}
    ],
)
def test_other_origins_and_urls_with_credentials_are_refused(files, vendor, other, url):
    url = url.format(own=f"127.0.0.1:{vendor.port}", other=f"127.0.0.1:{other.port}")

    with pytest.raises(DisallowedURLError):
        files.request("GET", url, operation="get")

    assert nothing_sent(vendor, other)


def test_plain_http_to_the_https_service_host_is_refused(vendor, settings):
    settings.INTEGRATIONS = {"SERVICES": {"files": {"BASE_URL": "https://files.example.com"}}}

    with pytest.raises(DisallowedURLError, match=r"http://files\.example\.com is not"):
        Files().get_json("http://files.example.com/v1/items", operation="list")


@pytest.mark.parametrize(
    "path",
    [
        "../admin",
        "/../admin",
        "%2e%2e/admin",
        "%2E%2E/admin",
        ".%2e/admin",
        "%252e%252e/admin",  # encoded twice
        "%25252e%25252e/admin",  # three times
        "..%2fadmin",
        "..%5cadmin",
        "..\\admin",
        "x//%2e%2e//%2e%2e/admin",  # a server that merges slashes reads x/../../admin
        "{own}/admin",  # absolute, the service's origin, outside its path
        "{own}/v2/items",  # beside the base path, not under it
        "{own}/v1x/items",
        "{own}/v1/%2e%2e/admin",
    ],
)
def test_paths_leaving_the_base_path_are_refused(files, vendor, path):
    path = path.format(own=vendor.url)
    vendor.route("GET", "/admin", Reply.json({"secret": True}))

    with pytest.raises(DisallowedURLError, match=r"leaves the base URL's path \(/v1\)"):
        files.request("GET", path, operation="get")

    assert nothing_sent(vendor)


# --- other origins the service allows -----------------------------------------------------------


def test_an_allowed_origin_gets_the_request_without_credentials(files, vendor, other, settings):
    settings.INTEGRATIONS["SERVICES"]["files"]["ALLOWED_ORIGINS"] = [other.url]
    other.route("GET", "/downloads/report.csv", Reply.text("a,b"))
    other.route("POST", "/uploads", Reply.json({"ok": True}))

    response = files.request(
        "GET", f"{other.url}/downloads/report.csv", operation="download", auth=("user", "pw")
    )
    files.post_json(f"{other.url}/uploads", operation="upload", json={}, headers={"X-Trace": "t-1"})

    assert response.text == "a,b"
    assert nothing_sent(vendor)
    download, upload = other.requests
    for request in (download, upload):
        assert request.header("Authorization") is None  # neither default_headers() nor auth=
        assert request.header("X-Account") is None
    assert upload.header("X-Trace") == "t-1"  # the caller's own headers go as given
    assert upload.header("Idempotency-Key")  # so does the call's idempotency key


def test_allowed_origins_as_a_class_attribute_override_the_setting(vendor, other, settings):
    settings.INTEGRATIONS = {
        "SERVICES": {"files": {"BASE_URL": vendor.url, "ALLOWED_ORIGINS": [other.url]}}
    }

    class Strict(Files):
        allowed_origins = ()

    class Cdn(Files):
        allowed_origins = (f"http://127.0.0.1:{other.port}/",)

    other.route("GET", "/x", Reply.json({}))
    with pytest.raises(DisallowedURLError):
        Strict().get_json(f"{other.url}/x", operation="x")
    Cdn().get_json(f"{other.url}/x", operation="x")

    assert other.headers_seen("Authorization") == [None]
