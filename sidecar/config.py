"""The sidecar's config contract: what the operator renders and humans may write.

A :class:`SidecarConfig` is the runner's :class:`~.runner.OpenAiConfig` plus
what only a server needs: which runtime it serves, where it listens, which
models apps may ask for, request limits, how often files are re-read, and how
long a shutdown may drain. The operator imports this module (never the
other way round) and renders it into the ConfigMap the sidecar mounts. The
default listen addresses and key file are the operator's too, so they come
from :mod:`.contract`.

Environment overrides (for the key reference only, so a Deployment can point
the sidecar at a differently mounted Secret without editing the ConfigMap):
``OPENAI_RUNTIME_API_KEY_FILE`` and ``OPENAI_RUNTIME_API_KEY_ENV``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from .configfile import ConfigError, describe_validation_error, load_document
from .contract import ADMIN_LISTEN, API_LISTEN, DEFAULT_KEY_FILE
from .runner.config import OpenAiConfig, SecretRef
from .runner.durations import Duration
from .runner.modeling import After, ConfigModel, Field, ValidationError

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_API_LISTEN",
    "DEFAULT_KEY_FILE",
    "ConnectionSettings",
    "LimitSettings",
    "ListenSettings",
    "ListenerLimits",
    "ModelSettings",
    "RuntimeRef",
    "SidecarConfig",
    "WatchSettings",
    "load_sidecar_config",
    "parse_listen",
]

DEFAULT_API_LISTEN = API_LISTEN
DEFAULT_ADMIN_LISTEN = ADMIN_LISTEN
KEY_FILE_ENV = "OPENAI_RUNTIME_API_KEY_FILE"
KEY_ENV_ENV = "OPENAI_RUNTIME_API_KEY_ENV"


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:8787``) as a (host, port) pair."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


class RuntimeRef(ConfigModel):
    """Which OpenAiRuntime this sidecar serves (labels on metrics, spans and logs)."""

    namespace: str = Field(default="default", min_length=1)
    name: str = Field(default="local", min_length=1)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class ModelSettings(ConfigModel):
    """Which models apps may ask for."""

    allow: list[str] = Field(
        default_factory=list, description="Allowed model names; empty allows any."
    )
    default: str | None = Field(default=None, description="Used when a request names no model.")

    def __validate__(self) -> None:
        if self.default is not None and self.allow and self.default not in self.allow:
            raise ValueError(f"default model {self.default!r} is not in 'allow'")

    def resolve(self, requested: Any) -> str | None:
        """The model to use, or ``None`` when the request may not be served."""
        model = requested if isinstance(requested, str) and requested else self.default
        if model is None:
            return None
        if self.allow and model not in self.allow:
            return None
        return model


def _host_port(value: str) -> str:
    parse_listen(value)
    return value


Listen = Annotated[str, After(_host_port)]
"""``host:port``, checked when the config is read rather than when the port is bound."""


class ListenSettings(ConfigModel):
    """Where the two listeners bind."""

    api: Listen = Field(
        default=DEFAULT_API_LISTEN,
        description="OpenAI-compatible API; loopback so nothing outside the pod spends the key.",
    )
    admin: Listen = Field(
        default=DEFAULT_ADMIN_LISTEN, description="/healthz, /readyz, /metrics, /status."
    )


class LimitSettings(ConfigModel):
    """Bounds on what a client may send."""

    max_request_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes (images travel inline); 413 above it.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest upload in bytes (files, upload parts, audio, image edits: streamed "
            "through, never held whole); 413 above it. Default OpenAI's 512 MB file limit."
        ),
    )
    body_timeout: Duration = Field(
        default=30.0,
        description=(
            "Seconds a client may take to send its whole request body once its "
            "headers arrived (uploads: the longest pause between two pieces of it); "
            "408 and the connection closed after it, so a stalled client cannot hold "
            "a connection forever."
        ),
    )


class ListenerLimits(ConfigModel):
    """How long one listener keeps an idle connection and how many it keeps open."""

    idle_timeout: Duration = Field(
        gt=0,
        description=(
            "Seconds a kept-alive connection may wait for its next request (or trickle "
            "one in) before it is closed."
        ),
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Open connections at most; over it a new one replaces the longest-open idle "
            "one, or is closed at once when all are busy. Unset: derived from the file "
            "limit (API) so the API keeps descriptors whatever the admin port gets."
        ),
    )


class ConnectionSettings(ConfigModel):
    """Bounds on client connections, so idle or slow clients cannot use up descriptors."""

    header_timeout: Duration = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a new connection may take to send its request line and headers; "
            "closed after it."
        ),
    )
    api: ListenerLimits = ListenerLimits(idle_timeout=60.0)
    admin: ListenerLimits = ListenerLimits(idle_timeout=15.0, max_connections=64)
    accept_error_interval: Duration = Field(
        default=10.0,
        gt=0,
        description=(
            "When descriptors run out, one 'cannot accept connections' log line per "
            "this many seconds, with the count of those held back."
        ),
    )


class WatchSettings(ConfigModel):
    """How the key and config files are followed."""

    interval: Duration = Field(
        default=0.5, description="Seconds between checks of the key and config files."
    )
    shutdown_grace: Duration = Field(
        default=30.0, description="Seconds in-flight calls may take to finish after SIGTERM."
    )


class SidecarConfig(OpenAiConfig):
    """The runner's config plus the server's own settings."""

    api_key: SecretRef = SecretRef(file=DEFAULT_KEY_FILE)
    runtime: RuntimeRef = RuntimeRef()
    models: ModelSettings = ModelSettings()
    listen: ListenSettings = ListenSettings()
    limits: LimitSettings = LimitSettings()
    watch: WatchSettings = WatchSettings()
    connections: ConnectionSettings = ConnectionSettings()


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    key_file, key_env = environ.get(KEY_FILE_ENV), environ.get(KEY_ENV_ENV)
    if key_file and key_env:
        raise ConfigError(f"set only one of {KEY_FILE_ENV} and {KEY_ENV_ENV}")
    if key_file:
        return {**data, "apiKey": {"file": key_file}}
    if key_env:
        return {**data, "apiKey": {"env": key_env}}
    return data


def load_sidecar_config(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Read, override and validate a sidecar config; :class:`ConfigError` says what is wrong."""

    data = _apply_env(load_document(path), os.environ if environ is None else environ)
    try:
        return SidecarConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path))) from exc
