#!/usr/bin/env bash
# Run the test suite on this machine, setting up whatever it lacks:
#   - a virtualenv in .venv with dramatiq-shared and its test extra installed;
#   - redis-server and PostgreSQL from Debian's packages when absent, started when
#     they are not answering on 127.0.0.1;
#   - RabbitMQ, started (installed if absent) when it is not answering on 127.0.0.1;
#   - Chromium from Debian's packages, for the dashboard's browser test;
#   - memcached from Debian's packages, for Dramatiq's own test suite (tests/compat);
#   - a PostgreSQL role the tests log in as (each test session creates and drops
#     its own database).
# Arguments are passed to pytest:  bash scripts/test.sh -k config -x
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=6379
PG_PORT=5432
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:${REDIS_PORT}/15}"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgresql://dramatiq_shared:dramatiq_shared@127.0.0.1:${PG_PORT}/postgres}"

say() { printf '[test.sh] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() {  # wait_for NAME PORT
  for _ in $(seq 1 60); do listening "$2" && return 0; sleep 0.5; done
  say "$1 did not start listening on 127.0.0.1:$2"; return 1
}

# --- Redis -------------------------------------------------------------------
if ! listening "$REDIS_PORT"; then
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting redis-server on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir /tmp --logfile /tmp/dramatiq-shared-redis.log
  wait_for Redis "$REDIS_PORT"
fi

# --- PostgreSQL --------------------------------------------------------------
if ! listening "$PG_PORT"; then
  command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1 \
    || apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  say "starting PostgreSQL $version cluster main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for PostgreSQL "$PG_PORT"
fi
# The role the tests log in as; the local socket admits the postgres user (peer or trust).
(cd / && as_root runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 -d postgres) <<'SQL'
SELECT 'CREATE ROLE dramatiq_shared LOGIN SUPERUSER PASSWORD ''dramatiq_shared'''
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dramatiq_shared')\gexec
SQL

# --- RabbitMQ, for the tests that show the suite on it ----------------------------
RABBITMQ_PORT=5672
if ! listening "$RABBITMQ_PORT"; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  say "starting rabbitmq-server"
  as_root rabbitmq-server -detached
  for _ in $(seq 1 120); do listening "$RABBITMQ_PORT" && break; sleep 0.5; done
fi

# --- memcached, for Dramatiq's own test suite (tests/compat starts one of its own) ---
command -v memcached >/dev/null || apt_install memcached

# --- Chromium, for the dashboard's browser test (Playwright drives Debian's build) ---
command -v chromium >/dev/null || apt_install chromium

# --- Python ------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
say "installing dramatiq-shared with its test extra"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

say "running pytest"
exec .venv/bin/python -m pytest "$@"
