"""``send_test_webhook`` against a real running server (pytest-django's ``live_server``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.servers import ROOT, free_port
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
    for option in ("--url", "--type", "--duplicate", "--bad-signature", "--timeout"):
        assert option in text
    assert "http://127.0.0.1:8000" in text


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
