"""Convergence reports, the resync loop and operator telemetry, against kmock and
real sidecars on loopback.

A real :class:`~openai_runtime_sidecar.app.Sidecar` plays a pod's sidecar:
its admin listener (port 0 on 127.0.0.1) answers ``/status`` with the
fingerprint it serves, and the operator is told that sidecars listen on that
port. A second pod's IP, 127.0.0.2, refuses connections: it counts as not
current and fails nothing.

The resync tests run the loop as the operator's start-up handler would, but
without kopf: nothing else then reads or writes the emulator, so a missed
rotation stays missed until the resync finds it, and every request seen is
the resync's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from openai_runtime_operator.context import OperatorContext
from openai_runtime_operator.convergence import ConvergenceSettings, probe_pods
from openai_runtime_operator.models import API_VERSION, KIND
from openai_runtime_operator.resync import resync_forever, resync_once
from openai_runtime_operator.telemetry import OperatorTelemetry
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.runner.credentials import fingerprint
from openai_runtime_sidecar.telemetry import Telemetry

from ..support import NEW_KEY, OLD_KEY, SecretVolume, points
from .test_operator import (
    ALL_KEYS,
    MERGE,
    NS,
    RUNTIMES,
    RUNTIMES_URL,
    SECRETS_URL,
    Cluster,
    assert_no_key_leaked,
    b64,
    eventually,
    pod,
    ready,
    runtime,
    secret,
)

FAST = ConvergenceSettings(timeout=0.5, backoff=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6))


def running(name: str, runtime_name: str, ip: str | None) -> dict[str, Any]:
    body = pod(name, runtime_name)
    body["status"] = {"phase": "Running", **({"podIP": ip} if ip else {})}
    return body


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, SecretVolume]]:
    """A real sidecar serving OLD_KEY from a Secret volume (its upstream is never called)."""
    volume = SecretVolume(tmp_path / "secret")
    volume.write(OLD_KEY)
    config = SidecarConfig.model_validate(
        {
            "runtime": {"namespace": NS, "name": "alpha"},
            "variant": {"direct": {"endpoint": "http://127.0.0.1:9/v1"}},
            "apiKey": {"file": str(volume.path)},
            "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "watch": {"interval": "20ms", "shutdownGrace": "1s"},
        }
    )
    telemetry = Telemetry(
        runtime=f"{NS}/alpha",
        variant="direct",
        server_address="127.0.0.1",
        tracer_provider=TracerProvider(),
        environ={},
    )
    app = Sidecar(config, telemetry=telemetry)
    await app.start()
    try:
        yield app, volume
    finally:
        await app.stop()


def admin_port(app: Sidecar) -> int:
    return int(app.admin_url.rsplit(":", 1)[1])


async def test_convergence_after_rotation_counts_serving_pods(
    operator: Cluster, sidecar: tuple[Sidecar, SecretVolume]
) -> None:
    app, volume = sidecar
    kmock = operator.kmock
    operator.ctx.convergence = ConvergenceSettings(
        port=admin_port(app), timeout=FAST.timeout, backoff=FAST.backoff
    )
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects["v1/pods", NS, "a1"] = running("a1", "alpha", "127.0.0.1")
    kmock.objects["v1/pods", NS, "a2"] = running("a2", "alpha", "127.0.0.2")
    kmock.objects["v1/pods", NS, "other"] = running("other", "beta", "127.0.0.1")
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")

    # The Secret changes; kubelet (this test) refreshes the sidecar's volume a bit later,
    # so the operator's first checks find no pod current and it checks again.
    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    await eventually(
        lambda: operator.status("alpha").get("credential", {}).get("rotations") == 1, "rotation"
    )
    first = await eventually(lambda: operator.status("alpha").get("convergence"), "a report")
    assert first == {"pods": 2, "current": 0}
    volume.write(NEW_KEY)
    convergence = await eventually(
        lambda: (c := operator.status("alpha").get("convergence")) and c["current"] == 1 and c,
        "one pod current",
    )
    assert convergence == {"pods": 2, "current": 1}
    assert app.credentials.current is not None
    assert app.credentials.current.fingerprint == fingerprint(NEW_KEY)


async def test_resync_reports_convergence(
    operator: Cluster, sidecar: tuple[Sidecar, SecretVolume]
) -> None:
    from openai_runtime_operator.resync import resync_once

    app, _ = sidecar
    kmock = operator.kmock
    operator.ctx.convergence = ConvergenceSettings(port=admin_port(app), timeout=0.5)
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects["v1/pods", NS, "a1"] = running("a1", "alpha", "127.0.0.1")
    kmock.objects["v1/pods", NS, "a2"] = running("a2", "alpha", "127.0.0.2")
    kmock.objects["v1/pods", NS, "a3"] = running("a3", "alpha", None)  # no IP yet
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")

    assert await resync_once(operator.ctx, [NS]) == 1
    assert operator.status("alpha")["convergence"] == {"pods": 3, "current": 1}


@pytest.fixture
async def fake_sidecars() -> AsyncIterator[str]:
    """One loopback server answering per path: good, wrong fingerprint, 500, not JSON."""

    async def good(request: web.Request) -> web.Response:
        return web.json_response({"credential": {"fingerprint": fingerprint(NEW_KEY)}})

    async def stale(request: web.Request) -> web.Response:
        return web.json_response({"credential": {"fingerprint": fingerprint(OLD_KEY)}})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="not json")

    app = web.Application()
    for path, handler in (("/good", good), ("/stale", stale), ("/500", broken), ("/x", garbage)):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield str(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def test_probe_counts_only_current_answers(fake_sidecars: str) -> None:
    port = int(fake_sidecars)
    pods = [running("p", "alpha", "127.0.0.1"), {"status": {"phase": "Pending"}}]
    fp = fingerprint(NEW_KEY)
    for path, current in (("/good", 1), ("/stale", 0), ("/500", 0), ("/x", 0)):
        settings = ConvergenceSettings(port=port, path=path, timeout=0.5)
        result = await probe_pods(pods, fp, settings)
        assert (result.pods, result.current) == (2, current), path
    unreachable = ConvergenceSettings(port=port, timeout=0.5)
    assert (await probe_pods([running("p", "a", "127.0.0.2")], fp, unreachable)).current == 0


async def test_spans_and_metrics_of_reconciles_and_rotations(operator: Cluster) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    operator.ctx.telemetry = OperatorTelemetry(tracer_provider=provider, metric_readers=[reader])
    operator.ctx.metrics_address = ("127.0.0.1", 0)
    operator.ctx.convergence = FAST
    kmock = operator.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects[RUNTIMES, NS, "bad"] = runtime("bad", "none", retry={"maxAttempts": 0})
    for name in ("a1", "a2"):
        kmock.objects["v1/pods", NS, name] = pod(name, "alpha")
    await operator.start()
    await eventually(ready(operator, "alpha"), "Ready")
    await eventually(ready(operator, "bad", "False"), "bad verdict")
    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    await eventually(lambda: operator.annotation("a2") == fingerprint(NEW_KEY), "nudged")
    await eventually(
        lambda: any(s.name == "rotate apps/alpha" for s in spans.get_finished_spans()), "span"
    )

    finished = spans.get_finished_spans()
    reconciles = [s for s in finished if s.name == "reconcile apps/alpha"]
    assert reconciles and all(s.attributes["openai_runtime.result"] == "ok" for s in reconciles)
    bad = [s for s in finished if s.name == "reconcile apps/bad"]
    assert bad and all(s.attributes["openai_runtime.result"] == "invalid" for s in bad)
    [rotate] = [s for s in finished if s.name == "rotate apps/alpha"]
    assert rotate.attributes["openai_runtime.credential.fingerprint"] == fingerprint(NEW_KEY)
    assert rotate.attributes["openai_runtime.credential.rotations"] == 1
    assert rotate.attributes["openai_runtime.pods_nudged"] == 2
    for span in finished:
        text = repr(dict(span.attributes or {})) + span.name
        assert not any(key in text or b64(key) in text for key in ALL_KEYS)

    data = reader.get_metrics_data()
    assert data is not None
    points: dict[tuple[str, tuple[Any, ...]], Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = tuple(sorted((point.attributes or {}).items()))
                    points[metric.name, labels] = point.value
    assert points["openai_runtime_operator.reconciles", (("result", "ok"),)] >= 1
    assert points["openai_runtime_operator.reconciles", (("result", "invalid"),)] >= 1
    assert points["openai_runtime_operator.rotations", ()] == 1
    assert points["openai_runtime_operator.pods_nudged", ()] == 2

    port = operator.ctx.metrics_port
    assert port
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    assert 'openai_runtime_operator_reconciles_total{result="ok"}' in text
    assert 'openai_runtime_operator_reconciles_total{result="invalid"}' in text
    assert "openai_runtime_operator_rotations_total 1" in text
    assert "openai_runtime_operator_pods_nudged_total 2" in text


async def test_failed_reconcile_counts_as_error() -> None:
    import kopf

    from openai_runtime_operator.context import OperatorContext
    from openai_runtime_operator.reconciling import reconcile

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    ctx = OperatorContext(
        telemetry=OperatorTelemetry(tracer_provider=provider, metric_readers=[reader])
    )
    body = kopf.Body(runtime("alpha"))  # type: ignore[arg-type]
    with pytest.raises(kopf.TemporaryError):  # not logged in: no API yet
        await reconcile(
            ctx,
            body=body,
            spec=body.spec,
            meta=body.metadata,
            namespace=NS,
            name="alpha",
            logger=logging.getLogger(__name__),
        )
    [span] = spans.get_finished_spans()
    assert span.name == "reconcile apps/alpha"
    assert span.attributes is not None and span.attributes["openai_runtime.result"] == "error"
    assert not span.status.is_ok
    data = reader.get_metrics_data()
    assert data is not None
    [metric] = [
        m
        for r in data.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        if m.name == "openai_runtime_operator.reconciles"
    ]
    [point] = metric.data.data_points
    assert dict(point.attributes or {}) == {"result": "error"} and point.value == 1


class Api(Cluster):
    """The operator's context logged in to kmock, with no kopf running."""

    reader: InMemoryMetricReader

    def resync_errors(self) -> dict[str, int]:
        found = points(self.reader).get("openai_runtime_operator.resync_errors", [])
        return {str(dict(p.attributes)["scope"]): int(p.value) for p in found}


@pytest.fixture
async def api(declare: Any) -> AsyncIterator[Api]:
    cluster = Api(declare)
    cluster.reader = InMemoryMetricReader()
    cluster.ctx = OperatorContext(
        telemetry=OperatorTelemetry(
            tracer_provider=TracerProvider(), metric_readers=[cluster.reader]
        ),
        convergence=FAST,
    )
    cluster.ctx.set_connection(kopf.ConnectionInfo(server=str(declare.url), insecure=True))
    try:
        yield cluster
    finally:
        await cluster.ctx.close()
        assert_no_key_leaked(declare)


def broken_secret(kmock: Any, name: str, answer: Any) -> None:
    """The Secret exists, but the emulator answers its GET with ``answer``."""
    kmock.objects["v1/secrets", NS, name] = secret(name, OTHER_SECRET_KEY)
    kmock[f"get /api/v1/namespaces/{NS}/secrets/{name}"] << answer


OTHER_SECRET_KEY = ALL_KEYS[2]


@pytest.mark.parametrize("answer", [b"not json", 500], ids=["garbage", "http-500"])
async def test_resync_skips_a_failing_runtime_and_counts_it(
    api: Api, answer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    kmock = api.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    broken_secret(kmock, "broken", answer)
    for name, secret_name in (("alpha", "openai-key"), ("beta", "broken"), ("gamma", "openai-key")):
        kmock.objects[RUNTIMES, NS, name] = runtime(name, secret_name)

    assert await resync_once(api.ctx, [NS]) == 2
    for name in ("alpha", "gamma"):
        assert ready(api, name)(), name
        assert api.status(name)["credential"]["fingerprint"] == fingerprint(OLD_KEY)
    assert api.status("beta") == {}  # failed before its status was computed
    assert api.resync_errors() == {"runtime": 1, "pass": 0}
    scraped = api.ctx.telemetry.prometheus_text()  # what /metrics serves
    assert 'openai_runtime_operator_resync_errors_total{scope="runtime"} 1' in scraped
    [failure] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "apps/beta" in failure.getMessage() and failure.exc_info is not None
    for raw in ALL_KEYS:
        assert raw not in caplog.text


async def test_resync_recovers_a_missed_rotation_with_its_event(api: Api) -> None:
    kmock = api.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects["v1/pods", NS, "a1"] = pod("a1", "alpha")
    assert await resync_once(api.ctx, [NS]) == 1
    assert api.annotation("a1") == fingerprint(OLD_KEY)

    # The key changes while nothing watches (an operator restart, a dropped stream).
    await kmock.patch(
        f"{SECRETS_URL}/openai-key", json={"data": {"api-key": b64(NEW_KEY)}}, headers=MERGE
    )
    assert await resync_once(api.ctx, [NS]) == 1
    credential = api.status("alpha")["credential"]
    assert credential["fingerprint"] == fingerprint(NEW_KEY) and credential["rotations"] == 1
    assert api.annotation("a1") == fingerprint(NEW_KEY)
    # Posted through the API from outside any kopf handler (kopf.event raised LookupError here).
    [event] = api.events("CredentialRotated")
    assert event["type"] == "Normal" and fingerprint(NEW_KEY) in event["message"]
    assert event["involvedObject"]["name"] == "alpha"
    assert (event["involvedObject"]["kind"], event["involvedObject"]["apiVersion"]) == (
        KIND,
        API_VERSION,
    )
    assert api.resync_errors() == {"runtime": 0, "pass": 0}


async def test_an_event_that_cannot_be_posted_fails_nothing(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    kmock = api.kmock
    kmock[f"post /api/v1/namespaces/{NS}/events"] << 500
    kmock.objects[RUNTIMES, NS, "bad"] = runtime("bad", retry={"maxAttempts": 0})
    assert await resync_once(api.ctx, [NS]) == 1
    cond = api.condition("bad", "Ready")
    assert cond is not None and cond["reason"] == "InvalidSpec"
    assert len(api.requests("POST", "/events")) == 1
    [warning] = [r for r in caplog.records if "Could not post" in r.getMessage()]
    assert warning.levelname == "WARNING" and "InvalidSpec" in warning.getMessage()
    assert api.resync_errors() == {"runtime": 0, "pass": 0}


async def test_resync_forever_waits_for_acting_and_survives_failures(api: Api) -> None:
    kmock = api.kmock
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    broken_secret(kmock, "broken", b"not json")
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    kmock.objects[RUNTIMES, NS, "beta"] = runtime("beta", "broken")
    asked = 0
    acting = False

    async def gate() -> bool:
        nonlocal asked
        asked += 1
        if asked == 2:
            raise LookupError("peering status unreadable")  # a failed pass, not the end
        return acting

    loop = asyncio.create_task(resync_forever(api.ctx, [NS], 0.01, acting=gate))
    try:
        await eventually(lambda: asked >= 4, "the loop to ask four times")
        # Not the acting replica: not a single request.
        assert list(kmock) == []
        assert api.resync_errors() == {"runtime": 0, "pass": 1}

        acting = True
        await eventually(ready(api, "alpha"), "alpha Ready through the loop")
        # beta fails on every pass, and the loop goes on regardless.
        await eventually(lambda: api.resync_errors().get("runtime", 0) >= 3, "three failures")
        assert not loop.done()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert api.status("alpha")["credential"]["fingerprint"] == fingerprint(OLD_KEY)


async def test_resync_forever_survives_a_failed_listing(api: Api) -> None:
    kmock = api.kmock
    kmock[f"get {RUNTIMES_URL.replace(NS, 'down')}"] << 503
    kmock.objects["v1/secrets", NS, "openai-key"] = secret("openai-key", OLD_KEY)
    kmock.objects[RUNTIMES, NS, "alpha"] = runtime("alpha")
    loop = asyncio.create_task(resync_forever(api.ctx, ["down", NS], 0.01))
    try:
        await eventually(lambda: api.resync_errors().get("pass", 0) >= 3, "three failed passes")
        assert not loop.done()
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    # The namespace listed first failed every pass, so the second was never reached.
    assert api.status("alpha") == {}
