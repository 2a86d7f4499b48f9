#!/usr/bin/env bash
# The local Prefect stack on one machine: a Prefect server (SQLite), the process work pool
# `bzpipe-local`, one process worker, and every deployment of prefect.yaml.
#
#   bash infra/stack.sh up       # start server + pool + worker, deploy prefect.yaml (idempotent)
#   bash infra/stack.sh down     # stop exactly what `up` started (pid files), and their children
#   bash infra/stack.sh status   # processes, API health, work pool, deployments
#   bash infra/stack.sh deploy   # (re)deploy prefect.yaml to the running stack
#   bash infra/stack.sh config [FILE [--set key=value ...] | --demo]
#                                # the config every run uses: show it, switch to FILE (validated
#                                # first; sets the Prefect Variable bzpipe_config), or back to the demo
#   eval "$(bash infra/stack.sh env)"   # point this shell's prefect CLI / SDK at the stack
#
# Settings (environment):
#   BZPIPE_STACK_DIR   state folder: Prefect home + SQLite DB, pid files, logs (default .prefect/stack)
#   BZPIPE_STACK_PORT  server port on 127.0.0.1 (default 4200)
#   BZPIPE_STACK_HOST  server bind address (default 127.0.0.1)
#   BZPIPE_PREFECT_FILE  deployment file (default prefect.yaml at the repo root)
#   BZPIPE_WORK_POOL   work pool name (default bzpipe-local; prefect.yaml names bzpipe-local)
#   BZPIPE_POOL_LIMIT  concurrent flow runs in the pool (default 4)
#   BZPIPE_VENV        virtual environment (default .venv; created by infra/run.sh when missing)
#   BZPIPE_STACK_TIMEOUT  seconds to wait for the server to answer (default 180)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
VENV=${BZPIPE_VENV:-$REPO/.venv}
STACK_DIR=${BZPIPE_STACK_DIR:-$REPO/.prefect/stack}
HOST=${BZPIPE_STACK_HOST:-127.0.0.1}
PORT=${BZPIPE_STACK_PORT:-4200}
POOL=${BZPIPE_WORK_POOL:-bzpipe-local}
POOL_LIMIT=${BZPIPE_POOL_LIMIT:-4}
PREFECT_FILE=${BZPIPE_PREFECT_FILE:-$REPO/prefect.yaml}
TIMEOUT=${BZPIPE_STACK_TIMEOUT:-180}
PIDS=$STACK_DIR/pids
LOGS=$STACK_DIR/logs
# the API is reached on loopback even when the server binds 0.0.0.0
API_HOST=$HOST
[ "$API_HOST" = "0.0.0.0" ] && API_HOST=127.0.0.1
API_URL="http://$API_HOST:$PORT/api"

say() { echo "[stack] $*" >&2; }
die() { echo "[stack] error: $*" >&2; exit 1; }

stack_env() {
  # Everything a process of the stack (and a user's shell) needs to talk to this server.
  export PREFECT_HOME="$STACK_DIR/home"
  export PREFECT_API_URL="$API_URL"
  export PREFECT_UI_API_URL="$API_URL"
  export PREFECT_SERVER_API_HOST="$HOST"
  export PREFECT_SERVER_API_PORT="$PORT"
  export PREFECT_SERVER_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$STACK_DIR/home/prefect.db"
  unset PREFECT_API_DATABASE_CONNECTION_URL   # an older alias that could point elsewhere
  export PREFECT_LOGGING_EXTRA_LOGGERS="${PREFECT_LOGGING_EXTRA_LOGGERS:-bzpipe}"
  export PREFECT_SERVER_ANALYTICS_ENABLED=false
  # SQLite on a small, busy machine: give statements and connections time before the server
  # answers 503 (clients retry those, but a longer wait makes fewer of them).
  export PREFECT_SERVER_DATABASE_TIMEOUT="${PREFECT_SERVER_DATABASE_TIMEOUT:-30}"
  export PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT="${PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT:-15}"
  export BZPIPE_REPO="$REPO"
  export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
}

ensure_venv() {
  if [ ! -x "$VENV/bin/prefect" ]; then
    say "no environment at $VENV yet: preparing it with infra/run.sh (first time: a few minutes)"
    BZPIPE_VENV="$VENV" bash "$REPO/infra/run.sh" test --version >/dev/null
  fi
  [ -x "$VENV/bin/prefect" ] || die "$VENV/bin/prefect not found"
  PREFECT=("$VENV/bin/prefect" --no-prompt)
  PY="$VENV/bin/python"
}

# --------------------------------------------------------------------------- pid files
# A pid file holds "<pid> <start time>": a pid is only ours while the process that
# owns it started at the recorded time (pids are reused).

start_time() { LC_ALL=C ps -o lstart= -p "$1" 2>/dev/null | tr -s ' ' | sed 's/^ //; s/ $//'; }

our_pid() {  # our_pid NAME -> prints the pid when the recorded process is still alive
  local f="$PIDS/$1.pid" pid recorded
  [ -f "$f" ] || return 1
  read -r pid recorded < "$f" || true
  [ -n "${pid:-}" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(start_time "$pid")" = "$recorded" ] || return 1
  echo "$pid"
}

descendants() {  # all processes below $1 (flow runs of the worker start their own sessions)
  local all kids k
  all=$(ps -A -o pid= -o ppid= 2>/dev/null)
  kids=$(awk -v p="$1" '$2 == p {print $1}' <<<"$all")
  for k in $kids; do
    echo "$k"
    descendants "$k"
  done
}

launch() {  # launch NAME CMD... : start in its own process group, record pid + start time
  local name=$1; shift
  mkdir -p "$PIDS" "$LOGS"
  set -m
  nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  local pid=$!
  set +m
  sleep 0.2
  echo "$pid $(start_time "$pid")" > "$PIDS/$name.pid"
  say "$name started (pid $pid, log $LOGS/$name.log)"
}

stop() {  # stop NAME: TERM the process group and every descendant, KILL what is left after 20 s
  local name=$1 pid procs p i
  if ! pid=$(our_pid "$name"); then
    [ -f "$PIDS/$name.pid" ] && say "$name was not running"
    rm -f "$PIDS/$name.pid"
    return 0
  fi
  procs="$pid $(descendants "$pid" | tr '\n' ' ')"
  say "stopping $name (pids: $procs)"
  # the group leader is ours (started with job control: pgid == pid)
  if [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then
    kill -TERM -- "-$pid" 2>/dev/null || true
  fi
  for p in $procs; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 40); do
    local alive=""
    for p in $procs; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.5
  done
  for p in $procs; do
    if kill -0 "$p" 2>/dev/null; then
      say "  $p did not stop on TERM: KILL"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
  rm -f "$PIDS/$name.pid"
}

# --------------------------------------------------------------------------- server

port_in_use() {
  "$PY" - "$API_HOST" "$PORT" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
sys.exit(0)
EOF
}

wait_healthy() {
  local pid=$1 deadline=$((SECONDS + TIMEOUT))
  while [ $SECONDS -lt $deadline ]; do
    if "$PY" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$API_URL/health', timeout=3).status == 200 else 1)" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$LOGS/server.log" >&2 || true
      die "the Prefect server exited during startup (log above: $LOGS/server.log)"
    fi
    sleep 1
  done
  tail -n 30 "$LOGS/server.log" >&2 || true
  die "the Prefect server did not answer at $API_URL within ${TIMEOUT}s"
}

cmd_deploy() {
  ensure_venv
  stack_env
  [ -f "$PREFECT_FILE" ] || die "no deployment file $PREFECT_FILE"
  say "deploying $PREFECT_FILE"
  "${PREFECT[@]}" deploy --all --prefect-file "$PREFECT_FILE" >"$LOGS/deploy.log" 2>&1 || {
    tail -n 40 "$LOGS/deploy.log" >&2
    die "prefect deploy failed (log: $LOGS/deploy.log)"
  }
  "$PY" "$REPO/infra/stack_summary.py" "$API_URL" deployments >&2 || true
}

cmd_up() {
  ensure_venv
  stack_env
  mkdir -p "$STACK_DIR/home" "$PIDS" "$LOGS"
  trap 'rc=$?; [ $rc -eq 0 ] || say "up failed; what it started keeps running until: bash infra/stack.sh down"' EXIT

  local spid
  if spid=$(our_pid server); then
    say "server already running (pid $spid)"
  else
    if port_in_use; then
      die "port $PORT on $API_HOST is taken by another program; choose one with BZPIPE_STACK_PORT"
    fi
    launch server "${PREFECT[@]}" server start --host "$HOST" --port "$PORT"
    spid=$(our_pid server) || die "the server exited at once (log: $LOGS/server.log)"
  fi
  wait_healthy "$spid"
  say "server healthy at $API_URL"

  "${PREFECT[@]}" work-pool create "$POOL" --type process --overwrite >"$LOGS/pool.log" 2>&1 \
    || { cat "$LOGS/pool.log" >&2; die "could not create work pool $POOL"; }
  "${PREFECT[@]}" work-pool set-concurrency-limit "$POOL" "$POOL_LIMIT" >>"$LOGS/pool.log" 2>&1 \
    || { cat "$LOGS/pool.log" >&2; die "could not limit work pool $POOL"; }
  # queue `gpu` (train, evaluate, pipeline in prefect.yaml): one GPU-bound run at a time
  if ! "${PREFECT[@]}" work-queue create gpu --pool "$POOL" --limit 1 >>"$LOGS/pool.log" 2>&1; then
    "${PREFECT[@]}" work-queue set-concurrency-limit gpu 1 --pool "$POOL" >>"$LOGS/pool.log" 2>&1 \
      || { cat "$LOGS/pool.log" >&2; die "could not create work queue gpu in $POOL"; }
  fi
  say "work pool $POOL (process, at most $POOL_LIMIT flow runs at once; queue gpu: 1)"

  if our_pid worker >/dev/null; then
    say "worker already running (pid $(our_pid worker))"
  else
    launch worker "${PREFECT[@]}" worker start --pool "$POOL" --type process --name "$POOL-worker"
  fi

  cmd_deploy

  cat >&2 <<EOF
[stack] up. Prefect UI: http://$API_HOST:$PORT
[stack]   point a shell at it:   eval "\$(bash infra/stack.sh env)"
[stack]   run the pipeline:      prefect deployment run 'pipeline/pipeline'
[stack]   stop everything:       bash infra/stack.sh down
EOF
}

cmd_down() {
  # the worker first (so it does not pick up new runs, and its flow runs go with it), then the server
  local had_worker=""
  our_pid worker >/dev/null && had_worker=1
  stop worker
  if [ -n "$had_worker" ] && our_pid server >/dev/null && [ -x "$VENV/bin/python" ]; then
    # the runs that were executing would otherwise stay "Running" in the database
    "$VENV/bin/python" "$REPO/infra/stack_summary.py" "$API_URL" mark-stopped "$POOL" >&2 || true
  fi
  stop server
  say "down"
}

cmd_status() {
  local rc=0 name pid
  for name in server worker; do
    if pid=$(our_pid "$name"); then
      say "$name: running (pid $pid)"
    else
      say "$name: not running"; rc=3
    fi
  done
  [ -x "$VENV/bin/python" ] || return $rc
  ensure_venv
  stack_env
  if "$PY" -c "import urllib.request; urllib.request.urlopen('$API_URL/health', timeout=3)" 2>/dev/null; then
    say "API: $API_URL healthy (UI http://$API_HOST:$PORT)"
    "$PY" "$REPO/infra/stack_summary.py" "$API_URL" status >&2 || rc=3
    "$PY" -m flows.config_switch 2>&1 | head -n 1 | sed 's/^/[stack] config: /' >&2 || true
  else
    say "API: $API_URL not answering"; rc=3
  fi
  return $rc
}

cmd_config() {
  ensure_venv
  stack_env
  "$PY" -c "import urllib.request; urllib.request.urlopen('$API_URL/health', timeout=5)" 2>/dev/null \
    || die "no stack answers at $API_URL (bash infra/stack.sh up)"
  "$PY" -m flows.config_switch "$@"
}

cmd_env() {
  stack_env
  cat <<EOF
export PREFECT_HOME="$PREFECT_HOME"
export PREFECT_API_URL="$PREFECT_API_URL"
export PREFECT_LOGGING_EXTRA_LOGGERS="$PREFECT_LOGGING_EXTRA_LOGGERS"
export BZPIPE_REPO="$BZPIPE_REPO"
export PATH="$VENV/bin:\$PATH"
EOF
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  deploy) mkdir -p "$LOGS"; cmd_deploy ;;
  env) cmd_env ;;
  config) shift; cmd_config "$@" ;;
  *) echo "usage: bash infra/stack.sh {up|down|status|deploy|config|env}" >&2; exit 2 ;;
esac
