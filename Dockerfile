# The rlyard services image. docker-compose.yml and k8s/ (both generated from
# configs/services.yaml) start `rlyard serve <kind>` with the service's RLYARD_*
# environment, exactly as `rlyard up` does. EXTRAS picks the optional dependencies
# (pyproject.toml: sql, poi, reward, train); the default, all, runs every service
# kind, and the POI corpus and indexes built below need it.
FROM python:3.11.14-slim-trixie

ARG EXTRAS=all

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The non-root user the containers run as (k8s/ sets runAsUser to the same id).
RUN groupadd --system --gid 10001 rlyard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rlyard

# torch first, from the CPU index, in its own layer: `pip install .` then finds
# torch==2.13.0 installed and never pulls a CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
# The repository minus .dockerignore: the code, configs/ and data/ (the table's
# relative paths, e.g. RLYARD_TOOLS_SQL_DB_DIR=data/spider/database, resolve here).
COPY . .
# the project itself, from this source; every dependency is pinned in pyproject.toml
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${EXTRAS}]" \
 && rm -rf build ./*.egg-info

# The local-life POI corpus (seed 0, 150,000 merchants) and its BM25 and dense (MiniLM + FAISS)
# indexes, built once here so that the search and retrieve services only load them on start
# (the containers' root filesystem is read-only). The model ships in a pip package: no download.
ENV HF_HUB_OFFLINE=1
RUN python -m envs.local_services.poi_corpus --out data/generated/poi \
 && python -m tool_servers.poi --poi-dir data/generated/poi \
 && rm -f data/generated/poi/pois.jsonl

USER 10001:10001

# Defaults for a bare `docker run` of the CMD below (the sql-tools entry of the
# table); Compose and Kubernetes set every variable of the service explicitly.
ENV RLYARD_HOST=0.0.0.0 \
    RLYARD_PORT=50051 \
    RLYARD_METRICS_PORT=9101
EXPOSE 50051 9101
CMD ["rlyard", "serve", "tools"]
