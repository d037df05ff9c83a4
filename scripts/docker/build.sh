#!/usr/bin/env bash
# Build the images of the service table on a machine that reaches no image registry and no index
# (like this one): the offline base (scripts/docker/base.sh), the wheelhouse
# (scripts/docker/wheelhouse.sh), then one `docker build` per image, its wheels served to the
# build on loopback (WHEELS_URL; the build runs on the host network).
#   bash scripts/docker/build.sh               # every image (`rlyard deploy images`, and the backing
#                                              # stores' offline images: `rlyard deploy images --backing`)
#   bash scripts/docker/build.sh sql trainer   # only these entries of the table's images
#   bash scripts/docker/build.sh redis         # only the redis backing store's (scripts/docker/Dockerfile.redis)
# Where the public registry and index are reachable, `docker compose build` needs none of this.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PYTHON=${PYTHON:-python3}
BASE=${RLYARD_BASE_IMAGE:-rlyard-base:bookworm}
WHEELS=${RLYARD_DOCKER_CACHE:-.docker-cache}/wheels
RLYARD_BASE_IMAGE=$BASE bash scripts/docker/base.sh
PIP=${PIP:-$PYTHON -m pip} bash scripts/docker/wheelhouse.sh

# a fixed port: WHEELS_URL is part of the install step's cache key, so a new port would rebuild it
port=${RLYARD_WHEELS_PORT:-38765}
if "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
  echo "port $port is in use: set RLYARD_WHEELS_PORT to a free one (it becomes part of the build cache key)" >&2
  exit 1
fi
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done

wanted=" $* "
"$PYTHON" -m rlyard_app.cli.main deploy images | while read -r ref extras; do
  name=${ref%:*}; name=${name##*/}; name=${name#rlyard-}
  if [[ $# -gt 0 && "$wanted" != *" $name "* ]]; then continue; fi
  echo "== $ref (extras: $extras)"
  start=$(date +%s)
  docker build --network host --build-arg BASE_IMAGE="$BASE" --build-arg EXTRAS="$extras" \
    --build-arg WHEELS_URL="http://127.0.0.1:$port/" -t "$ref" .
  echo "== $ref built in $(( $(date +%s) - start )) s"
done

# the backing stores with an offline Dockerfile (the workers' Redis): Debian packages on the same base,
# from the mirror the base's apt sources name; Compose runs them with RLYARD_<STORE>_IMAGE=<ref>
"$PYTHON" -m rlyard_app.cli.main deploy images --backing | while read -r ref dockerfile store; do
  if [[ $# -gt 0 && "$wanted" != *" $store "* ]]; then continue; fi
  echo "== $ref ($dockerfile)"
  start=$(date +%s)
  docker build --network host --build-arg BASE_IMAGE="$BASE" -f "$dockerfile" -t "$ref" scripts/docker
  echo "== $ref built in $(( $(date +%s) - start )) s; run it with RLYARD_$(echo "$store" | tr 'a-z-' 'A-Z_')_IMAGE=$ref"
done
