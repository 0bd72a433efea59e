# syntax=docker/dockerfile:1
# One image for both services: `chat-service` (default) or `history-service` (the chart sets the command).
# The base is pinned by tag only: no registry is reachable where this file was written, so no digest could be
# read. Pin it yourself with `docker buildx imagetools inspect python:3.11-slim-bookworm` and append @sha256:….
# Any Debian 12 image with `python` 3.11 and its venv module will do: without a registry, the kind e2e passes
# --build-arg PYTHON_IMAGE=local/python-base:3.11-bookworm, a debootstrapped root (tests/e2e/kind/offline/).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Ref: https://docs.python.org/3/using/cmdline.html#envvar-PYTHONDONTWRITEBYTECODE
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer, from the same hashed lock as `make` (scripts/lock.sh writes it from
# pyproject.toml), so that a code change does not reinstall them and every build gets the same versions.
# (All dependencies ship manylinux wheels: plyvel bundles leveldb; no compiler needed.)
COPY requirements/runtime.txt ./requirements/
RUN pip install --no-compile --require-hashes --requirement requirements/runtime.txt

# Then the project itself, without re-resolving dependencies.
# pyproject.toml names README.md as the long description (the * keeps the build going while it is absent).
COPY pyproject.toml README.md* ./
COPY services ./services
RUN pip install --no-compile --no-deps . \
    && python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="durable-chat" \
      org.opencontainers.image.description="Chat replicas and the durable history service over RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/durable-chat"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LOG_FORMAT=json \
    HISTORY_DATA_DIR=/data/history
# A numeric system user, so that the kubelet can check runAsNonRoot; /data is the history volume.
RUN groupadd --system --gid 999 app \
    && useradd --system --uid 999 --gid 999 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown 999:999 /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /data
USER 999:999
EXPOSE 8000 8001 9000 9001
CMD ["chat-service"]
