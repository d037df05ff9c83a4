#!/usr/bin/env bash
# The test command: set-up (.venv, pinned deps), lint, type check, the layers, the test suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m slow`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
echo "==> ruff"
ruff check .
echo "==> mypy"
mypy
echo "==> import-linter (the layers, docs/architecture.md)"
lint-imports --no-cache
echo "==> pytest"
pytest "$@"
