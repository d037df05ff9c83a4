#!/usr/bin/env bash
# Download every wheel the images install (rlyard[all] and the build backend) into the wheelhouse
# .docker-cache/wheels, for builds that reach no index: Linux x86-64, CPython 3.11, binary wheels
# only. torch comes as the CPU build (this machine's pip resolves torch==2.13.0 to 2.13.0+cpu; on
# another, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu). Skipped while
# pyproject.toml is unchanged since the last download.
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a PIP <<< "${PIP:-pip}"
WHEELS=${RLYARD_DOCKER_CACHE:-.docker-cache}/wheels
STAMP=$WHEELS/.pyproject.sha256
# the requirements and this script (what it downloads) make the wheelhouse
sum=$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$sum" ]]; then
  echo "wheelhouse $WHEELS is current ($(find "$WHEELS" -name '*.whl' | wc -l) wheels)"; exit 0
fi
mkdir -p "$WHEELS"
# async-timeout: redis (the workers extra) needs it on Python < 3.11.3, such as the offline base's
# Debian 3.11.2, and pip evaluates that marker with this interpreter's version, not --python-version's
"${PIP[@]}" download ".[all]" "setuptools==80.9.0" "wheel" "async-timeout==5.0.1" -d "$WHEELS" --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64
if find "$WHEELS" -name 'nvidia_*' -o -name 'torch-*' ! -name '*+cpu*' | grep -q .; then
  echo "the wheelhouse holds a CUDA build of torch or nvidia wheels; point pip at the CPU index" >&2; exit 1
fi
echo "$sum" > "$STAMP"
