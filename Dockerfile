# syntax=docker/dockerfile:1
# The openai-runtime image: one console script, `openai-runtime`, that runs the
# sidecar (the default command) or the operator (`openai-runtime operator ...`).
#
#   docker build -t ghcr.io/atomr/openai-runtime:0.1.0 .       (or --target runtime)
#   docker build --target demo -t ghcr.io/atomr/openai-runtime-demo:0.1.0 .
#
# Stages: `build` makes wheels for the project and all its dependencies;
# `runtime`, the last stage and so the default target, installs them from those
# wheels (no index, no compiler) into a virtual environment and runs as an
# unprivileged user. `demo`, built only when asked for (--target demo), is the
# demo app of examples/demo-app.yaml: the OpenAI SDK and examples/demo_app.py.

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
RUN pip wheel --wheel-dir /wheels /src

# The demo app (examples/demo_app.py): only the official OpenAI SDK, no
# openai-runtime code. It stays before the runtime stage, which must remain the
# last one: `docker build .` without --target yields the runtime image.
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

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/openai-runtime/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# The wheels are bind-mounted, not copied: they never become a layer. pip is
# removed from the venv afterwards; nothing installs at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/openai-runtime \
    && /opt/openai-runtime/bin/pip install --no-index --find-links=/wheels openai-runtime \
    && /opt/openai-runtime/bin/pip uninstall --yes pip \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
# sidecar API (loopback only, documented), sidecar admin, operator metrics,
# operator liveness, admission webhook.
EXPOSE 8787 9464 9465 8080 9443
ENTRYPOINT ["openai-runtime"]
CMD ["sidecar", "--config", "/etc/openai-runtime/config.yaml"]
