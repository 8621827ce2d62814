#!/usr/bin/env bash
# Make the Docker Engines and images that pytest-lrun's demo and test suite need.
#
# Idempotent: installs Debian's docker.io, busybox-static, debootstrap and pip when
# missing, starts a first engine on the default socket when none answers, and a
# second engine on its own socket/data-root/exec-root (the second named machine
# of the multi-machine tests) that also listens on tcp://127.0.0.1:2376 with
# mutual TLS (certificates made here with openssl), then builds the test images
# on both engines from local root filesystems (no image registry is needed):
# lrun-busybox, lrun-python:bookworm (Debian's Python 3.11 and pytest 7.2) and
# lrun-python-current (the same rootfs with a current pytest, >= 8, installed on
# the host with pip into its /usr/local; the containers need no network).
# Rootfs tarballs and TLS material are cached under $LRUN_CACHE_DIR so a rerun
# skips debootstrap and pip.
#
# Also installs Debian's postgresql when missing and, with scripts/pg.sh, runs
# the test suite's own cluster on 127.0.0.1:$LRUN_POSTGRES_PORT (default 55432;
# data under $LRUN_POSTGRES_DIR, default /var/lib/lrun-postgres): initdb on a
# fresh machine, start when stopped, reuse when running. It holds the role
# `lrun` (password login, CREATEDB so tests can make databases of their own)
# and its database `lrun_test`; the password is made once and kept beside the
# cluster.
#
# Also installs Debian's openssh-server when missing and, with scripts/sshd.sh,
# runs the test suite's own sshd on 127.0.0.1:$LRUN_SSHD_PORT (default 2222;
# keys and config under $LRUN_SSHD_DIR, default /var/lib/lrun-sshd): root logs
# in with a client key made there, and a login's `docker system dial-stdio`
# reaches the first engine, so ssh://root@127.0.0.1:PORT is that engine over ssh.
#
# Then, with scripts/buildgrid.sh, runs the test suite's own BuildGrid (a Remote
# Execution API service) on 127.0.0.1:$LRUN_BUILDGRID_PORT (default 50051; config,
# disk CAS and log under $LRUN_BUILDGRID_DIR, default /var/lib/lrun-buildgrid):
# BuildGrid 0.9.1 from the Python package index in a venv of its own on pyenv's
# Python 3.13 (cached under $LRUN_CACHE_DIR/buildgrid-venv), its scheduler in the
# database lrun_buildgrid of the cluster above (role lrun_buildgrid, password kept
# beside the cluster), one instance named $LRUN_BUILDGRID_INSTANCE (default lrun).
#
# Also installs Debian's docker-registry, which a test starts on a loopback port of
# its own (tests/flaky_registry.py): nothing here runs it. And Debian's chromium,
# which tests/integration/test_reports.py runs headless on a pytest-html report.
#
# Prints `export LRUN_TEST_...=...` lines on stdout for `eval`; progress goes
# to stderr.
set -euo pipefail

ENGINE1_SOCK=${LRUN_ENGINE1_SOCK:-/var/run/docker.sock}
ENGINE2_SOCK=${LRUN_ENGINE2_SOCK:-/var/run/lrun-docker2.sock}
ENGINE2_TLS=${LRUN_ENGINE2_TLS:-127.0.0.1:2376}
CACHE_DIR=${LRUN_CACHE_DIR:-/var/cache/lrun}
BUSYBOX_IMAGE=lrun-busybox:latest
PYTHON_IMAGE=lrun-python:bookworm
PYTHON_CURRENT_IMAGE=lrun-python-current:latest
# Exported so that scripts/pg.sh, here and when the tests restart the database, finds the same cluster.
export LRUN_POSTGRES_DIR=${LRUN_POSTGRES_DIR:-/var/lib/lrun-postgres}
export LRUN_POSTGRES_PORT=${LRUN_POSTGRES_PORT:-55432}
PG=$(dirname "$0")/pg.sh
# Exported for the same reason: scripts/sshd.sh finds the same server and keys.
export LRUN_SSHD_DIR=${LRUN_SSHD_DIR:-/var/lib/lrun-sshd}
export LRUN_SSHD_PORT=${LRUN_SSHD_PORT:-2222}
SSHD=$(dirname "$0")/sshd.sh
# scripts/buildgrid.sh prints its own settings among its exports, for the tests that restart it.
BUILDGRID=$(dirname "$0")/buildgrid.sh

log() { printf 'provision: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "$1 needs root; run this script as root (or with sudo)"
    exit 1
  fi
}

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)  # a pull that fails, then works
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # renders the pytest-html report in a test
  if [ ${#missing[@]} -gt 0 ]; then
    need_root "installing ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

engine_up() { DOCKER_HOST="unix://$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

tls_up() {
  local tls=$CACHE_DIR/tls
  DOCKER_HOST="tcp://$ENGINE2_TLS" timeout 10 docker --tlsverify --tlscacert "$tls/ca.pem" \
    --tlscert "$tls/cert.pem" --tlskey "$tls/key.pem" version >/dev/null 2>&1
}

# tls_material: a CA, a server certificate for 127.0.0.1 and a client certificate.
tls_material() {
  local tls=$CACHE_DIR/tls
  [ -s "$tls/key.pem" ] && return
  log "making TLS material for the engine on tcp://$ENGINE2_TLS"
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=lrun-test-ca" \
      -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName = IP:127.0.0.1,DNS:localhost\nextendedKeyUsage = serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
      -extfile server.ext -out server-cert.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=lrun-test-client" -keyout key.pem.tmp -out client.csr 2>/dev/null
    printf 'extendedKeyUsage = clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
      -extfile client.ext -out cert.pem 2>/dev/null
    mv key.pem.tmp key.pem  # last: its presence says the set is complete
  )
}

# stop_engine NAME: stop the dockerd of NAME (not the first engine) and wait until it is gone.
stop_engine() {
  local pidfile=/var/run/lrun-$1.pid pid i
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  log "dockerd $1 (pid $pid) did not stop within 30 s"
  exit 1
}

# start_engine SOCKET NAME: start dockerd on SOCKET unless an engine answers there.
start_engine() {
  local sock=$1 name=$2
  if engine_up "$sock"; then
    if [ "$name" = engine1 ] || tls_up; then
      log "engine $name answers on $sock"
      return
    fi
    log "engine $name answers on $sock but not on tcp://$ENGINE2_TLS: restarting it"
    stop_engine "$name"
  fi
  need_root "starting dockerd"
  local args=(--iptables=false --ip6tables=false --bridge=none --host "unix://$sock")
  if [ "$name" != engine1 ]; then
    local tls=$CACHE_DIR/tls
    args+=(--data-root "/var/lib/lrun-$name" --exec-root "/var/run/lrun-$name"
      --pidfile "/var/run/lrun-$name.pid" --host "tcp://$ENGINE2_TLS" --tlsverify
      --tlscacert "$tls/ca.pem" --tlscert "$tls/server-cert.pem" --tlskey "$tls/server-key.pem")
  fi
  log "starting dockerd $name on $sock (log: /tmp/lrun-dockerd-$name.log)"
  nohup dockerd "${args[@]}" >"/tmp/lrun-dockerd-$name.log" 2>&1 &
  local i
  for i in $(seq 1 60); do
    if engine_up "$sock"; then
      log "engine $name is up"
      return
    fi
    sleep 1
  done
  log "engine $name did not answer on $sock within 60 s; its log follows"
  tail -c 4000 "/tmp/lrun-dockerd-$name.log" | tr -d '\000' >&2 || true
  exit 1
}

busybox_rootfs() {
  local tar=$CACHE_DIR/busybox-rootfs.tar
  if [ ! -s "$tar" ]; then
    log "building busybox rootfs"
    local dir
    dir=$(mktemp -d)
    mkdir -p "$dir/bin" "$dir/tmp" "$dir/lrun/artifacts" "$dir/lrun/out"
    cp /bin/busybox "$dir/bin/busybox"
    local applet
    for applet in $("$dir/bin/busybox" --list); do
      [ -e "$dir/bin/$applet" ] || ln -s busybox "$dir/bin/$applet"
    done
    tar -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  echo "$tar"
}

python_rootfs() {
  local tar=$CACHE_DIR/python-rootfs.tar
  if [ ! -s "$tar" ]; then
    need_root "debootstrap"
    log "building Python rootfs with debootstrap (about a minute)"
    local dir
    dir=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-pytest bookworm "$dir" >"$CACHE_DIR/debootstrap.log" 2>&1 \
      || { tail -n 30 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    mkdir -p "$dir/lrun/artifacts" "$dir/lrun/out"
    tar -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  echo "$tar"
}

# python_current_rootfs PYTHON_TARBALL: that rootfs plus pytest >= 8 in /usr/local (ahead of Debian's 7.2 on sys.path).
python_current_rootfs() {
  local base=$1 tar=$CACHE_DIR/python-current-rootfs.tar
  if [ ! -s "$tar" ]; then
    need_root "unpacking the Python rootfs"
    log "building the current-pytest rootfs (pip on the host; pure-Python wheels for the image's Python 3.11)"
    local dir
    dir=$(mktemp -d)
    tar -C "$dir" -xf "$base"
    local site=$dir/usr/local/lib/python3.11/dist-packages
    # Wheels only, chosen for the image's Python, not the host's; no scripts (their shebang is the host's).
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-compile --only-binary=:all: \
      --python-version 3.11 --implementation py --target "$site" 'pytest>=8' >&2 \
      || { rm -rf "$dir"; log "pip could not fetch pytest>=8 for the current-pytest image"; exit 1; }
    rm -rf "$site/bin"
    tar -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  echo "$tar"
}

# build_image SOCKET IMAGE TARBALL: docker import TARBALL as IMAGE unless present.
build_image() {
  local sock=$1 image=$2 tar=$3
  if DOCKER_HOST="unix://$sock" docker image inspect "$image" >/dev/null 2>&1; then
    return
  fi
  log "importing $image into the engine on $sock"
  DOCKER_HOST="unix://$sock" docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'LABEL lrun.test-image=1' \
    "$tar" "$image" >/dev/null
}

# pg_answers URL: the database at URL takes a password login and a query.
pg_answers() { PGCONNECT_TIMEOUT=5 timeout 10 psql "$1" -XAtqc 'SELECT 1' >/dev/null 2>&1; }

# start_postgres: the test cluster up, with its role and database; prints the database's URL.
start_postgres() {
  local pwfile=$LRUN_POSTGRES_DIR/lrun.password
  local url=postgresql://lrun:PASSWORD@127.0.0.1:$LRUN_POSTGRES_PORT/lrun_test
  if [ -s "$pwfile" ] && [ -r "$pwfile" ] && pg_answers "${url/PASSWORD/$(cat "$pwfile")}"; then
    log "PostgreSQL answers on 127.0.0.1:$LRUN_POSTGRES_PORT"
    echo "${url/PASSWORD/$(cat "$pwfile")}"
    return
  fi
  need_root "starting PostgreSQL"
  "$PG" init
  "$PG" start
  if [ ! -s "$pwfile" ]; then
    # Hex, so the URL needs no escaping.
    (umask 077 && openssl rand -hex 16 >"$pwfile.tmp") && mv "$pwfile.tmp" "$pwfile"
  fi
  local password
  password=$(cat "$pwfile")
  log "making role lrun and database lrun_test"
  # The password goes in on stdin (never on a command line); ALTER keeps the role equal to the file.
  "$PG" psql -XAtq -v ON_ERROR_STOP=1 >/dev/null <<SQL
\set password '$password'
SELECT 'CREATE ROLE lrun' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lrun') \gexec
ALTER ROLE lrun LOGIN CREATEDB PASSWORD :'password';
-- DROP DATABASE ... WITH (FORCE) of a test database must be able to end an autovacuum worker in it.
GRANT pg_signal_backend TO lrun;
SELECT 'CREATE DATABASE lrun_test OWNER lrun' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'lrun_test') \gexec
SQL
  url=${url/PASSWORD/$password}
  if ! pg_answers "$url"; then
    log "PostgreSQL on 127.0.0.1:$LRUN_POSTGRES_PORT refuses the lrun login; its log: $LRUN_POSTGRES_DIR/server.log"
    exit 1
  fi
  log "PostgreSQL is up on 127.0.0.1:$LRUN_POSTGRES_PORT"
  echo "$url"
}

main() {
  mkdir -p "$CACHE_DIR"
  install_packages
  tls_material
  start_engine "$ENGINE1_SOCK" engine1
  start_engine "$ENGINE2_SOCK" engine2
  local bb py pycur sock
  bb=$(busybox_rootfs)
  py=$(python_rootfs)
  pycur=$(python_current_rootfs "$py")
  for sock in "$ENGINE1_SOCK" "$ENGINE2_SOCK"; do
    build_image "$sock" "$BUSYBOX_IMAGE" "$bb"
    build_image "$sock" "$PYTHON_IMAGE" "$py"
    build_image "$sock" "$PYTHON_CURRENT_IMAGE" "$pycur"
  done
  local pg_url
  pg_url=$(start_postgres)
  LRUN_SSHD_DOCKER_HOST=unix://$ENGINE1_SOCK "$SSHD" start >&2
  local reapi_exports reapi_url
  reapi_exports=$(LRUN_CACHE_DIR=$CACHE_DIR "$BUILDGRID" start)  # after PostgreSQL: its scheduler lives there
  reapi_url=${reapi_exports#export LRUN_TEST_REAPI=}
  log "ready: engines $ENGINE1_SOCK $ENGINE2_SOCK, images $BUSYBOX_IMAGE $PYTHON_IMAGE $PYTHON_CURRENT_IMAGE, PostgreSQL 127.0.0.1:$LRUN_POSTGRES_PORT, sshd 127.0.0.1:$LRUN_SSHD_PORT, BuildGrid ${reapi_url%% *}"
  echo "export LRUN_TEST_ENGINES=unix://$ENGINE1_SOCK,unix://$ENGINE2_SOCK"
  echo "export LRUN_TEST_TLS_ENGINE=tcp://$ENGINE2_TLS LRUN_TEST_TLS_DIR=$CACHE_DIR/tls"
  echo "export LRUN_TEST_POSTGRES=$pg_url LRUN_POSTGRES_DIR=$LRUN_POSTGRES_DIR LRUN_POSTGRES_PORT=$LRUN_POSTGRES_PORT"
  echo "export LRUN_TEST_SSH_HOST=ssh://root@127.0.0.1:$LRUN_SSHD_PORT LRUN_TEST_SSH_DIR=$LRUN_SSHD_DIR/client"
  echo "$reapi_exports"
}

main "$@"
