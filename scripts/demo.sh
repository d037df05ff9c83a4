#!/usr/bin/env bash
# The main job: set-up (.venv, pinned deps), then the embedded demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec rlyard demo "$@"
