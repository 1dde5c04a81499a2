"""The sidecar process: one runtime's runner behind two listeners, kept current.

Start-up: read and validate the config (a bad one exits non-zero before
anything listens), load the key, start the API listener on loopback and the
admin listener, then follow the key and config files. A key that is missing
at start does not crash the pod: the sidecar stays unready and answers 503
until the Secret appears. SIGTERM: go unready, stop accepting, let calls and
streams in flight finish within ``watch.shutdownGrace``, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .admin import build_admin_app
from .config import SidecarConfig, load_sidecar_config, parse_listen
from .configfile import ConfigError
from .labels import ModelLabels
from .listening import AcceptErrorThrottle, ConnectionGuard, api_connection_limit
from .logs import configure_logging
from .runner import CallOutcome, Clock, CredentialStore, OpenAiRunner, SystemClock, Transport
from .runner.credentials import ReloadOutcome
from .server import ApiRunner, build_api_app
from .telemetry import Telemetry
from .watching import FileWatcher

__all__ = ["Sidecar", "SpendTotals", "main"]

log = logging.getLogger("openai_runtime.sidecar")


@dataclass(slots=True)
class SpendTotals:
    """What one model has cost since the sidecar started."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usd: float = 0.0
    estimated_usd: float = 0.0
    """The part of ``usd`` that was estimated (streams cut before usage)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "cachedTokens": self.cached_tokens,
            "usd": round(self.usd, 10),
            "estimatedUsd": round(self.estimated_usd, 10),
        }


def _reloader(store: CredentialStore) -> Callable[[], None]:
    def reload() -> None:
        store.reload()

    return reload


def _log_key_reload(outcome: ReloadOutcome, backend: str) -> None:
    """One line per key change or refusal, naming the backend and fingerprints only."""
    before = outcome.previous.fingerprint if outcome.previous else None
    if outcome.error is not None:
        log.warning(
            "API key not reloaded; keeping the current one",
            extra={"fields": {"backend": backend, "reason": outcome.error, "fingerprint": before}},
        )
    elif outcome.changed and outcome.snapshot is not None:
        log.info(
            "API key loaded" if before is None else "API key rotated",
            extra={
                "fields": {"backend": backend, "from": before, "to": outcome.snapshot.fingerprint}
            },
        )


class Sidecar:
    """Everything one sidecar process holds; tests run it in-process on port 0.

    It owns the process's one :class:`~.runner.Clock`: the runner waits and
    measures on it, the telemetry it builds times calls with it, and the
    uptime is read from it. A :class:`~.telemetry.Telemetry` handed in keeps
    its own clock, which is the sidecar's too unless ``clock`` says otherwise.
    """

    def __init__(
        self,
        config: SidecarConfig,
        *,
        config_path: str | Path | None = None,
        telemetry: Telemetry | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.config_generation = 1
        self.config_error: str | None = None
        self.credential_error: str | None = None
        self.credentials = CredentialStore(config.api_key)
        self.credentials.subscribe(self._credential_reloaded)
        self._followed_stores: weakref.WeakSet[CredentialStore] = weakref.WeakSet()
        if clock is None:
            clock = telemetry.clock if telemetry is not None else SystemClock()
        self.clock: Clock = clock
        self.runner = OpenAiRunner(config, self.credentials, clock=clock, transport=transport)
        variant = config.variant.selected
        self.telemetry = telemetry or Telemetry(
            runtime=str(config.runtime),
            variant=variant.name,
            server_address=self.runner.server_address,
            clock=clock,
        )
        self.telemetry.observe(
            circuit=lambda: [
                (backend.name, scope, state.value)
                for backend in self.runner.backends
                for scope, state in backend.circuits.states()
            ],
            limiter=lambda: [(b.name, b.limiter.snapshot()) for b in self.runner.backends],
            connections=lambda: [
                guard.reading()
                for guard in (self.api_connections, self.admin_connections)
                if guard is not None
            ],
        )
        self.spend: dict[str, SpendTotals] = {}
        """Per model the runtime knows (allow-list, price table), the rest as ``other``."""
        self.instance = uuid.uuid4().hex
        """This process among the pod's restarts: the operator counts spend per instance,
        so totals that start again at zero after a restart are neither lost nor counted twice."""
        self._label_models()
        self.started_at = self.clock.monotonic()
        self.shutting_down = False
        self._api: web.AppRunner | None = None
        self._admin: web.AppRunner | None = None
        self.api_connections: ConnectionGuard | None = None
        self.admin_connections: ConnectionGuard | None = None
        self._watchers: list[FileWatcher] = []

    # -- state -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return not self.unready_reasons()

    def unready_reasons(self) -> list[str]:
        reasons = []
        if self.shutting_down:
            reasons.append("shutting down")
        if self.credentials.current is None:
            reasons.append(f"no API key loaded from {self.credentials.ref.describe()}")
        if self._api is None:
            reasons.append("API listener not started")
        return reasons

    def _label_models(self) -> None:
        # Bounded by what the runtime knows, so invented names cannot grow
        # /metrics or /status; rebuilt when the allow-list or prices change.
        labels = ModelLabels(self.config.models.allow, self.runner.pricing)
        self.telemetry.model_label = self._model_label = labels

    def account(self, info: CallOutcome | None) -> None:
        """Add a finished call's tokens and cost to the per-model totals."""
        if info is None:
            return
        model = self._model_label(info.response_model or info.request_model) or "unknown"
        totals = self.spend.setdefault(model, SpendTotals())
        totals.requests += 1
        if info.usage is not None:
            totals.prompt_tokens += info.usage.prompt_tokens
            totals.completion_tokens += info.usage.completion_tokens
            totals.cached_tokens += info.usage.cached_tokens
        if info.cost is not None:
            totals.usd += info.cost.usd
            if info.cost.estimated:
                totals.estimated_usd += info.cost.usd

    # -- reloads -----------------------------------------------------------

    def _credential_reloaded(self, outcome: ReloadOutcome) -> None:
        self.credential_error = outcome.error
        self._key_reloaded(outcome, self.config.name)

    def _key_reloaded(self, outcome: ReloadOutcome, backend: str) -> None:
        """Count and log a reload of any backend's key (the primary's, a fallback's)."""
        self.telemetry.credential_reloaded(outcome, backend)
        _log_key_reload(outcome, backend)

    def _follow_fallback_key(self, name: str, store: CredentialStore) -> None:
        """Count and log a fallback's key reloads like the primary's, from its first load."""
        if store in self._followed_stores:
            return
        self._followed_stores.add(store)
        store.subscribe(lambda outcome: self._key_reloaded(outcome, name))
        # Its first read happened when the runner built it, before anyone listened.
        current = store.current
        if current is not None:
            self._key_reloaded(ReloadOutcome(True, current, None), name)
        else:
            store.reload()  # reported by the listener: why there is no key yet

    def reload_credential(self) -> ReloadOutcome:
        return self.credentials.reload()

    def reload_config(self) -> bool:
        """Apply the config file again; an invalid one is refused and the old one stays."""
        if self.config_path is None:
            return False
        try:
            config = load_sidecar_config(self.config_path)
        except ConfigError as exc:
            self.config_error = str(exc)
            self.telemetry.config_reloaded(False)
            log.warning(
                "config change rejected; keeping the current one",
                extra={"fields": {"reason": str(exc)}},
            )
            return False
        if config == self.config:
            # Back to the running config (say, a bad edit reverted): nothing to
            # apply, but the earlier rejection no longer describes the file.
            self.config_error = None
            return False
        if config.listen != self.config.listen:
            log.warning("listen addresses change only on restart; other changes applied")
        if config.connections != self.config.connections:
            log.warning("connection limits change only on restart; other changes applied")
        if config.api_key != self.config.api_key:
            self.credentials.ref = config.api_key
            self.credentials.reload()
        self.runner.reconfigure(config)
        if config.api_key != self.config.api_key or config.fallbacks != self.config.fallbacks:
            self._watch_key()
        self.config = config
        self._label_models()
        self.config_generation += 1
        self.config_error = None
        self.telemetry.config_reloaded(True)
        log.info("config applied", extra={"fields": {"generation": self.config_generation}})
        return True

    def _watch_key(self) -> None:
        """Follow every key file: the primary's and each fallback's (rotated alike)."""
        interval = self.config.watch.interval
        for replaced in [w for w in self._watchers if w.on_change != self._on_config_change]:
            replaced.cancel()  # else its task would poll the old file until the loop ends
            self._watchers.remove(replaced)
        # The stores' refs, not self.config's: a reload sets them before self.config.
        followed: list[tuple[str | None, Callable[[], None]]] = [
            (self.credentials.ref.file, self._on_key_change)
        ]
        for backend in self.runner.backends[1:]:
            self._follow_fallback_key(backend.name, backend.credentials)
            followed.append((backend.credentials.ref.file, _reloader(backend.credentials)))
        for key_file, on_change in followed:
            if key_file is None:
                continue
            watcher = FileWatcher(key_file, on_change, interval=interval)
            self._watchers.append(watcher)
            if self._api is not None:
                watcher.start()

    def _on_key_change(self) -> None:
        self.reload_credential()

    def _on_config_change(self) -> None:
        self.reload_config()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        outcome = self.credentials.reload()
        if outcome.snapshot is None:
            log.warning(
                "starting without an API key: unready until it appears",
                extra={"fields": {"reason": outcome.error}},
            )
        self._watch_key()
        if self.config_path is not None:
            self._watchers.append(
                FileWatcher(
                    self.config_path, self._on_config_change, interval=self.config.watch.interval
                )
            )
        grace = self.config.watch.shutdown_grace
        limits = self.config.connections
        admin_cap = limits.admin.max_connections or _ADMIN_CONNECTIONS
        # Caps per listener, so a flood of the (pod-network) admin port cannot
        # take the descriptors the (loopback) API needs, nor the reverse.
        self.api_connections = ConnectionGuard(
            "api",
            limit=limits.api.max_connections or api_connection_limit(admin_cap),
            header_timeout=limits.header_timeout,
        )
        self.admin_connections = ConnectionGuard(
            "admin", limit=admin_cap, header_timeout=limits.header_timeout
        )
        self._api = await _listen(
            build_api_app(self),
            self.config.listen.api,
            self.api_connections,
            grace=grace,
            idle_timeout=limits.api.idle_timeout,
            cancel_on_disconnect=True,
            # Even a request aiohttp cannot parse is answered in OpenAI's shape.
            runner_class=ApiRunner,
            # Loopback only: the pod's own apps, whose bursts must not wait on SYN retries.
            backlog=_API_BACKLOG,
        )
        self._admin = await _listen(
            build_admin_app(self),
            self.config.listen.admin,
            self.admin_connections,
            grace=1.0,
            idle_timeout=limits.admin.idle_timeout,
            cancel_on_disconnect=False,
        )
        for watcher in self._watchers:
            watcher.start()
        self.started_at = self.clock.monotonic()
        log.info(
            "sidecar listening",
            extra={
                "fields": {
                    "api": self.api_url,
                    "admin": self.admin_url,
                    "runtime": str(self.config.runtime),
                    "api_max_connections": self.api_connections.limit,
                    "admin_max_connections": self.admin_connections.limit,
                }
            },
        )

    async def stop(self) -> None:
        """Drain: unready at once, no new connections, in-flight calls finish within grace."""
        self.shutting_down = True
        for watcher in self._watchers:
            await watcher.stop()
        if self._api is not None:
            await self._api.cleanup()
        if self._admin is not None:
            await self._admin.cleanup()
        await self.runner.aclose()
        self.telemetry.shutdown()

    @property
    def api_url(self) -> str:
        return _url(self._api)

    @property
    def admin_url(self) -> str:
        return _url(self._admin)


_ACCEPT_BACKLOG = 32
_API_BACKLOG = 128
_ADMIN_CONNECTIONS = 64
"""Admin cap when the config unsets it: probes and a scraper or two need few."""


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections pass through a :class:`ConnectionGuard` first."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, backlog: int
    ):
        super().__init__(runner, host, port, backlog=backlog)
        self._guard = guard

    async def start(self) -> None:
        # TCPSite.start with the guard's protocol factory in place of the
        # runner's server; the base class's registration with the runner kept.
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.wrap(self._runner),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


async def _listen(
    app: web.Application,
    address: str,
    guard: ConnectionGuard,
    *,
    grace: float,
    idle_timeout: float,
    cancel_on_disconnect: bool,
    runner_class: type[web.AppRunner] = web.AppRunner,
    backlog: int = _ACCEPT_BACKLOG,
) -> web.AppRunner:
    host, port = parse_listen(address)
    runner = runner_class(
        app,
        shutdown_timeout=grace,
        handler_cancellation=cancel_on_disconnect,
        access_log=None,
        # After an early answer (413, 408) the rest of an unread body is read
        # and dropped for at most this long before the connection closes: long
        # enough for the client to see the answer, short for a stalled client.
        lingering_time=1.0,
        # aiohttp's default keeps an idle connection for an hour.
        keepalive_timeout=idle_timeout,
    )
    await runner.setup()
    # asyncio accepts up to ``backlog`` connections per wake-up, each a
    # descriptor until the guard sees it: a small backlog on the admin port
    # keeps a flood's burst from taking the descriptors calls need.
    await _GuardedSite(runner, host, port, guard, backlog=backlog).start()
    return runner


def _url(runner: web.AppRunner | None) -> str:
    if runner is None or not runner.addresses:
        return ""
    host, port = runner.addresses[0][:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


async def serve(config_path: Path) -> int:
    try:
        config = load_sidecar_config(config_path)
    except ConfigError as exc:
        print(f"openai-runtime sidecar: {exc}", file=sys.stderr)
        return 2
    sidecar = Sidecar(config, config_path=config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorThrottle(config.connections.accept_error_interval))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await sidecar.start()
    except OSError as exc:
        print(f"openai-runtime sidecar: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await sidecar.stop()
        return 1
    # What start-up built (modules, config, price tables) lives as long as the
    # process: out of the collector's generations, every collection under
    # load scans only what calls create. Here, not in start(): a process
    # that starts many sidecars (tests) would keep its garbage forever.
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("shutting down", extra={"fields": {"grace_s": config.watch.shutdown_grace}})
    await sidecar.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="openai-runtime sidecar")
    parser.add_argument("--config", required=True, type=Path, help="sidecar config (JSON/YAML)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(list(argv))
    configure_logging(args.log_level)
    return asyncio.run(serve(args.config))
