"""FakeStripe itself, spoken to with plain httpx: it must behave like Stripe for the tests that
rely on it to mean anything."""

from __future__ import annotations

import httpx
import pytest

from integrations.testing import Reply
from integrations.testing.stripe import FAILURES, FakeStripe, form_params

KEY = "sk_test_fakeStripeKey0123456789"


@pytest.fixture
def fake():
    with FakeStripe(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def http(fake):
    with httpx.Client(
        base_url=fake.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    ) as client:
        yield client


def test_customers_are_created_and_retrieved_with_stripes_shape(fake, http):
    created = http.post("/v1/customers", data={"email": "ada@example.com", "name": "Ada"})
    fetched = http.get(f"/v1/customers/{created.json()['id']}")

    assert created.status_code == 200
    assert created.headers["Request-Id"].startswith("req_")
    customer = created.json()
    assert customer["object"] == "customer"
    assert customer["id"].startswith("cus_")
    assert (customer["email"], customer["name"]) == ("ada@example.com", "Ada")
    assert {"balance", "created", "livemode", "metadata", "invoice_settings"} <= set(customer)
    assert fetched.json() == customer


def test_payment_intents_and_refunds(fake, http):
    intent = http.post("/v1/payment_intents", data={"amount": "1500", "currency": "EUR"}).json()
    unpaid = http.post("/v1/refunds", data={"payment_intent": intent["id"]})
    fake.confirm_payment_intent(intent["id"])
    refund = http.post("/v1/refunds", data={"payment_intent": intent["id"], "amount": "400"})
    too_much = http.post("/v1/refunds", data={"payment_intent": intent["id"], "amount": "2000"})

    assert intent["object"] == "payment_intent"
    assert (intent["amount"], intent["currency"], intent["status"]) == (
        1500,
        "eur",
        "requires_payment_method",
    )
    assert intent["client_secret"].startswith(intent["id"] + "_secret_")
    assert unpaid.status_code == 400
    assert refund.json()["object"] == "refund"
    assert (refund.json()["amount"], refund.json()["payment_intent"]) == (400, intent["id"])
    assert too_much.status_code == 400
    assert too_much.json()["error"]["code"] == "amount_too_large"


@pytest.mark.parametrize(
    ("path", "data", "code", "param"),
    [
        ("/v1/payment_intents", {"currency": "usd"}, "parameter_missing", "amount"),
        ("/v1/payment_intents", {"amount": "10"}, "parameter_missing", "currency"),
        (
            "/v1/payment_intents",
            {"amount": "ten", "currency": "usd"},
            "parameter_invalid_integer",
            "amount",
        ),
        (
            "/v1/payment_intents",
            {"amount": "10", "currency": "usd", "customer": "cus_x"},
            "resource_missing",
            "customer",
        ),
        ("/v1/refunds", {"payment_intent": "pi_nope"}, "resource_missing", "payment_intent"),
        ("/v1/refunds", {}, "parameter_missing", None),
    ],
)
def test_validation_errors_are_stripe_shaped(http, path, data, code, param):
    answer = http.post(path, data=data)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error.get("param") == param


def test_unknown_objects_and_urls_are_404(http):
    missing = http.get("/v1/customers/cus_nope")
    unknown = http.get("/v1/charges")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"
    assert unknown.status_code == 404
    assert "Unrecognized request URL" in unknown.json()["error"]["message"]


def test_idempotency_replays_the_first_answer(fake, http):
    headers = {"Idempotency-Key": "k-1"}
    first = http.post("/v1/customers", data={"email": "a@example.com"}, headers=headers)
    replay = http.post("/v1/customers", data={"email": "a@example.com"}, headers=headers)
    other = http.post("/v1/customers", data={"email": "b@example.com"}, headers=headers)
    no_key = [http.post("/v1/customers", data={"email": "c@example.com"}) for _ in range(2)]

    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    assert no_key[0].json()["id"] != no_key[1].json()["id"]
    assert len(fake.customers) == 3
    assert fake.idempotency_keys() == ["k-1", "k-1", "k-1", None, None]


def test_failed_requests_are_not_saved_for_replay(fake, http):
    headers = {"Idempotency-Key": "k-2"}
    fake.fail("server_error")
    failed = http.post("/v1/customers", data={"email": "a@example.com"}, headers=headers)
    retried = http.post("/v1/customers", data={"email": "a@example.com"}, headers=headers)

    assert failed.status_code == 500
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers


def test_the_api_key_is_checked_like_stripe(fake):
    with httpx.Client(base_url=fake.base_url) as anonymous:
        missing = anonymous.post("/v1/customers")
        wrong = anonymous.post(
            "/v1/customers", headers={"Authorization": "Bearer sk_test_wrongwrongwrong1234"}
        )

    assert missing.status_code == 401
    assert wrong.status_code == 401
    message = wrong.json()["error"]["message"]
    assert message.startswith("Invalid API Key provided: sk_test_")
    assert message.endswith("1234")
    assert "wrongwrongwrong" not in message  # masked, as Stripe does
    assert fake.customers == {}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_scripted_error_bodies(fake, http, failure):
    status, body = FAILURES[failure]
    fake.fail(failure)

    answer = http.post("/v1/customers", data={"email": "a@example.com"})
    after = http.post("/v1/customers", data={"email": "a@example.com"})

    assert answer.status_code == status
    assert answer.json() == body
    assert after.status_code == 200  # times=1


def test_retry_after_header(fake, http):
    fake.fail("rate_limited", retry_after=3)
    fake.fail("rate_limited", retry_after=None)

    with_header = http.post("/v1/customers")
    without = http.post("/v1/customers")

    assert with_header.headers["Retry-After"] == "3"
    assert "Retry-After" not in without.headers


def test_scripts_match_path_and_method_and_last_until_healed(fake, http):
    fake.fail("server_error", times=None, path="/v1/customers", method="GET")

    post = http.post("/v1/customers")
    gets = [http.get("/v1/customers/cus_x").status_code for _ in range(3)]
    fake.heal()
    healed = http.get("/v1/customers/cus_x")

    assert post.status_code == 200
    assert gets == [500, 500, 500]
    assert healed.status_code == 404


def test_transport_failures(fake):
    fake.fail("hang")
    fake.fail("drop")
    fake.fail("garbage")
    fake.fail("bad_gateway")
    with httpx.Client(base_url=fake.base_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/customers")
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/customers")
        garbage = client.post("/v1/customers")
        bad_gateway = client.post("/v1/customers")

    assert garbage.status_code == 200
    assert garbage.headers["Content-Type"] == "text/html"
    with pytest.raises(ValueError):
        garbage.json()
    assert bad_gateway.status_code == 502
    assert fake.count() == 4


def test_slow_answers_after_the_delay(fake, http):
    fake.fail("slow", delay=0.3)

    answer = http.post("/v1/customers", data={"email": "a@example.com"})

    assert answer.status_code == 200
    assert answer.elapsed.total_seconds() >= 0.3


def test_a_scripted_route_wins_over_the_stripe_behaviour(fake, http):
    fake.route("GET", "/v1/customers/cus_odd", Reply.json({"id": "cus_odd"}))

    assert http.get("/v1/customers/cus_odd").json() == {"id": "cus_odd"}


def test_requests_are_recorded_with_their_form(fake, http):
    http.post("/v1/customers", data={"email": "a@example.com", "metadata[order]": "7"})

    [request] = fake.requests
    assert form_params(request) == {"email": "a@example.com", "metadata[order]": "7"}


def test_reset_and_stop(fake, http):
    fake.add_customer(email="a@example.com")
    fake.fail("server_error", times=None)
    http.get("/v1/customers/cus_x")
    fake.reset()

    assert (fake.count(), fake.customers) == (0, {})
    assert http.post("/v1/customers").status_code == 200
    fake.stop()
    with pytest.raises(httpx.ConnectError):
        http.post("/v1/customers")


def test_unknown_failures_are_refused(fake):
    with pytest.raises(ValueError, match="unknown failure"):
        fake.fail("meteor_strike")


# --- GET /v1/events -----------------------------------------------------------------------------


def test_events_are_listed_newest_first_with_stripes_shape(fake, http):
    old = fake.add_event("payment_intent.succeeded", created=1_000)
    new = fake.add_event("customer.created", created=2_000)

    answer = http.get("/v1/events")

    assert answer.status_code == 200
    body = answer.json()
    assert (body["object"], body["url"], body["has_more"]) == ("list", "/v1/events", False)
    assert [e["id"] for e in body["data"]] == [new["id"], old["id"]]
    event = body["data"][1]
    assert event["object"] == "event" and event["id"].startswith("evt_")
    assert event["data"]["object"]["object"] == "payment_intent"
    assert event["pending_webhooks"] == 1
    assert body["data"][0]["data"]["object"]["object"] == "customer"


def test_events_filters(fake, http):
    delivered = fake.add_event("invoice.paid", created=1_000, delivered=True)
    failed = fake.add_event("invoice.payment_failed", created=2_000)
    customer = fake.add_event("customer.updated", created=3_000)

    def ids(**params):
        answer = http.get("/v1/events", params=params)
        assert answer.status_code == 200, answer.text
        return [e["id"] for e in answer.json()["data"]]

    assert ids(delivery_success="false") == [customer["id"], failed["id"]]
    assert ids(delivery_success="true") == [delivered["id"]]
    assert ids(**{"created[gte]": 2_000}) == [customer["id"], failed["id"]]
    assert ids(**{"created[gt]": 2_000}) == [customer["id"]]
    assert ids(**{"created[lte]": 2_000}) == [failed["id"], delivered["id"]]
    assert ids(**{"created[lt]": 2_000}) == [delivered["id"]]
    assert ids(type="invoice.*") == [failed["id"], delivered["id"]]
    assert ids(**{"types[]": ["invoice.paid", "customer.updated"]}) == [
        customer["id"],
        delivered["id"],
    ]
    assert ids(**{"types[0]": "invoice.paid"}) == [delivered["id"]]  # stripe-python's encoding
    fake.mark_delivered(failed["id"])
    assert ids(delivery_success="false") == [customer["id"]]


def test_events_pages(fake, http):
    ids = [fake.add_event(created=n)["id"] for n in range(5)][::-1]  # newest first

    first = http.get("/v1/events", params={"limit": 2}).json()
    second = http.get("/v1/events", params={"limit": 2, "starting_after": ids[1]}).json()
    last = http.get("/v1/events", params={"limit": 2, "starting_after": ids[3]}).json()
    before = http.get("/v1/events", params={"limit": 2, "ending_before": ids[4]}).json()

    assert ([e["id"] for e in first["data"]], first["has_more"]) == (ids[:2], True)
    assert ([e["id"] for e in second["data"]], second["has_more"]) == (ids[2:4], True)
    assert ([e["id"] for e in last["data"]], last["has_more"]) == (ids[4:], False)
    assert [e["id"] for e in before["data"]] == ids[2:4]
    assert len(http.get("/v1/events").json()["data"]) == 5  # Stripe's default limit is 10


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"delivery_success": "maybe"}, "delivery_success"),
        ({"created[gte]": "soon"}, "created[gte]"),
        ({"starting_after": "evt_missing"}, "starting_after"),
        ({"type": "a", "types[]": "b"}, "type"),
        ({"types[]": [f"t{n}" for n in range(21)]}, "types"),
    ],
)
def test_events_bad_parameters_are_stripe_shaped(http, params, param):
    answer = http.get("/v1/events", params=params)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_events_need_the_key_and_obey_scripts(fake, http):
    assert httpx.get(f"{fake.base_url}/v1/events").status_code == 401
    fake.fail("server_error", path="/v1/events")
    assert http.get("/v1/events").status_code == 500
    assert http.get("/v1/events").status_code == 200
    fake.reset()
    assert fake.events == {} and fake.delivered == {}
