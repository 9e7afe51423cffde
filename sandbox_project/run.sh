#!/usr/bin/env bash
# `make run`: migrate, create the sandbox admin, start the web server and a Celery worker (with
# beat, for the sweeper). Zero setup by default (SQLite + kombu's filesystem broker); set
# DATABASE_URL and CELERY_BROKER_URL to use PostgreSQL and Redis or RabbitMQ instead.
# `make run TASKS=django`: Django's Tasks instead of Celery, on the same database: django-tasks-db's
# worker (manage.py db_worker) and the sweeper as a process (requeue_stuck_webhooks --every 30).
#
# Environment (see docs/sandbox.md):
#   SANDBOX_HOST       address the web server listens on (default 127.0.0.1; an IPv6 one in
#                      brackets, e.g. [::1])
#   SANDBOX_PORT       its port (default 8000)
#   SANDBOX_STATE_DIR  where the SQLite file, the broker's files, the beat schedule and the
#                      admin password live (default .sandbox)
#   VENV               the virtualenv to run from (default .venv)
#   SANDBOX_ASGI       1 (`make run ASGI=1`): serve the project as ASGI under uvicorn
#                      (sandbox_project/asgi.py: the async receive view) instead of runserver
#   SANDBOX_TASK_BACKEND  celery (default) or django: what processes the events (`make run
#                      TASKS=django` sets it; WEBHOOKS["TASK_BACKEND"] in the sandbox's settings)
#
# The port is checked first: if it is taken (another `make run`?), the script stops before
# migrating or starting anything. If the web server or the worker exits while starting, the
# other is stopped and the script exits non-zero; the banner is printed once both are ready.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
HOST=${SANDBOX_HOST:-127.0.0.1}
PORT=${SANDBOX_PORT:-8000}
STATE_DIR=${SANDBOX_STATE_DIR:-.sandbox}
STARTUP_TIMEOUT=120  # seconds for the web server to answer and the worker to be ready
TASK_BACKEND=${SANDBOX_TASK_BACKEND:-celery}
export DJANGO_SETTINGS_MODULE=sandbox_project.settings
case "$TASK_BACKEND" in
  celery | django) export SANDBOX_TASK_BACKEND="$TASK_BACKEND" ;;
  *)
    echo "make run: TASKS=${TASK_BACKEND@Q} is not a task backend: use TASKS=celery (the" \
      "default) or TASKS=django." >&2
    exit 1
    ;;
esac
case "$HOST" in *:*) [[ $HOST == \[*\] ]] || HOST="[$HOST]" ;; esac  # runserver's IPv6 form

# Can the web server listen there? Bound as runserver binds (SO_REUSEADDR), then released.
if ! "$PY" - "$HOST" "$PORT" <<'PY'
import errno
import socket
import sys

host, port = sys.argv[1], sys.argv[2]
if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
    sys.exit(f"make run: SANDBOX_PORT={port!r} is not a port number (1 to 65535).")
address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
family = socket.AF_INET6 if ":" in address else socket.AF_INET
try:
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address, int(port), family, socket.SOCK_STREAM
    )[0]
except (socket.gaierror, UnicodeError) as exc:
    sys.exit(f"make run: SANDBOX_HOST={host!r} is not an address of this machine ({exc}).")
with socket.socket(family, kind, proto) as sock:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            sys.exit(
                f"make run: port {port} on {host} is already in use (is the sandbox already "
                f"running?). Stop what listens there, or choose another port: "
                f"SANDBOX_PORT={int(port) % 65535 + 1} make run (SANDBOX_HOST sets the address)."
            )
        sys.exit(
            f"make run: cannot listen on {host}:{port} ({exc.strerror}). Set SANDBOX_HOST to "
            f"an address of this machine and SANDBOX_PORT to a free port (default "
            f"127.0.0.1:8000)."
        )
PY
then
  exit 1
fi

mkdir -p "$STATE_DIR"
"$PY" manage.py migrate --noinput

# The sandbox admin: created once with a random password kept in $STATE_DIR (sandbox only).
password_file="$STATE_DIR/admin-password"
if [ ! -s "$password_file" ]; then
  "$PY" -c 'import secrets; print(secrets.token_urlsafe(12))' > "$password_file"
  chmod 600 "$password_file"
fi
SANDBOX_ADMIN_PASSWORD=$(cat "$password_file") "$PY" manage.py shell -c '
import os
from django.contrib.auth import get_user_model
User = get_user_model()
user, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
user.is_staff = user.is_superuser = True
user.set_password(os.environ["SANDBOX_ADMIN_PASSWORD"])
user.save()
'

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM  # asked to stop: both are stopped, nothing failed

# Each says when it is ready through a file: the worker once it consumes (Celery's worker_ready,
# in sandbox_project/celery.py; db_worker's "Starting worker" line), the web server once it has bound the port (runserver prints its
# "Starting development server at" line after binding). That another program answers on the
# port does not count: if it took the port first, runserver fails to bind and exits.
worker_ready="$STATE_DIR/worker-ready"
web_ready="$STATE_DIR/web-ready"
rm -f "$worker_ready" "$web_ready"
web_server_output() {
  while IFS= read -r line; do
    printf '%s\n' "$line"
    if [[ $line == "Starting development server at "* || $line == *"Uvicorn running on "* ]]; then
      : > "$web_ready"
    fi
  done
}
if [ "$TASK_BACKEND" = django ]; then
  # Django's Tasks on the database: django-tasks-db's worker, ready once it polls (its
  # "Starting worker" line), and the sweeper, which Django's Tasks have no beat to run.
  worker_name="the Django Tasks worker"
  worker_output() {
    while IFS= read -r line; do
      printf '%s\n' "$line"
      if [[ $line == "Starting worker "* ]]; then : > "$worker_ready"; fi
    done
  }
  PYTHONUNBUFFERED=1 "$PY" manage.py db_worker --no-reload --interval 0.5 > >(worker_output) 2>&1 &
  worker=$!
  pids+=("$worker")
  "$PY" manage.py requeue_stuck_webhooks --every 30 &
  sweeper=$!
  pids+=("$sweeper")
else
  worker_name="the Celery worker"
  SANDBOX_WORKER_READY_FILE="$worker_ready" "$VENV/bin/celery" -A sandbox_project worker --beat \
    --loglevel=INFO --concurrency=2 --schedule "$STATE_DIR/celerybeat-schedule" &
  worker=$!
  pids+=("$worker")
fi
if [ "${SANDBOX_ASGI:-}" = 1 ]; then
  # ASGI: uvicorn serves sandbox_project.asgi (the async receive view; static files as
  # runserver serves them). Its "Uvicorn running on" line comes once it has bound the port.
  PYTHONUNBUFFERED=1 "$PY" -m uvicorn sandbox_project.asgi:application --lifespan off \
    --host "$(printf '%s' "$HOST" | tr -d '[]')" --port "$PORT" > >(web_server_output) 2>&1 &
else
  PYTHONUNBUFFERED=1 "$PY" manage.py runserver --noreload "$HOST:$PORT" > >(web_server_output) &
fi
web=$!
pids+=("$web")

# Wait for both, or for either to die: then stop the other and exit non-zero, with no banner.
deadline=$((SECONDS + STARTUP_TIMEOUT))
until [ -e "$web_ready" ] && [ -e "$worker_ready" ]; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" || status=$?
      what="the web server"
      [ "$pid" = "$worker" ] && what="$worker_name"
      [ "$pid" = "${sweeper:-}" ] && what="the sweeper"
      echo "make run: $what exited while starting (status $status; its output is above):" \
        "stopping the sandbox." >&2
      exit 1
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "make run: the web server and the worker were not both ready after" \
      "${STARTUP_TIMEOUT}s: stopping the sandbox." >&2
    exit 1
  fi
  sleep 0.2
done

base="http://$HOST:$PORT"
processing="Celery (TASKS=celery), its beat runs the sweeper every 30 s"
if [ "$TASK_BACKEND" = django ]; then
  processing="Django's Tasks on the database (TASKS=django): db_worker, and the sweeper every 30 s"
fi
cat <<MSG

  django-tether sandbox is running (Ctrl-C stops the web server and the worker).
  Processing: $processing

  Admin:     $base/admin/   user: admin   password: $(cat "$password_file")
  Webhooks:  $base/webhooks/stripe/   $base/webhooks/github/   $base/webhooks/acme/
  API:       $base/api/webhook-events/   $base/api/circuit-breakers/
  Schema:    $base/api/schema/   (OpenAPI, of the API above)
  Health:    $base/health/
  Metrics:   $base/metrics   (Prometheus)
  Docs:      docs/ in the checkout; \`make docs\` serves them on http://127.0.0.1:8001

  Send a signed test event (in another terminal):
    $PY manage.py send_test_webhook github --type push --url $base
  then open $base/admin/webhooks/webhookevent/ to see it processed
  (and $base/admin/demo/githubpush/ for what the demo's handler recorded).

MSG

# Either one stopping stops the sandbox (the EXIT trap stops the other).
status=0
wait -n "${pids[@]}" || status=$?
echo "make run: the web server or the worker stopped (status $status): stopping the sandbox." >&2
exit $((status == 0 ? 1 : status))
