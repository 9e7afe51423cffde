#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1; starts them if installed but stopped.
set -u

PG_URL=${TETHER_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_up() { pg_isready -q -d "$PG_URL" 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

wait_for() {  # wait_for NAME CHECK
  for _ in $(seq 1 30); do "$2" && return 0; sleep 1; done
  echo "ensure_services: $1 did not come up on 127.0.0.1" >&2
  return 1
}

if ! pg_up; then
  if [ -z "${TETHER_PG_URL:-}" ] && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "ensure_services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    wait_for PostgreSQL pg_up || exit 1
  else
    echo "ensure_services: PostgreSQL does not answer at $PG_URL, and it cannot be started here." >&2
    echo "Install PostgreSQL 14+ or set TETHER_PG_URL to a server you have." >&2
    exit 1
  fi
fi

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "ensure_services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    wait_for Redis redis_up || exit 1
  else
    echo "ensure_services: Redis is not running on 127.0.0.1:6379 and is not installed here." >&2
    exit 1
  fi
fi
# Answering is not enough: the suite must be able to log in and create its test database.
if command -v psql >/dev/null 2>&1 && ! psql "$PG_URL" -qAtc 'select 1' >/dev/null 2>&1; then
  echo "ensure_services: PostgreSQL answers but refused a login with $PG_URL." >&2
  echo "Allow it in pg_hba.conf (e.g. trust for 127.0.0.1) or put a password in TETHER_PG_URL." >&2
  exit 1
fi
echo "ensure_services: PostgreSQL and Redis are up"
