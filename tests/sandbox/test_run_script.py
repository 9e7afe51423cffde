"""``make run`` (``sandbox_project/run.sh``) as a newcomer meets it: a taken port stops it before
anything starts, a web server or worker dying at start stops the other with no banner, the
banner lists every URL the sandbox serves, and Ctrl-C stops everything."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.sandbox.sandbox_run import BANNER, SandboxRun

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_a_taken_port_stops_it_before_migrating_or_starting_anything(tmp_path):
    state_dir = tmp_path / "state"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = SandboxRun(state_dir, port=port).start()
        try:
            started = time.monotonic()
            status = run.wait(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            run.kill()
    output = run.log()
    assert status != 0, output
    assert elapsed < 10, output
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert f"SANDBOX_PORT={port + 1} make run" in output
    assert "SANDBOX_HOST" in output
    assert BANNER not in output
    assert not run.processes(settle=0), "a process was left behind"
    assert not state_dir.exists(), "it migrated (or set up its state) before checking the port"


def test_an_ipv6_address_is_taken_in_runservers_form_and_checked_the_same(tmp_path):
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = SandboxRun(tmp_path / "state", port=port, env={"SANDBOX_HOST": "::1"}).start()
        try:
            assert run.wait(timeout=30) != 0
        finally:
            run.kill()
    assert f"port {port} on [::1] is already in use" in run.log()


def test_the_sandbox_answers_on_the_addresses_it_listens_on(client):
    """``DJANGO_ALLOWED_HOSTS``' default names every loopback form ``SANDBOX_HOST`` takes."""
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.get("/api/schema/", HTTP_HOST=host).status_code == 200, host


def test_a_port_that_is_not_a_number_is_refused(tmp_path):
    run = SandboxRun(tmp_path / "state", env={"SANDBOX_PORT": "80; rm -rf /"}).start()
    try:
        assert run.wait(timeout=30) != 0
    finally:
        run.kill()
    assert "SANDBOX_PORT='80; rm -rf /' is not a port number" in run.log()
    assert not (tmp_path / "state").exists()


def test_a_worker_dying_at_start_stops_the_web_server(tmp_path):
    # A broker URL with no transport behind it: the worker exits as it starts; the web server,
    # which publishes only when an event arrives, starts and must be stopped again.
    run = SandboxRun(tmp_path / "state", env={"CELERY_BROKER_URL": "nosuch://"}).start()
    try:
        status = run.wait(timeout=120)
    finally:
        run.kill()
    output = run.log()
    assert status != 0, output
    assert "the Celery worker exited while starting" in output
    assert BANNER not in output
    assert not run.processes(settle=0), "a process was left behind"


def test_a_web_server_dying_at_start_stops_the_worker(tmp_path):
    # The port is free when checked and taken just after, while the script migrates (another
    # program got there first): runserver cannot bind and exits.
    state_dir = tmp_path / "state"
    run = SandboxRun(state_dir).start()
    with socket.socket() as taker:
        try:
            deadline = time.monotonic() + 60
            while not (state_dir / "sandbox.sqlite3").exists():
                assert run.process.poll() is None, run.log()
                assert time.monotonic() < deadline, run.log()
                time.sleep(0.01)
            taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taker.bind(("127.0.0.1", run.port))
            taker.listen()
            status = run.wait(timeout=120)
        finally:
            run.kill()
    output = run.log()
    assert status != 0, output
    assert "That port is already in use" in output  # runserver's own message
    assert "the web server exited while starting" in output
    assert BANNER not in output
    assert not run.processes(settle=0), "the worker was left behind"


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def test_the_banner_lists_what_the_sandbox_serves_and_ctrl_c_stops_it(tmp_path):
    run = SandboxRun(tmp_path / "state")
    with run:
        banner = run.log().split(BANNER, 1)[1]
        for path in ("/admin/", "/webhooks/github/", "/api/webhook-events/", "/api/schema/"):
            assert f"{run.url}{path}" in banner
        for path in ("/health/", "/metrics"):
            assert f"{run.url}{path} " in banner or f"{run.url}{path}\n" in banner
        # The sandbox extra brings prometheus-client: /metrics answers, it is not a 501.
        status, text = get(f"{run.url}/metrics")
        assert status == 200
        assert "# TYPE" in text
        status, schema = get(f"{run.url}/api/schema/")
        assert status == 200
        assert "/api/webhook-events/" in schema
        assert len(run.processes(settle=0)) >= 3  # the script, the web server, the worker
    assert run.process.returncode == 0, run.log()
    assert not run.processes(), "a process was left behind after Ctrl-C"


def test_the_asgi_mode_serves_webhooks_under_uvicorn(tmp_path):
    """``make run ASGI=1``: uvicorn serves the project (the async receive view), the admin's
    static files are served, and a signed test event is accepted."""
    import subprocess
    import sys

    from tests.servers import ROOT

    run = SandboxRun(tmp_path / "state", env={"SANDBOX_ASGI": "1"})
    with run:
        assert "Uvicorn running on" in run.log()
        assert "Starting development server" not in run.log()
        status, css = get(f"{run.url}/static/admin/css/base.css")
        assert status == 200 and css
        sent = subprocess.run(
            [sys.executable, "manage.py", "send_test_webhook", "github", "--type", "push",
             "--url", run.url],
            cwd=ROOT,
            env={**run.env, "DJANGO_SETTINGS_MODULE": "sandbox_project.settings"},
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert '"status": "accepted"' in sent.stdout, sent.stdout
        # The web process under ASGI never warns about an unbounded body: asgi.py wraps it.
        assert "WebhookBodyLimit" not in run.log()
    assert run.process.returncode == 0, run.log()
    assert not run.processes(), "a process was left behind after Ctrl-C"
