# syntax=docker/dockerfile:1
# The Trapline worker image: `trapline serve` (and run, submit) with ONNX Runtime, Ray, Kafka and
# S3 (s3fs). Triton is a separate image (docker/README.md). Build from the repository root:
#
#   docker build -f docker/worker.Dockerfile -t registry.example.com/trapline/worker:0.1.0 .
#
# BASE is any Debian-based image with Python 3.10-3.13: the official python:3.X-slim, or a local
# Debian base with only python3 (how it is built on machines without a registry: docker/README.md).
ARG BASE=python:3.11-slim

# ---------------------------------------------------------------- build: a venv with the project
FROM ${BASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Optional, for a private index or a TLS-intercepting proxy (pip reads them from the environment):
#   --build-arg PIP_INDEX_URL=https://pypi.example.org/simple --build-arg PIP_CERT=/path/in/build/ca.pem
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# tini (static) becomes PID 1 of the final image: it forwards SIGTERM (the drain) and reaps the
# processes Ray leaves behind. A bare Debian python3 has no venv module: fetch it too, here, in
# the stage that is thrown away.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends tini \
    && if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get install -y -qq --no-install-recommends python3-venv python3-pip; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/trapline
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trapline/ trapline/
COPY pipelines/ pipelines/
COPY services/ services/
COPY models/ models/
# The project (the demo models in models/demo/ are package data) and s3fs for s3:// URLs; then
# the installers go: the final image needs neither pip nor setuptools.
RUN /opt/trapline/bin/pip install --no-compile . "s3fs>=2024.2" \
    && /opt/trapline/bin/python -m compileall -q /opt/trapline/lib \
    && /opt/trapline/bin/pip uninstall -y -q pip setuptools \
    && /opt/trapline/bin/trapline --help > /dev/null

# ---------------------------------------------------------------- runtime: no compilers, no pip
FROM ${BASE}
LABEL org.opencontainers.image.title="trapline-worker" \
      org.opencontainers.image.description="Trapline ingest worker: Kafka upload events -> detector + classifier -> Parquet tables" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user: the Helm chart runs as 10001 with runAsNonRoot and a read-only root.
RUN groupadd --system --gid 10001 trapline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin trapline
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/trapline /opt/trapline
ENV PATH=/opt/trapline/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=disabled \
    RAY_USAGE_STATS_ENABLED=0
USER 10001:10001
WORKDIR /tmp
# /metrics, /healthz, /readyz of worker i on 9400 + i (TRAPLINE_METRICS_PORT).
EXPOSE 9400
ENTRYPOINT ["/usr/bin/tini", "--", "trapline"]
CMD ["serve", "--help"]
