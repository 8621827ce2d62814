#!/usr/bin/env bash
# Control the PostgreSQL cluster of pytest-lrun's test suite: pg.sh {init|start|stop|restart|status|psql}.
#
# The cluster is the test suite's own, apart from any system cluster: its data,
# socket and log live under $LRUN_POSTGRES_DIR (default /var/lib/lrun-postgres),
# it listens on 127.0.0.1:$LRUN_POSTGRES_PORT (default 55432) and, over TCP,
# accepts password (scram-sha-256) logins only; the local socket lets the
# `postgres` OS user in by peer authentication, for set-up. The server runs as
# the `postgres` user, with the binaries of the version that made the data
# directory (the newest installed one for `init`). Fault tests call
# `pg.sh restart` (or stop, then start) to take the database away mid-run.
#
#   init     initdb the data directory unless it holds a cluster already
#   start    start the server unless it runs; returns once it accepts connections
#   stop     fast shutdown (clients are disconnected); returns once it is down
#   restart  stop, then start
#   status   exit 0 when the server runs, 3 when it does not, 4 without a cluster
#   psql ARGS  psql as the superuser over the cluster's socket (set-up and inspection)
#
# Progress goes to stderr.
set -euo pipefail

ROOT=${LRUN_POSTGRES_DIR:-/var/lib/lrun-postgres}
PORT=${LRUN_POSTGRES_PORT:-55432}
DATA=$ROOT/data
SOCKETS=$ROOT/run
LOG=$ROOT/server.log

log() { printf 'pg.sh: %s\n' "$*" >&2; }

# bin_dir: the binaries matching the data directory's version, else the newest installed.
bin_dir() {
  local dir
  if [ -s "$DATA/PG_VERSION" ]; then
    dir=/usr/lib/postgresql/$(cat "$DATA/PG_VERSION")/bin
  else
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  if [ -z "$dir" ] || [ ! -x "$dir/pg_ctl" ]; then
    log "no PostgreSQL server binaries${dir:+ in $dir} (Debian package postgresql; scripts/provision.sh installs it)"
    exit 1
  fi
  echo "$dir"
}

# as_postgres CMD...: run CMD as the postgres OS user (the server refuses to run as root),
# from / since the caller's directory may be closed to that user.
as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  elif [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    log "$1 must run as root or as the postgres user"
    exit 1
  fi
}

pg_ctl() {
  local bin
  bin=$(bin_dir) || exit 1
  as_postgres "$bin/pg_ctl" -D "$DATA" "$@"
}

status() {
  [ -s "$DATA/PG_VERSION" ] || return 4
  pg_ctl status >/dev/null 2>&1 || return 3
}

init() {
  if [ -s "$DATA/PG_VERSION" ]; then
    return
  fi
  local bin
  bin=$(bin_dir)
  log "initdb $DATA ($bin)"
  mkdir -p "$ROOT"
  chown postgres:postgres "$ROOT"
  chmod 700 "$ROOT"
  as_postgres mkdir -p "$SOCKETS"
  as_postgres "$bin/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >"$ROOT/initdb.log" 2>&1 \
    || { tail -n 20 "$ROOT/initdb.log" >&2; exit 1; }
}

start() {
  local rc=0
  status || rc=$?
  if [ "$rc" = 0 ]; then
    return
  elif [ "$rc" = 4 ]; then
    log "no cluster in $DATA: run scripts/provision.sh (or pg.sh init) first"
    exit 1
  fi
  log "starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG)"
  as_postgres mkdir -p "$SOCKETS"
  # Settings on the command line, not in postgresql.conf: LRUN_POSTGRES_PORT takes effect at every start.
  pg_ctl start -w -t 60 -l "$LOG" \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$SOCKETS" >/dev/null \
    || { log "PostgreSQL did not start; its log follows"; tail -n 20 "$LOG" >&2; exit 1; }
}

stop() {
  if status; then
    log "stopping PostgreSQL on 127.0.0.1:$PORT"
    pg_ctl stop -w -t 60 -m fast >/dev/null
  fi
}

superuser_psql() {
  local bin
  bin=$(bin_dir) || exit 1
  as_postgres "$bin/psql" -h "$SOCKETS" -p "$PORT" -U postgres -d postgres "$@"
}

case ${1:-} in
  init) init ;;
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status) status ;;
  psql) superuser_psql "${@:2}" ;;
  *)
    echo "usage: $0 {init|start|stop|restart|status|psql ARGS}" >&2
    exit 2
    ;;
esac
