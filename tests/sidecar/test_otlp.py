"""OTLP/HTTP export for real: the SDK's exporter posting to a collector on loopback."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from openai_runtime_sidecar.telemetry import Telemetry


async def test_spans_and_metrics_reach_an_otlp_collector() -> None:
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    app.router.add_post("/v1/metrics", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        telemetry = Telemetry(
            runtime="team-a/chat",
            variant="direct",
            server_address="api.openai.com",
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:{port}"},
        )
        trace = telemetry.start_call({}, model="gpt-4o-mini", stream=False)
        trace.finish(None, status=400, error_type="invalid_json")
        # The exporters post from their own threads; flushing must not block
        # the loop that serves the collector.
        await asyncio.to_thread(telemetry.shutdown)
    finally:
        await runner.cleanup()
    paths = {path for path, _, _ in received}
    assert paths == {"/v1/traces", "/v1/metrics"}
    assert all(kind == "application/x-protobuf" for _, kind, _ in received)
    traces = b"".join(body for path, _, body in received if path == "/v1/traces")
    assert b"chat gpt-4o-mini" in traces and b"invalid_json" in traces
    metrics = b"".join(body for path, _, body in received if path == "/v1/metrics")
    assert b"openai_runtime.requests" in metrics


async def test_operator_spans_reach_an_otlp_collector() -> None:
    from openai_runtime_operator.telemetry import export_traces_from_env

    assert export_traces_from_env({}) is None
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    endpoint = f"http://{host}:{port}/v1/traces"
    previous = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
    try:
        provider = export_traces_from_env(os.environ)
        assert provider is not None
        with provider.get_tracer("test").start_as_current_span("reconcile team-a/chat"):
            pass
        await asyncio.to_thread(provider.shutdown)
    finally:
        if previous is None:
            del os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        else:
            os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = previous
        await runner.cleanup()
    assert any(b"reconcile team-a/chat" in body for body in received)
