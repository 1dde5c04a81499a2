"""State shared by the operator's handlers for the life of one operator run.

The login handler (:mod:`.registry`) records the :class:`kopf.ConnectionInfo`
it gave kopf here; reconciliation and the Secret watch then take their
:class:`~.kubeapi.KubeApi` from it, and a per-runtime lock so that the two
never compute a runtime's status from each other's half-written state.
It also carries the operator's telemetry (:mod:`.telemetry`), how to ask the
sidecars for convergence (:mod:`.convergence`), whom the sidecars' admin
port admits (:mod:`.networking`) and the background tasks
(the resync loop, convergence follow-ups) that :meth:`OperatorContext.close` ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web

from .convergence import ConvergenceSettings
from .kubeapi import KubeApi
from .networking import NetworkPolicySettings
from .serving import start_admin_server
from .telemetry import OperatorTelemetry

__all__ = ["OperatorContext"]


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class OperatorContext:
    """What the handlers share: the API connection and per-runtime locks."""

    resync_interval: float = 300.0
    """Seconds between safety-net reconciliations of each runtime."""
    budget_interval: float = 15.0
    """Seconds between reads of the spend of runtimes with a budget (:mod:`.budgeting`)."""
    now: Callable[[], datetime] = _utc_now
    """The wall clock budget periods are judged by (tests move it)."""
    token_source: Callable[[], str | None] | None = None
    connection: kopf.ConnectionInfo | None = None
    convergence: ConvergenceSettings = field(default_factory=ConvergenceSettings)
    telemetry: OperatorTelemetry = field(default_factory=OperatorTelemetry)
    metrics_address: tuple[str, int] | None = None
    """Where to serve ``/metrics`` (None: nowhere); port 0 picks a free one."""
    metrics_port: int | None = None
    """The port the metrics server bound, once it runs."""
    workers: int = 16
    """At most this many handler calls (reconciliations, Secret events) at once."""
    network_policy: NetworkPolicySettings | None = None
    """The per-runtime NetworkPolicy on the sidecars' admin port; None renders none."""
    webhook_listening: asyncio.Event | None = None
    """Set while the admission webhook listens; None when this replica serves none."""
    _metrics_runner: web.AppRunner | None = field(default=None, repr=False)
    _api: KubeApi | None = field(default=None, repr=False)
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _keyed: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict, repr=False)
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)
    polled: set[tuple[str, str]] = field(default_factory=set, repr=False)
    """Runtimes whose valid spec sets a budget or fallbacks, as reconciliation last saw
    them: the budget loop polls these, never listing runtimes itself."""
    secrets_followed: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    """Per Secret, the digest of the data that all its runtimes followed (:mod:`.rotation`)."""

    def set_connection(self, info: kopf.ConnectionInfo | None) -> None:
        """Record what the login handler returned (a new login replaces the client)."""
        if info is None or info == self.connection:
            return
        self.connection = info
        old, self._api = self._api, None
        if old is not None:
            # Closed by the event loop later; in-flight calls finish on the old session.
            asyncio.get_running_loop().create_task(old.close())

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            if self.connection is None:
                raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
            self._api = KubeApi(self.connection, token_source=self.token_source)
        return self._api

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def slot(self) -> asyncio.Semaphore:
        """One of :attr:`workers` slots: taken by a handler call, never while holding a lock."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self.workers))
        return self._slots

    def forget(self, namespace: str, name: str) -> None:
        self._locks.pop((namespace, name), None)
        self.polled.discard((namespace, name))

    def background(self, job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` until :meth:`close` (the resync loop)."""
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def background_for(self, key: tuple[str, str], job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` for one runtime, replacing (cancelling) the one it had running."""
        previous = self._keyed.pop(key, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(job)
        self._keyed[key] = task
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._keyed.get(key) is finished:
                del self._keyed[key]

        task.add_done_callback(done)

    def readiness(self) -> dict[str, bool]:
        """The checks of ``/readyz``: logged in, and the webhook listening if it is served."""
        checks = {"loggedIn": self.connection is not None}
        if self.webhook_listening is not None:
            checks["webhookListening"] = self.webhook_listening.is_set()
        return checks

    async def start_metrics(self) -> None:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` at :attr:`metrics_address`, if any.

        Raises :class:`OSError` when the port cannot be bound.
        """
        if self.metrics_address is None or self._metrics_runner is not None:
            return
        host, port = self.metrics_address
        self._metrics_runner, self.metrics_port = await start_admin_server(
            self.telemetry, host, port, self.readiness
        )

    async def close(self) -> None:
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
            self._metrics_runner = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()
            self._api = None
