# syntax=docker/dockerfile:1
# Two openai-runtime images from one file, both running the console script
# `openai-runtime`:
#
#   docker build -t ghcr.io/atomr/openai-runtime-sidecar:0.1.0 .     (or --target sidecar)
#   docker build --target operator -t ghcr.io/atomr/openai-runtime-operator:0.1.0 .
#   docker build --target demo -t ghcr.io/atomr/openai-runtime-demo:0.1.0 .
#
# `sidecar`, the last stage and so what `docker build .` yields, is the image
# injected into every opted-in pod: `openai-runtime` without the operator's
# dependencies (kopf, kubernetes, cryptography), which it never imports; its
# default command serves the sidecar. `operator` installs
# `openai-runtime[operator]` for the operator Deployment (deploy/ and the chart
# run `openai-runtime operator ...` in it). `demo` is the demo app of
# examples/demo-app.yaml: the OpenAI SDK and examples/demo_app.py.
#
# `build` makes wheels for the project and every dependency of both images;
# `sidecar` and `operator` install from them (no index, no compiler) into a
# virtual environment and run as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the distribution is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY operator/ operator/
# `pip wheel` (the script, not `python -m`) from another directory: the source
# tree holds a folder named `operator`, which must never shadow the stdlib module.
WORKDIR /
# With the extra: the wheels serve both images.
RUN pip wheel --wheel-dir /wheels "/src[operator]"

# The demo app (examples/demo_app.py): only the official OpenAI SDK, no
# openai-runtime code. It stays before the sidecar stage, which must remain the
# last one: `docker build .` without --target yields the sidecar image.
FROM ${PYTHON_IMAGE} AS demo
ENV PATH=/opt/openai-demo/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/openai-demo \
    && /opt/openai-demo/bin/pip install "openai>=1.40,<4" \
    && /opt/openai-demo/bin/pip uninstall --yes pip \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
COPY examples/demo_app.py /app/demo_app.py
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "/app/demo_app.py"]

# What both images share: the environment and the unprivileged user.
FROM ${PYTHON_IMAGE} AS base
ENV PATH=/opt/openai-runtime/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
WORKDIR /tmp

# The operator Deployment's image: openai-runtime with the operator extra.
FROM base AS operator
# The wheels are bind-mounted, not copied: they never become a layer. pip is
# removed from the venv afterwards; nothing installs at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/openai-runtime \
    && /opt/openai-runtime/bin/pip install --no-index --find-links=/wheels "openai-runtime[operator]" \
    && /opt/openai-runtime/bin/pip uninstall --yes pip
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# Operator metrics, operator liveness, admission webhook.
EXPOSE 9465 8080 9443
ENTRYPOINT ["openai-runtime"]
CMD ["operator"]

# The injected sidecar's image: openai-runtime alone, no operator extra.
FROM base AS sidecar
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/openai-runtime \
    && /opt/openai-runtime/bin/pip install --no-index --find-links=/wheels openai-runtime \
    && /opt/openai-runtime/bin/pip uninstall --yes pip
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# Sidecar API (loopback only, documented), sidecar admin.
EXPOSE 8787 9464
ENTRYPOINT ["openai-runtime"]
CMD ["sidecar", "--config", "/etc/openai-runtime/config.yaml"]
