#!/usr/bin/env bash
# The README's two commands:
#   bash infra/run.sh main   [--config FILE] [--set key=value ...]   # the whole pipeline, offline
#   bash infra/run.sh test   [pytest args ...]                       # ruff, then the test suite
# Each creates (or reuses) the virtual environment it needs in .venv by itself.
#
# GPU machines: pick the CUDA build of torch before the first run, e.g.
#   BZPIPE_TORCH="torch==2.13.0" BZPIPE_TORCH_INDEX_URL=<PyTorch CUDA wheel index for your CUDA> bash infra/run.sh main
# The default installs the CPU wheel torch==2.13.0 first, so the dependency
# resolution of the rest never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
VENV=${BZPIPE_VENV:-$REPO/.venv}
TORCH_SPEC=${BZPIPE_TORCH:-torch==2.13.0}

pick_python() {
  for p in "${BZPIPE_PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$p"; return 0
    fi
  done
  echo "bzpipe needs Python >= 3.11 (set BZPIPE_PYTHON)" >&2; return 1
}

ensure_env() {
  local stamp want
  want=$( (cat pyproject.toml; echo "$TORCH_SPEC ${BZPIPE_TORCH_INDEX_URL:-}") | sha256sum | cut -c1-64)
  stamp="$VENV/.bzpipe-env"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  echo "[bzpipe] preparing the environment in $VENV (first run takes a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || "$(pick_python)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if [ -n "${BZPIPE_TORCH_INDEX_URL:-}" ]; then
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" --index-url "$BZPIPE_TORCH_INDEX_URL"
  else
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
}

cmd=${1:-}
shift || true
case "$cmd" in
  main)
    ensure_env
    export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PREFECT_LOGGING_EXTRA_LOGGERS=${PREFECT_LOGGING_EXTRA_LOGGERS:-bzpipe}
    export PREFECT_HOME=${PREFECT_HOME:-$REPO/.prefect} PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
    # the offline demo unless a --config is given (so `main --set key=value` overrides the demo)
    case " $* " in *" --config "* | *" --config="*) ;; *) set -- --config flows/configs/offline-demo.yaml "$@" ;; esac
    exec "$VENV/bin/python" -m flows.pipeline "$@"
    ;;
  test)
    ensure_env
    export PYTHONUNBUFFERED=1 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    # the lint first (pyproject.toml [tool.ruff]): a finding fails the test command
    "$VENV/bin/python" -m ruff check bzpipe flows tests infra || exit 1
    # the suite in parallel: BZPIPE_TEST_WORKERS pytest-xdist workers (default 2), each taking whole test
    # files (pyproject.toml addopts); `-n N` on the command line wins, `-n 0` runs in this one process
    par=(-n "${BZPIPE_TEST_WORKERS:-2}")
    case " $* " in *" -n "* | *" -n"[0-9]* | *" -nauto "* | *" --numprocesses"*) par=() ;; esac
    set +e
    "$VENV/bin/python" -m pytest ${par[@]+"${par[@]}"} "$@"
    rc=$?
    set -e
    exit $rc
    ;;
  *)
    echo "usage: bash infra/run.sh {main|test} [args...]" >&2
    exit 2
    ;;
esac
