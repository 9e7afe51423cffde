"""``send_test_webhook`` against a real running server (pytest-django's ``live_server``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.servers import ROOT, GunicornServer, free_port
from webhooks.models import WebhookEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def run(*args: str) -> str:
    out = StringIO()
    call_command("send_test_webhook", *args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("endpoint", "event_type", "stored_type"),
    [
        ("stripe", None, "payment_intent.succeeded"),
        ("stripe", "invoice.paid", "invoice.paid"),
        ("stripe", "charge.succeeded", "charge.succeeded"),
        ("github", None, "ping"),
        ("github", "push", "push"),
        ("github", "pull_request.opened", "pull_request.opened"),
        ("github", "issues", "issues.opened"),
        ("acme", None, "contact.created"),
        ("acme", "invoice.created", "invoice.created"),
        ("partner", None, "test.event"),
        ("partner", "order.created", "order.created"),
    ],
)
def test_sends_a_signed_sample_that_is_accepted(live_server, endpoint, event_type, stored_type):
    args = [endpoint, "--url", live_server.url]
    if event_type:
        args += ["--type", event_type]
    output = run(*args)
    event = WebhookEvent.objects.get()
    assert (event.endpoint, event.event_type) == (endpoint, stored_type)
    assert f"POST {live_server.url}/webhooks/{endpoint}/" in output
    assert f'-> 200 {{"status": "accepted", "event_id": "{event.event_id}"}}' in output
    assert "OK" in output
    # A realistic sample: the vendor's example data, not a stub.
    if endpoint == "stripe":
        assert event.payload["object"] == "event"
        assert event.payload["data"]["object"]["id"].startswith(("pi_", "ch_", "in_"))
    if endpoint == "github":
        assert event.payload["repository"]["full_name"] == "Codertocat/Hello-World"


def test_duplicate_sends_the_same_delivery_twice(live_server):
    output = run("github", "--url", live_server.url, "--type", "push", "--duplicate")
    assert WebhookEvent.objects.count() == 1
    assert output.count("POST ") == 2
    assert '"status": "accepted"' in output and '"status": "duplicate"' in output


def test_bad_signature_expects_400(live_server):
    output = run("stripe", "--url", live_server.url, "--bad-signature")
    assert '-> 400 {"error": "invalid_signature"}' in output
    assert not WebhookEvent.objects.exists()


def test_unexpected_answer_exits_1(live_server):
    # The endpoint is not mounted under this base: the server answers 404.
    with pytest.raises(CommandError, match="expected a 2xx answer, got 404") as excinfo:
        run("stripe", "--url", f"{live_server.url}/elsewhere")
    assert excinfo.value.returncode == 1


def test_bad_signature_that_is_not_refused_exits_1(live_server):
    with pytest.raises(CommandError, match="expected 400 invalid_signature") as excinfo:
        run("stripe", "--url", f"{live_server.url}/elsewhere", "--bad-signature")
    assert excinfo.value.returncode == 1


def test_second_delivery_not_answered_duplicate_exits_1():
    # A server that wrongly accepts every delivery as new (a real HTTP server on 127.0.0.1).
    class AlwaysAccepted(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"status": "accepted", "event_id": "x"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysAccepted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(CommandError, match="second delivery") as excinfo:
            run("github", "--url", url, "--duplicate")
        assert excinfo.value.returncode == 1
        run("github", "--url", url)  # a single delivery answered 2xx is fine
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_endpoint_exits_2(live_server):
    with pytest.raises(CommandError, match="unknown endpoint 'nope'") as excinfo:
        run("nope", "--url", live_server.url)
    assert excinfo.value.returncode == 2


def test_unknown_endpoint_lists_the_known_ones(live_server, settings):
    with pytest.raises(CommandError) as excinfo:
        run("nosuch", "--url", live_server.url)
    assert str(excinfo.value) == (
        "unknown endpoint 'nosuch': not in WEBHOOKS['ENDPOINTS'] "
        "(known endpoints: acme, github, partner, stripe)"
    )
    assert excinfo.value.returncode == 2

    settings.WEBHOOKS = {"ENDPOINTS": {}}
    with pytest.raises(CommandError, match=r"\(no endpoint is configured\)"):
        run("nosuch", "--url", live_server.url)


def test_misconfigured_endpoint_exits_2(live_server, settings):
    settings.WEBHOOKS = {"ENDPOINTS": {"bad": {"PROVIDER": "github", "SECRETS": [""]}}}
    with pytest.raises(CommandError, match=r'\["bad"\]\["SECRETS"\]\[0\]') as excinfo:
        run("bad", "--url", live_server.url)
    assert excinfo.value.returncode == 2


def test_unreachable_server_exits_3():
    with pytest.raises(CommandError, match="could not reach") as excinfo:
        run("stripe", "--url", f"http://127.0.0.1:{free_port()}")
    assert excinfo.value.returncode == 3


@pytest.mark.multiprocess
def test_exit_codes_of_the_real_command(live_server):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "send_test_webhook", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = manage("stripe", "--url", live_server.url, "--duplicate")
    assert ok.returncode == 0, ok.stderr
    assert '"status": "duplicate"' in ok.stdout
    assert manage("stripe", "--url", live_server.url, "--bad-signature").returncode == 0
    assert manage("stripe", "--url", f"{live_server.url}/elsewhere").returncode == 1
    assert manage("nope", "--url", live_server.url).returncode == 2
    assert manage("stripe", "--url", f"http://127.0.0.1:{free_port()}").returncode == 3
    assert WebhookEvent.objects.count() == 1


def test_help_documents_the_defaults():
    from webhooks.management.commands.send_test_webhook import Command

    text = Command().create_parser("manage.py", "send_test_webhook").format_help()
    for option in ("--url", "--type", "--id", "--data", "--duplicate", "--bad-signature"):
        assert option in text
    assert "--timeout" in text
    assert "http://127.0.0.1:8000" in text
    # Where --data's event id and type come from, for providers that carry them in headers.
    flat = " ".join(text.split())
    for words in ("X-GitHub-Delivery and X-GitHub-Event", "webhook-id", "MAX_BODY_BYTES"):
        assert words in flat


# -- --data: one's own event ---------------------------------------------------------------------


def test_data_inline_json_is_signed_and_sent_as_given(live_server):
    body = '{"id": "evt_mine_1", "object": "event", "type": "invoice.paid",  "data": {}}'
    output = run("stripe", "--url", live_server.url, "--data", body, "--duplicate")
    event = WebhookEvent.objects.get()
    assert (event.event_id, event.event_type) == ("evt_mine_1", "invoice.paid")
    assert bytes(event.body) == body.encode()  # the exact bytes, spacing included
    assert "POST " in output and "(invoice.paid, id evt_mine_1)" in output
    assert '"status": "duplicate"' in output


def test_data_file_with_id_and_type_from_options_where_headers_carry_them(live_server, tmp_path):
    payload = tmp_path / "push.json"
    body = b'{\n  "ref": "refs/heads/main",\n  "commits": [],\n  "caf\xc3\xa9": true\n}\n'
    payload.write_bytes(body)
    run("github", "--url", live_server.url, "--data", str(payload), "--id", "d-1", "--type", "push")
    event = WebhookEvent.objects.get()
    assert (event.event_id, event.event_type) == ("d-1", "push")
    assert bytes(event.body) == body
    assert event.payload["caf\u00e9"] is True

    # Without them: a fresh delivery id and GitHub's default event, ping (as --help says).
    other = tmp_path / "other.json"
    other.write_text('{"zen": "mine"}')
    run("github", "--url", live_server.url, "--data", str(other))
    event = WebhookEvent.objects.exclude(event_id="d-1").get()
    assert event.event_type == "ping"
    assert uuid.UUID(event.event_id)

    # Standard Webhooks: the id from webhook-id (--id), the type from the payload.
    run("acme", "--url", live_server.url, "--id", "msg_mine", "--data", '{"type": "a.b", "x": 1}')
    event = WebhookEvent.objects.get(endpoint="acme")
    assert (event.event_id, event.event_type) == ("msg_mine", "a.b")


def test_id_of_a_sample(live_server):
    run("stripe", "--url", live_server.url, "--id", "evt_chosen")
    assert WebhookEvent.objects.get().event_id == "evt_chosen"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"id": "evt_1", "type": ', r"^--data: body is not JSON: Expecting value: line 1"),
        ("[1, 2]", r"^--data: body is not a JSON object$"),
        ('{"id": "evt_1", "type": "a", "n": NaN}', r"^--data: body holds NaN"),
        ("no/such/file.json", r"^--data 'no/such/file.json': cannot read the file \(No such file"),
        (".", r"^--data '.': cannot read the file \(Is a directory\)$"),
    ],
)
def test_bad_data_is_a_usage_error_before_anything_is_sent(data, message):
    # Nothing listens at --url: had the command sent anything, it would exit 3 instead.
    with pytest.raises(CommandError, match=message) as excinfo:
        run("stripe", "--url", f"http://127.0.0.1:{free_port()}", "--data", data)
    assert excinfo.value.returncode == 2


def test_a_file_that_is_not_json_is_named(tmp_path):
    payload = tmp_path / "event.json"
    payload.write_bytes(b"\x80 not json")
    with pytest.raises(CommandError, match=r"event.json': body is not JSON: 'utf-8' codec"):
        run("stripe", "--url", f"http://127.0.0.1:{free_port()}", "--data", str(payload))


@pytest.mark.parametrize("value", ["has space", "new\nline", "x" * 256, "", "caf\u00e9"])
@pytest.mark.parametrize("option", ["--id", "--type"])
def test_ids_and_types_that_cannot_be_sent_in_a_header_are_refused(option, value):
    with pytest.raises(CommandError, match=f"argument {option}: .* is not usable"):
        run("github", "--url", f"http://127.0.0.1:{free_port()}", option, value)


def json_of_size(size: int) -> str:
    text = '{"a": "' + "x" * (size - 9) + '"}'
    assert len(text.encode()) == size
    return text


def test_data_over_the_endpoints_max_body_bytes_is_refused_before_sending(settings, tmp_path):
    settings.WEBHOOKS = {
        **settings.WEBHOOKS,
        "ENDPOINTS": {
            **settings.WEBHOOKS["ENDPOINTS"],
            "github": {"PROVIDER": "github", "SECRETS": ["s"], "MAX_BODY_BYTES": 1024},
        },
    }
    url = f"http://127.0.0.1:{free_port()}"
    over = json_of_size(1025)
    with pytest.raises(CommandError, match=r"larger than the endpoint's MAX_BODY_BYTES \(1,024"):
        run("github", "--url", url, "--data", over)
    # A file is read no further than the limit: an endless one is refused, not read into memory.
    with pytest.raises(CommandError, match="larger than the endpoint's MAX_BODY_BYTES") as excinfo:
        run("github", "--url", url, "--data", "/dev/zero")
    assert excinfo.value.returncode == 2


@pytest.mark.multiprocess
def test_data_at_the_limit_is_accepted_by_a_real_server_with_that_limit(settings):
    """The bound is the server's own: gunicorn running the sandbox with a 2 KiB limit for
    ``github`` accepts a body of exactly 2048 bytes, which the command sends."""
    limit = 2048
    github = {**settings.WEBHOOKS["ENDPOINTS"]["github"], "MAX_BODY_BYTES": limit}
    settings.WEBHOOKS = {
        **settings.WEBHOOKS,
        "ENDPOINTS": {**settings.WEBHOOKS["ENDPOINTS"], "github": github},
    }
    at_limit = json_of_size(limit)
    with GunicornServer(webhooks={"ENDPOINTS": {"github": {"MAX_BODY_BYTES": limit}}}) as server:
        output = run("github", "--url", server.url, "--data", at_limit, "--type", "push")
        assert '-> 200 {"status": "accepted"' in output
        with pytest.raises(CommandError, match="MAX_BODY_BYTES"):
            run("github", "--url", server.url, "--data", json_of_size(limit + 1))
    assert bytes(WebhookEvent.objects.get().body) == at_limit.encode()


@pytest.mark.multiprocess
def test_against_the_sandbox_on_its_embedded_defaults(tmp_path):
    """The sandbox as ``make run`` starts it (SQLite, kombu's filesystem broker), driven by the
    command as a new user would: covers the SQLite form of the insert as well."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sandbox_project.settings",
        "SANDBOX_STATE_DIR": str(tmp_path),
    }
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)

    def manage(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )

    assert manage("migrate", "-v0").returncode == 0
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if manage("send_test_webhook", "stripe", "--url", url).returncode == 0:
                break
            time.sleep(0.2)
        for endpoint in ("stripe", "github", "acme"):
            result = manage("send_test_webhook", endpoint, "--url", url, "--duplicate")
            assert result.returncode == 0, result.stdout + result.stderr
            assert '"status": "duplicate"' in result.stdout
        assert manage("send_test_webhook", "acme", "--url", url, "--bad-signature").returncode == 0
    finally:
        server.terminate()
        server.wait(10)
    assert (tmp_path / "sandbox.sqlite3").exists()
