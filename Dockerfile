# The rlyard services images: one Dockerfile, one image per set of extras (EXTRAS), so that the
# SQL tool server carries only its own dependencies and no torch. configs/services.yaml names the
# images (images:), and docker-compose.yml and k8s/ (both generated from it) start `rlyard serve
# <kind>` in them with the service's RLYARD_* environment, exactly as `rlyard up` does.
#
# Anywhere:  docker build --build-arg EXTRAS=sql -t rlyard-sql:0.1.0 .
#            (the public python image, PyPI, and PyTorch's CPU index for torch)
# Offline:   bash scripts/docker/build.sh  (a debootstrapped base and a local wheelhouse; see
#            docs/deployment.md)
# Large indexes (the POI corpus's BM25 and dense indexes) are never built here: the services
# build them at first start into a volume, NOT_SERVING until they are loaded.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

# the optional dependencies of pyproject.toml to install (comma-separated: sql, poi, reward, ...)
ARG EXTRAS=sql
# the wheel source: an index (PIP_INDEX_URL; PyTorch's CPU index as the extra one, so torch is never
# a CUDA build), or, when WHEELS_URL is set, only that wheelhouse (pip --no-index --find-links)
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LANG=C.UTF-8 \
    HF_HUB_OFFLINE=1 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The non-root user the containers run as (k8s/ sets runAsUser to the same id).
RUN groupadd --system --gid 10001 rlyard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rlyard

# The dependencies, in a layer of their own: it changes only with pyproject.toml or EXTRAS.
COPY pyproject.toml scripts/docker/requirements.py /tmp/deps/
# every requirement is pinned in pyproject.toml; pip comes with the venv
# hadolint ignore=DL3013,DL3042
RUN python3 -m venv /opt/venv \
 && python3 /tmp/deps/requirements.py /tmp/deps/pyproject.toml "${EXTRAS}" > /tmp/deps/requirements.txt \
 && pip install ${WHEELS_URL:+--no-index --find-links "$WHEELS_URL"} -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps

WORKDIR /app
# The repository minus .dockerignore: the code, configs/ and data/ (the table's relative paths,
# e.g. RLYARD_TOOLS_SQL_DB_DIR=data/spider/database, resolve here). The project is installed
# editable, so the `rlyard` command and `python -m` both run this copy and rlyard.paths.ROOT is /app.
COPY . .
# hadolint ignore=DL3042
RUN pip install ${WHEELS_URL:+--no-index --find-links "$WHEELS_URL"} --no-deps -e . \
 && rm -rf build ./*.egg-info \
 && mkdir -p data/generated/poi runs/models \
 && chown 10001:10001 data/generated/poi runs/models

# data/generated/poi and runs/models belong to the user above: a named volume mounted there starts
# with that owner. The POI services write their corpus indexes into the first at first start; the
# trainer writes the base checkpoint and the weights it publishes for the sampler into the second.
USER 10001:10001
# caches of matplotlib (the trainer's curves) in the writable /tmp; the user has no home
ENV MPLCONFIGDIR=/tmp/matplotlib

# Defaults for a bare `docker run` of the CMD below (the sql-tools entry of the
# table); Compose and Kubernetes set every variable of the service explicitly.
ENV RLYARD_HOST=0.0.0.0 \
    RLYARD_PORT=50051 \
    RLYARD_METRICS_PORT=9101
EXPOSE 50051 9101
CMD ["rlyard", "serve", "tools"]
