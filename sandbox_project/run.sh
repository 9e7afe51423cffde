#!/usr/bin/env bash
# `make run`: migrate, create the sandbox admin, start the web server and a Celery worker (with
# beat, for the sweeper). Zero setup by default (SQLite + kombu's filesystem broker); set
# DATABASE_URL and CELERY_BROKER_URL to use PostgreSQL and Redis or RabbitMQ instead.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
HOST=${SANDBOX_HOST:-127.0.0.1}
PORT=${SANDBOX_PORT:-8000}
STATE_DIR=${SANDBOX_STATE_DIR:-.sandbox}
export DJANGO_SETTINGS_MODULE=sandbox_project.settings
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
trap cleanup INT TERM EXIT

"$VENV/bin/celery" -A sandbox_project worker --beat --loglevel=INFO --concurrency=2 \
  --schedule "$STATE_DIR/celerybeat-schedule" &
pids+=($!)
"$PY" manage.py runserver --noreload "$HOST:$PORT" &
pids+=($!)

sleep 2
base="http://$HOST:$PORT"
cat <<MSG

  django-tether sandbox is running (Ctrl-C stops the web server and the worker).

  Admin:     $base/admin/   user: admin   password: $(cat "$password_file")
  Webhooks:  $base/webhooks/stripe/   $base/webhooks/github/   $base/webhooks/acme/
  API:       $base/api/webhook-events/   $base/api/circuit-breakers/
  Health:    $base/health/

  Send a signed test event (in another terminal):
    $PY manage.py send_test_webhook github --type push --url $base
  then open $base/admin/webhooks/webhookevent/ to see it processed
  (and $base/admin/demo/githubpush/ for what the demo's handler recorded).

MSG
wait -n "${pids[@]}"
