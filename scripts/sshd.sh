#!/usr/bin/env bash
# Control the OpenSSH server of pytest-lrun's test suite: sshd.sh {start|stop|restart|status}.
#
# The server is the test suite's own, apart from any system sshd: Debian's
# /usr/sbin/sshd run with its own config file, listening on
# 127.0.0.1:$LRUN_SSHD_PORT (default 2222), with its state under
# $LRUN_SSHD_DIR (default /var/lib/lrun-sshd):
#
#   sshd_config          the config (rewritten at every start; a change restarts the server)
#   host_ed25519_key     the server's host key, made once
#   authorized_keys      the client key below, the only key it accepts (root, public key only)
#   client/id_ed25519    the client key, made once (the tests' IdentityFile)
#   client/known_hosts   the host key's line for [127.0.0.1]:PORT (the tests' known hosts)
#   sshd.pid, sshd.log   the running server's pid and its log
#   sshd.lock            held while starting or stopping (flock)
#
# A login runs its command with DOCKER_HOST=$LRUN_SSHD_DOCKER_HOST (default
# unix:///var/run/docker.sock, sshd's SetEnv), so the Docker SDK's
# `docker system dial-stdio` over this server reaches that engine: an
# ssh://root@127.0.0.1:PORT machine is the local engine, reached over ssh.
#
#   start    make the keys and config, start the server unless it runs with this config;
#            returns once a login with the client key reaches the engine
#   stop     stop the server; returns once it is gone
#   restart  stop, then start
#   status   exit 0 when the server runs, 3 when it does not
#
# Progress goes to stderr. Needs root (sshd binds and changes users as root).
set -euo pipefail

ROOT=${LRUN_SSHD_DIR:-/var/lib/lrun-sshd}
PORT=${LRUN_SSHD_PORT:-2222}
DOCKER_HOST_FOR_LOGINS=${LRUN_SSHD_DOCKER_HOST:-unix:///var/run/docker.sock}
CONFIG=$ROOT/sshd_config
PIDFILE=$ROOT/sshd.pid
LOG=$ROOT/sshd.log
CLIENT=$ROOT/client

log() { printf 'sshd.sh: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "$1 needs root"
    exit 1
  fi
}

# running: the pid file names a live sshd (an exited one may linger as a zombie until reaped).
running() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ] \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

status() { running || return 3; }

# keys: the host key, the client key, authorized_keys and known_hosts, each made once or kept up to date.
keys() {
  mkdir -p "$ROOT" "$CLIENT"
  # sshd's StrictModes refuses an authorized_keys whose folders others may write.
  chmod 700 "$ROOT" "$CLIENT"
  if [ ! -s "$ROOT/host_ed25519_key" ]; then
    log "making the host key"
    rm -f "$ROOT/host_ed25519_key.tmp" "$ROOT/host_ed25519_key.tmp.pub"
    ssh-keygen -q -t ed25519 -N '' -C lrun-sshd-host -f "$ROOT/host_ed25519_key.tmp"
    mv "$ROOT/host_ed25519_key.tmp.pub" "$ROOT/host_ed25519_key.pub"
    mv "$ROOT/host_ed25519_key.tmp" "$ROOT/host_ed25519_key"  # last: its presence says the pair is complete
  fi
  if [ ! -s "$CLIENT/id_ed25519" ]; then
    log "making the client key"
    rm -f "$CLIENT/id_ed25519.tmp" "$CLIENT/id_ed25519.tmp.pub"
    ssh-keygen -q -t ed25519 -N '' -C lrun-test-client -f "$CLIENT/id_ed25519.tmp"
    mv "$CLIENT/id_ed25519.tmp.pub" "$CLIENT/id_ed25519.pub"
    mv "$CLIENT/id_ed25519.tmp" "$CLIENT/id_ed25519"
  fi
  # restrict: the key logs in to run a command (dial-stdio), nothing else: no forwarding, no pty.
  printf 'restrict %s\n' "$(cat "$CLIENT/id_ed25519.pub")" >"$ROOT/authorized_keys"
  chmod 600 "$ROOT/authorized_keys"
  # The port is part of the known_hosts name, so the line follows LRUN_SSHD_PORT.
  printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$ROOT/host_ed25519_key.pub")" >"$CLIENT/known_hosts"
}

write_config() {
  cat >"$CONFIG.new" <<EOF
# Written by scripts/sshd.sh: pytest-lrun's test sshd, not the system's.
ListenAddress 127.0.0.1
Port $PORT
HostKey $ROOT/host_ed25519_key
PidFile $PIDFILE
AuthorizedKeysFile $ROOT/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM no
StrictModes yes
SetEnv DOCKER_HOST=$DOCKER_HOST_FOR_LOGINS
LogLevel VERBOSE
EOF
}

# login_works: the client key logs in and the command of a login reaches the engine.
login_works() {
  timeout 20 ssh -F /dev/null -i "$CLIENT/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$CLIENT/known_hosts" -o ConnectTimeout=5 \
    -p "$PORT" root@127.0.0.1 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

stop() {
  local pid i
  running || return 0
  pid=$(cat "$PIDFILE")
  log "stopping sshd (pid $pid) on 127.0.0.1:$PORT"
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    running || return 0
    sleep 0.1
  done
  log "sshd (pid $pid) did not stop within 5 s"
  exit 1
}

start() {
  if ! command -v /usr/sbin/sshd >/dev/null 2>&1; then
    log "no /usr/sbin/sshd (Debian package openssh-server; scripts/provision.sh installs it)"
    exit 1
  fi
  keys
  write_config
  if running && cmp -s "$CONFIG" "$CONFIG.new"; then
    rm -f "$CONFIG.new"
    if login_works; then
      return
    fi
    log "sshd runs but a login does not reach the engine: restarting it"
  fi
  stop
  mv "$CONFIG.new" "$CONFIG"
  mkdir -p /run/sshd  # sshd's privilege separation folder (Debian's service makes it; no service here)
  /usr/sbin/sshd -t -f "$CONFIG" || { log "sshd refuses $CONFIG"; exit 1; }
  log "starting sshd on 127.0.0.1:$PORT (log: $LOG)"
  /usr/sbin/sshd -f "$CONFIG" -E "$LOG"
  local i
  for i in $(seq 1 50); do
    if running && login_works; then
      return
    fi
    sleep 0.2
  done
  log "no login through sshd on 127.0.0.1:$PORT reached the engine at $DOCKER_HOST_FOR_LOGINS; its log follows"
  tail -n 20 "$LOG" >&2 || true
  exit 1
}

# serialized: provision.sh runs from several shells at once, and two starts would race for the port.
locked() {
  need_root "$1 sshd"
  mkdir -p "$ROOT"
  exec 9>"$ROOT/sshd.lock"
  flock 9
}

case ${1:-} in
  start) locked starting && start ;;
  stop) locked stopping && stop ;;
  restart) locked restarting && stop && start ;;
  status) status ;;
  *)
    echo "usage: $0 {start|stop|restart|status}" >&2
    exit 2
    ;;
esac
