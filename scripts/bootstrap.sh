#!/usr/bin/env bash
# Creates or refreshes .venv/ with the pinned dependencies; safe to run again.
# Sourced by scripts/demo.sh and scripts/test.sh. Needs Python 3.11 (the CPU torch
# wheel on these machines is built for it) and the package registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${RLYARD_PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "rlyard needs Python 3.11 (set RLYARD_PYTHON to its path)" >&2
  exit 1
fi

# The memory service's tests start a throwaway PostgreSQL cluster from the machine's packages
# (tests/memory_service/conftest.py); a fresh CI machine (Debian/Ubuntu, root) gets them here.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing PostgreSQL (apt-get install postgresql)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "warning: PostgreSQL is not installed and cannot be installed here (needs root and apt-get);" \
         "the memory service's PostgreSQL tests will fail until it is" >&2
  fi
fi

# The Celery workers' tests start a throwaway redis-server from the machine's packages
# (tests/trainer/workers/conftest.py); a fresh CI machine (Debian/Ubuntu, root) gets it here.
if ! command -v redis-server >/dev/null 2>&1; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Redis (apt-get install redis-server)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "warning: redis-server is not installed and cannot be installed here (needs root and apt-get);" \
         "the Celery workers' tests will fail until it is" >&2
  fi
fi

STAMP=".venv/.rlyard-install-stamp"
WANT="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "==> installing rlyard and its pinned dependencies into .venv (first run: about a minute)"
  .venv/bin/python -m pip install --quiet --upgrade "pip==25.3" 2>/dev/null || true
  # torch is pinned to 2.13.0 (the CPU wheel on disk); never let a resolver pick another.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[all,dev]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# MKL's float results otherwise depend on how buffers happen to be aligned, so a run resumed after a
# kill could differ from an uninterrupted one in the 6th digit (docs/trainer.md, "Exact resume").
export MKL_CBWR="${MKL_CBWR:-AUTO,STRICT}"
