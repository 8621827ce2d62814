#!/usr/bin/env bash
# Control the BuildGrid server of pytest-lrun's test suite: buildgrid.sh {start|stop|restart|status}.
#
# BuildGrid is a Remote Execution API (REAPI) service; the REAPI machine tests
# dispatch to it, and workers of the project's own lease its actions over the
# Remote Workers API (Bots service). The server is the test suite's own:
#
#   venv      BuildGrid $BUILDGRID_VERSION from the Python package index in a virtual
#             environment of its own on Python 3.13 (pyenv's, else python3.13 on PATH),
#             under $LRUN_BUILDGRID_VENV (default $LRUN_CACHE_DIR/buildgrid-venv,
#             /var/cache/lrun/buildgrid-venv); made only when missing
#   database  lrun_buildgrid, owned by the role lrun_buildgrid, in the test suite's
#             PostgreSQL cluster (scripts/pg.sh: 127.0.0.1:$LRUN_POSTGRES_PORT); the
#             role's password is made once and kept beside the cluster
#             ($LRUN_POSTGRES_DIR/buildgrid.password); the schema comes from
#             BuildGrid's alembic migrations (`bgd migrate apply`)
#   state     under $LRUN_BUILDGRID_DIR (default /var/lib/lrun-buildgrid):
#               config.yml            the server config (rewritten at every start; a change restarts the server)
#               cas/                  the CAS (on disk: it outlives a restart of the server)
#               server.pid, server.log  the running server's pid and its log
#               logstream.pid, logstream.log  the LogStream service's (scripts/logstream.py)
#               buildgrid.lock        held while starting or stopping (flock)
#
# The server listens on 127.0.0.1:$LRUN_BUILDGRID_PORT (default 50051), insecure, no
# authentication, with one instance named $LRUN_BUILDGRID_INSTANCE (default lrun)
# serving CAS, ByteStream, ActionCache (in memory: lost on a restart), Execution,
# Operations, Bots and Capabilities. Actions may carry the platform properties
# OSFamily and ISA (matched against a bot's device properties) and container-image
# (not matched: every bot is expected to run every image).
#
# With provision.sh's TLS material (a CA, a server certificate for 127.0.0.1, a client one:
# $LRUN_TLS_DIR, default $LRUN_CACHE_DIR/tls) the same server also listens on
# 127.0.0.1:$LRUN_BUILDGRID_TLS_PORT (default the port + 2) with mutual TLS: it asks for a
# client certificate the CA signed (LRUN_TEST_REAPI_TLS=grpcs://127.0.0.1:PORT).
#
# BuildGrid creates a stdout and a stderr log stream per job on a LogStream service, but
# serves none itself: scripts/logstream.py is one, on 127.0.0.1:$LRUN_LOGSTREAM_PORT
# (default the server's port + 1), started and stopped with the server. Workers write
# an action's output there as it runs; clients read it there (a machine's `logstream`).
#
#   start    make the venv, database and config; start the server unless it runs with
#            this config; returns once it answers GetCapabilities
#   stop     stop the server; returns once it is gone
#   restart  stop, then start (the fault tests take the server away mid-run)
#   status   exit 0 when the server runs, 3 when it does not
#
# `start` prints `export LRUN_TEST_REAPI=grpc://127.0.0.1:PORT LRUN_TEST_REAPI_INSTANCE=NAME
# LRUN_TEST_LOGSTREAM=grpc://127.0.0.1:PORT` and
# its own LRUN_BUILDGRID_{DIR,PORT,INSTANCE,VENV} on stdout for `eval` (so that a test's
# `restart` finds the same server); progress goes to stderr. Needs root to make the database.
set -euo pipefail

BUILDGRID_VERSION=0.9.1
ROOT=${LRUN_BUILDGRID_DIR:-/var/lib/lrun-buildgrid}
PORT=${LRUN_BUILDGRID_PORT:-50051}
LOGSTREAM_PORT=${LRUN_LOGSTREAM_PORT:-$((PORT + 1))}
TLS_PORT=${LRUN_BUILDGRID_TLS_PORT:-$((PORT + 2))}
TLS_DIR=${LRUN_TLS_DIR:-${LRUN_CACHE_DIR:-/var/cache/lrun}/tls}
INSTANCE=${LRUN_BUILDGRID_INSTANCE-lrun}
VENV=${LRUN_BUILDGRID_VENV:-${LRUN_CACHE_DIR:-/var/cache/lrun}/buildgrid-venv}
export LRUN_POSTGRES_DIR=${LRUN_POSTGRES_DIR:-/var/lib/lrun-postgres}
export LRUN_POSTGRES_PORT=${LRUN_POSTGRES_PORT:-55432}
PG=$(dirname "$0")/pg.sh
CONFIG=$ROOT/config.yml
PIDFILE=$ROOT/server.pid
LOG=$ROOT/server.log
LS_PIDFILE=$ROOT/logstream.pid
LS_LOG=$ROOT/logstream.log
DB=lrun_buildgrid
PWFILE=$LRUN_POSTGRES_DIR/buildgrid.password
# No password in the URL: the server and the migration read it from PGPASSWORD (libpq),
# so it shows in neither a config file nor a command line.
DB_URL=postgresql+psycopg://$DB@127.0.0.1:$LRUN_POSTGRES_PORT/$DB

log() { printf 'buildgrid.sh: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "$1 needs root"
    exit 1
  fi
}

# alive PID: PID is a live process (an exited one may linger as a zombie until reaped).
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# running: the pid file names a live BuildGrid server.
# running_as PIDFILE TEXT: the pid in PIDFILE is alive, and its command line holds TEXT.
running_as() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$2"
}

running() { running_as "$PIDFILE" "bgd server start"; }

status() { running || return 3; }

ls_running() { running_as "$LS_PIDFILE" "logstream.py"; }

# ls_start: the LogStream service, unless it runs; returns once it listens.
ls_start() {
  ls_running && return
  log "starting the LogStream service on 127.0.0.1:$LOGSTREAM_PORT (log: $LS_LOG)"
  setsid "$VENV/bin/python" "$(dirname "$0")/logstream.py" "127.0.0.1:$LOGSTREAM_PORT" \
    </dev/null >>"$LS_LOG" 2>&1 9>&- &
  local pid=$! i
  echo "$pid" >"$LS_PIDFILE"
  for i in $(seq 1 100); do
    alive "$pid" || { tail -n 20 "$LS_LOG" >&2; log "the LogStream service exited at start"; exit 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$LOGSTREAM_PORT") 2>/dev/null; then
      return
    fi
    sleep 0.1
  done
  log "the LogStream service did not listen on 127.0.0.1:$LOGSTREAM_PORT within 10 s"
  exit 1
}

ls_stop() {
  ls_running || return 0
  kill -KILL "$(cat "$LS_PIDFILE")" 2>/dev/null || true
  rm -f "$LS_PIDFILE"
}

# venv: BuildGrid in its own venv, made once; the stamp, written last, says the install is complete.
venv() {
  local stamp=$VENV/.lrun-buildgrid-version
  if [ "$(cat "$stamp" 2>/dev/null)" = "$BUILDGRID_VERSION" ]; then
    return
  fi
  local prefix python
  prefix=$(pyenv prefix 3.13 2>/dev/null || true)
  python=${prefix:+$prefix/bin/python3.13}
  [ -n "$python" ] && [ -x "$python" ] || python=$(command -v python3.13 || true)
  if [ -z "$python" ]; then
    log "no Python 3.13 (BuildGrid $BUILDGRID_VERSION needs it): install it with pyenv (pyenv install 3.13)"
    exit 1
  fi
  log "installing BuildGrid $BUILDGRID_VERSION into $VENV ($python; about 30 s)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$python" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "buildgrid==$BUILDGRID_VERSION" >"$VENV.pip.log" 2>&1 \
    || { tail -n 20 "$VENV.pip.log" >&2; log "pip could not install buildgrid==$BUILDGRID_VERSION"; exit 1; }
  echo "$BUILDGRID_VERSION" >"$stamp"
}

db_password() { cat "$PWFILE"; }

# db_answers: the BuildGrid role logs in to its database.
db_answers() {
  [ -r "$PWFILE" ] && PGPASSWORD=$(db_password) PGCONNECT_TIMEOUT=5 timeout 10 \
    psql -h 127.0.0.1 -p "$LRUN_POSTGRES_PORT" -U "$DB" -d "$DB" -XAtqc 'SELECT 1' >/dev/null 2>&1
}

# database: the role and database (made as the cluster's superuser), then BuildGrid's schema.
database() {
  if ! db_answers; then
    need_root "making the database $DB"
    if ! "$PG" status; then
      log "PostgreSQL does not run on 127.0.0.1:$LRUN_POSTGRES_PORT: run scripts/provision.sh first"
      exit 1
    fi
    if [ ! -s "$PWFILE" ]; then
      # Hex, so that no quoting is ever needed.
      (umask 077 && openssl rand -hex 16 >"$PWFILE.tmp") && mv "$PWFILE.tmp" "$PWFILE"
    fi
    log "making role and database $DB"
    rm -f "$ROOT/schema-version"
    # The password goes in on stdin (never on a command line); ALTER keeps the role equal to the file.
    "$PG" psql -XAtq -v ON_ERROR_STOP=1 >/dev/null <<SQL
\set password '$(db_password)'
SELECT 'CREATE ROLE $DB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB') \gexec
ALTER ROLE $DB LOGIN PASSWORD :'password';
SELECT 'CREATE DATABASE $DB OWNER $DB' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB') \gexec
SQL
    if ! db_answers; then
      log "PostgreSQL refuses the $DB login; its log: $LRUN_POSTGRES_DIR/server.log"
      exit 1
    fi
  fi
  # The stamp spares a restart the migration's second: `bgd migrate apply` (alembic upgrade
  # to head) runs for a new database or a new BuildGrid version only.
  local stamp=$ROOT/schema-version
  if [ "$(cat "$stamp" 2>/dev/null)" = "$BUILDGRID_VERSION $DB_URL" ]; then
    return
  fi
  log "applying BuildGrid's migrations to $DB"
  PGPASSWORD=$(db_password) "$VENV/bin/bgd" migrate apply "$DB_URL" >"$ROOT/migrate.log" 2>&1 \
    || { tail -n 20 "$ROOT/migrate.log" >&2; log "BuildGrid's migrations failed on $DB"; exit 1; }
  echo "$BUILDGRID_VERSION $DB_URL" >"$stamp"
}

# tls_channel: the mutual-TLS listener, when the TLS material is there.
tls_channel() {
  [ -s "$TLS_DIR/server-key.pem" ] || return 0
  cat <<EOF
  - !channel
    address: "127.0.0.1:$TLS_PORT"
    insecure-mode: false
    credentials:
      tls-server-key: $TLS_DIR/server-key.pem
      tls-server-cert: $TLS_DIR/server-cert.pem
      tls-client-certs: $TLS_DIR/ca.pem
EOF
}

write_config() {
  cat >"$CONFIG.new" <<EOF
# Written by scripts/buildgrid.sh: pytest-lrun's test BuildGrid, on 127.0.0.1:$PORT.
description: pytest-lrun's test BuildGrid

server:
  - !channel
    address: "127.0.0.1:$PORT"
    insecure-mode: true
$(tls_channel)

connections:
  - !sql-connection &sql
    connection-string: $DB_URL
    # The fault tests restart PostgreSQL: check a pooled connection before use.
    pool-pre-ping: true
    pool-size: 10
    max-overflow: 10

storages:
  - !disk-storage &cas
    path: $ROOT/cas

caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 4096
    allow-updates: true
    cache-failed-actions: true

schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    storage: *cas
    action-cache: *ac
    property-set: !dynamic-property-set
      wildcard-property-keys:
        - container-image
    # A bot that stops calling is given up (its leases requeued) after this many seconds.
    bot-session-keepalive-timeout: 60
    # Each job's stdout and stderr streams, for workers to write and clients to read live.
    logstream:
      url: http://127.0.0.1:$LOGSTREAM_PORT
    assigners:
      # BuildGrid polls for queued jobs; its default (1 s plus up to 1 s of jitter)
      # would dominate a test's dispatch time.
      - !priority-age-assigner
        count: 1
        interval: 0.1
        jitter-factor: 0.1

instances:
  - name: "$INSTANCE"
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
        endpoints: [execution, operations, bots]
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas

# Streaming Execute/WaitExecution calls and the bots' long polls each hold a thread:
# enough for the tests' concurrent dispatchers and workers.
thread-pool-size: 64
maximum-concurrent-rpcs: 64
EOF
}

# answers: GetCapabilities on the instance succeeds.
answers() {
  timeout 20 "$VENV/bin/python" - "127.0.0.1:$PORT" "$INSTANCE" >/dev/null 2>&1 <<'PY'
import sys

import grpc

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    stub = re_grpc.CapabilitiesStub(channel)
    caps = stub.GetCapabilities(re_pb2.GetCapabilitiesRequest(instance_name=sys.argv[2]), timeout=5)
    sys.exit(0 if caps.execution_capabilities.exec_enabled else 1)
PY
}

stop() {
  local pid i
  running || return 0
  pid=$(cat "$PIDFILE")
  log "stopping BuildGrid (pid $pid) on 127.0.0.1:$PORT"
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    running || { rm -f "$PIDFILE"; return 0; }
    sleep 0.1
  done
  # Its shutdown waits on open streams and long polls; the tests want it gone now.
  log "BuildGrid (pid $pid) did not stop within 10 s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    running || { rm -f "$PIDFILE"; return 0; }
    sleep 0.1
  done
  log "BuildGrid (pid $pid) did not die"
  exit 1
}

start() {
  venv
  ls_start
  write_config
  if running && cmp -s "$CONFIG" "$CONFIG.new"; then
    rm -f "$CONFIG.new"
    if answers; then
      return
    fi
    log "BuildGrid runs but does not answer on 127.0.0.1:$PORT: restarting it"
  fi
  stop
  database
  mkdir -p "$ROOT/cas"
  chmod 700 "$ROOT"
  mv "$CONFIG.new" "$CONFIG"
  log "starting BuildGrid $BUILDGRID_VERSION on 127.0.0.1:$PORT, instance '$INSTANCE' (log: $LOG)"
  # Its own session, stdin/stdout/stderr off the caller's (a `$(...)` around provision.sh would
  # wait for them) and without the lock's descriptor (else it would hold the lock for life).
  PGPASSWORD=$(db_password) setsid "$VENV/bin/bgd" server start "$CONFIG" \
    </dev/null >>"$LOG" 2>&1 9>&- &
  local pid=$! i
  echo "$pid" >"$PIDFILE"
  for i in $(seq 1 120); do
    # alive, not running: for a moment after the fork the process is still this shell.
    if ! alive "$pid"; then
      log "BuildGrid exited at start; its log follows"
      tail -n 30 "$LOG" >&2 || true
      exit 1
    fi
    if answers; then
      return
    fi
    sleep 0.5
  done
  log "BuildGrid did not answer on 127.0.0.1:$PORT within 60 s; its log follows"
  tail -n 30 "$LOG" >&2 || true
  exit 1
}

# exports: the server for the tests, and this script's settings, so that a test's
# `buildgrid.sh restart` finds the same server.
exports() {
  local TLS_EXPORT=
  [ -s "$TLS_DIR/server-key.pem" ] && TLS_EXPORT="LRUN_TEST_REAPI_TLS=grpcs://127.0.0.1:$TLS_PORT"
  echo "export LRUN_TEST_REAPI=grpc://127.0.0.1:$PORT LRUN_TEST_REAPI_INSTANCE=$INSTANCE" \
    "LRUN_TEST_LOGSTREAM=grpc://127.0.0.1:$LOGSTREAM_PORT" \
    ${TLS_EXPORT:-} \
    "LRUN_BUILDGRID_DIR=$ROOT LRUN_BUILDGRID_PORT=$PORT LRUN_BUILDGRID_INSTANCE=$INSTANCE LRUN_BUILDGRID_VENV=$VENV"
}

# serialized: provision.sh runs from several shells at once, and two starts would race for the port.
locked() {
  mkdir -p "$ROOT"
  exec 9>"$ROOT/buildgrid.lock"
  flock 9
}

case ${1:-} in
  start) locked && start && exports ;;
  stop) locked && stop && ls_stop ;;
  restart) locked && stop && start ;;
  status) status ;;
  *)
    echo "usage: $0 {start|stop|restart|status}" >&2
    exit 2
    ;;
esac
