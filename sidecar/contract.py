"""The contract between the operator and the sidecar, in one place.

What the operator writes into pods and ConfigMaps and what the sidecar reads
from them: the ports the sidecar listens on, where its config and its API key are
mounted, which Secret key holds the key by default, and the admin paths that
kubelet probes and the operator's convergence checks call. The operator's
webhook (:mod:`openai_runtime_operator.injecting`), its reconciler and its
convergence checks import these names, and so does the sidecar's config
(:mod:`.config`), so neither side can drift from the other.

It imports nothing, so the operator reads it without loading the sidecar's
server (aiohttp) and a test or tool reads it without pydantic or kopf. The
manifests under ``deploy/`` and ``charts/`` and the image's default command
repeat some of these values, as YAML cannot import them.
"""

from __future__ import annotations

__all__ = [
    "ADMIN_LISTEN",
    "ADMIN_PORT",
    "API_BASE_URL",
    "API_HOST",
    "API_LISTEN",
    "API_PORT",
    "CONFIG_DIR",
    "CONFIG_FILE",
    "CONFIG_KEY",
    "DEFAULT_KEY_FILE",
    "DEFAULT_SECRET_KEY",
    "FALLBACK_KEY_DIR",
    "HEALTHZ_PATH",
    "KEY_DIR",
    "READYZ_PATH",
    "STATUS_PATH",
    "fallback_key_file",
    "key_file",
]

API_PORT = 8787
"""The OpenAI-compatible API, on loopback: apps in the pod reach it, nothing else does."""
API_HOST = "127.0.0.1"
API_LISTEN = f"{API_HOST}:{API_PORT}"
"""The sidecar's default API listen address."""
API_BASE_URL = f"http://{API_HOST}:{API_PORT}/v1"
"""What the webhook sets as the app's ``OPENAI_BASE_URL``."""

ADMIN_PORT = 9464
"""The admin listener, on the pod network: kubelet probes, Prometheus, convergence checks."""
ADMIN_LISTEN = f"0.0.0.0:{ADMIN_PORT}"
"""The sidecar's default admin listen address."""
HEALTHZ_PATH = "/healthz"
"""Liveness (and the startup probe): the process is alive."""
READYZ_PATH = "/readyz"
"""Readiness: a config is loaded and a key is present."""
STATUS_PATH = "/status"
"""JSON whose ``credential.fingerprint`` the operator compares after a rotation."""

CONFIG_DIR = "/etc/openai-runtime"
"""Where the runtime's ConfigMap is mounted in the sidecar."""
CONFIG_KEY = "config.yaml"
"""The ConfigMap's data key, hence the file name under :data:`CONFIG_DIR`."""
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
"""The sidecar's ``--config``."""

KEY_DIR = "/var/run/secrets/openai-runtime"
"""Where the key's Secret is mounted: the whole volume, never ``subPath``, so rotations reach it."""
DEFAULT_SECRET_KEY = "api-key"
"""The Secret data key holding the API key when a runtime names none."""


def key_file(secret_key: str = DEFAULT_SECRET_KEY) -> str:
    """The file under :data:`KEY_DIR` that holds the Secret's ``secret_key``."""
    return f"{KEY_DIR}/{secret_key}"


DEFAULT_KEY_FILE = key_file()
"""Where the sidecar reads the key when its config names no other source."""

FALLBACK_KEY_DIR = "/var/run/secrets/openai-runtime-fallbacks"
"""Where each fallback's Secret is mounted, one directory per fallback (by its name)."""


def fallback_key_file(name: str, secret_key: str = DEFAULT_SECRET_KEY) -> str:
    """The file holding fallback ``name``'s key: its Secret's ``secret_key``."""
    return f"{FALLBACK_KEY_DIR}/{name}/{secret_key}"
