"""The admin port tells the pod network only what probes, Prometheus and the operator need.

The admin listener binds ``0.0.0.0`` so kubelet, Prometheus and the
operator's convergence check can reach it, unauthenticated; so every other
pod in the cluster can too. A real sidecar is asked over a loopback socket
(its full view) and, for the network's view, through its admin app with a
request whose socket peer is a pod-network address: the tests send no
traffic off loopback.

- from the network ``/status`` is the served fingerprint and the spend in USD
  (what the operator's convergence check and budget read) and nothing else
  (no upstream URL, Azure deployment, key file path, tokens, errors), and the
  operator's own probe, over a real socket, reads that document as current;
- from the network ``/readyz`` is ``ready`` and reason codes, never the
  worded reasons (they name the key file);
- a forged ``X-Forwarded-For: 127.0.0.1`` changes nothing;
- from loopback everything is as before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from opentelemetry.sdk.trace import TracerProvider

from openai_runtime_operator.convergence import ConvergenceSettings, probe_pods
from openai_runtime_sidecar.admin import build_admin_app, is_loopback_peer, unready_codes
from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.telemetry import Telemetry
from tests.support import OLD_KEY, SecretVolume, on_loopback

from .harness import CHAT, OLD_FP

DEPLOYMENT = "gpt-4o-prod"  # one the fake upstream knows
MODEL = "gpt-4o"


POD_PEER = ("10.244.1.7", 50000)
"""A neighbour pod's address, as the admin listener's socket would report it."""


def peer_transport(peername: Any) -> mock.Mock:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        peername if name == "peername" else default
    )
    return transport


async def network_get(
    sidecar: Sidecar, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """``GET path`` of the sidecar's own admin app, as a pod on the network would send it."""
    app = build_admin_app(sidecar)
    request = make_mocked_request(
        "GET", path, headers=headers or {}, transport=peer_transport(POD_PEER), app=app
    )
    match = await app.router.resolve(request)
    response = await match.handler(request)
    assert isinstance(response, web.Response) and isinstance(response.text, str)
    return response.status, response.text


@asynccontextmanager
async def serving(document: dict[str, Any]) -> AsyncIterator[int]:
    """A loopback server answering ``/status`` with ``document``: what a pod shows the network."""

    async def status(request: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/status", status)
    async with on_loopback(app) as url:
        yield int(url.rsplit(":", 1)[1])


@asynccontextmanager
async def sidecar_with_admin(
    upstream: FakeUpstream, key_file: Path
) -> AsyncIterator[tuple[Sidecar, int]]:
    """A sidecar on the Azure variant whose admin listener binds ``127.0.0.1:0``, and its port."""
    config = SidecarConfig.model_validate(
        {
            "runtime": {"namespace": "team-a", "name": "chat"},
            "variant": {"azure": {"endpoint": upstream.url, "deployment": DEPLOYMENT}},
            "apiKey": {"file": str(key_file)},
            "listen": {"api": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "watch": {"interval": "20ms", "shutdownGrace": "5s"},
        }
    )
    telemetry = Telemetry(
        runtime=str(config.runtime),
        variant=config.variant.selected.name,
        server_address="127.0.0.1",
        tracer_provider=TracerProvider(),
        environ={},
    )
    sidecar = Sidecar(config, telemetry=telemetry)
    await sidecar.start()
    try:
        yield sidecar, int(sidecar.admin_url.rsplit(":", 1)[1])
    finally:
        await sidecar.stop()


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.text()


def assert_tells_nothing_more(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} shown to the pod network: {text[:500]}"


async def test_status_over_the_network_is_the_fingerprint_and_spend_only(
    upstream: FakeUpstream, secret_dir: SecretVolume
) -> None:
    async with (
        sidecar_with_admin(upstream, secret_dir.path) as (sidecar, port),
        aiohttp.ClientSession() as http,
    ):
        # One call, so there are tokens to hide and spend to show.
        async with http.post(
            sidecar.api_url + CHAT,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        ) as call:
            assert call.status == 200, await call.text()
        upstream_url = sidecar.config.variant.selected.chat_completions_url().split("?")[0]
        hidden = (upstream.url, upstream_url, DEPLOYMENT, str(secret_dir.path), "Tokens")

        code, text = await get(http, f"http://127.0.0.1:{port}/status")
        assert code == 200
        full = json.loads(text)
        assert full["credential"]["fingerprint"] == OLD_FP
        assert full["upstream"] == upstream_url and DEPLOYMENT in upstream_url
        assert str(secret_dir.path) in full["credential"]["source"]
        assert full["spend"], "the call was accounted"
        assert {"runtime", "config", "models", "circuit", "rateLimits"} <= set(full)

        for headers in (None, {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}):
            code, text = await network_get(sidecar, "/status", headers)
            assert code == 200
            document = json.loads(text)
            spend = document.pop("spend")
            assert document == {"credential": {"fingerprint": OLD_FP}}, headers
            assert set(spend) == {"instance", "usd", "byModel"}
            assert spend["instance"] == sidecar.instance and spend["usd"] > 0
            assert sum(spend["byModel"].values()) == spend["usd"]
            assert_tells_nothing_more(text, *hidden)

        # The operator's own probe, over a real socket, counts that document as current.
        async with serving(json.loads(text)) as shown:
            pod = {"status": {"phase": "Running", "podIP": "127.0.0.1"}}
            settings = ConvergenceSettings(port=shown, timeout=5.0)
            converged = await probe_pods([pod], OLD_FP, settings)
            assert (converged.pods, converged.current) == (1, 1)
            stale = await probe_pods([pod], "sha256:not-the-served-key", settings)
            assert (stale.pods, stale.current) == (1, 0)

        # Probes and Prometheus keep working for the network.
        code, text = await network_get(sidecar, "/healthz")
        assert (code, json.loads(text)) == (200, {"status": "ok"})
        code, text = await network_get(sidecar, "/readyz")
        assert (code, json.loads(text)) == (200, {"ready": True, "codes": []})
        code, text = await network_get(sidecar, "/metrics")
        assert code == 200 and "# TYPE" in text
        assert_tells_nothing_more(text, str(secret_dir.path), OLD_KEY)


async def test_readyz_over_the_network_gives_codes_not_the_key_path(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    missing = tmp_path / "secret" / "api-key"  # never written: the sidecar starts unready
    async with (
        sidecar_with_admin(upstream, missing) as (sidecar, port),
        aiohttp.ClientSession() as http,
    ):
        code, text = await network_get(sidecar, "/readyz")
        assert (code, json.loads(text)) == (503, {"ready": False, "codes": ["no_credential"]})
        assert_tells_nothing_more(text, str(missing))
        code, text = await network_get(sidecar, "/status")
        spend = {"instance": sidecar.instance, "usd": 0, "byModel": {}}
        assert (code, json.loads(text)) == (
            200,
            {"credential": {"fingerprint": None}, "spend": spend},
        )

        code, text = await get(http, f"http://127.0.0.1:{port}/readyz")
        local = json.loads(text)
        assert code == 503 and local["ready"] is False and local["codes"] == ["no_credential"]
        assert len(local["reasons"]) == 1 and str(missing) in local["reasons"][0]
        assert local["circuit"] == {"host": "closed"}


def peer_request(peername: Any) -> Callable[[], bool]:
    request = make_mocked_request(
        "GET",
        "/status",
        headers={"X-Forwarded-For": "127.0.0.1"},
        transport=peer_transport(peername),
    )
    return lambda: is_loopback_peer(request)


@pytest.mark.parametrize(
    ("peername", "loopback"),
    [
        (("127.0.0.1", 50000), True),
        (("127.8.9.10", 50000), True),  # all of 127.0.0.0/8
        (("::1", 50000, 0, 0), True),
        (("::ffff:127.0.0.1", 50000, 0, 0), True),  # IPv4 loopback on a dual-stack listener
        (("192.0.2.2", 50000), False),
        (("10.244.1.7", 50000), False),
        (("::ffff:10.244.1.7", 50000, 0, 0), False),
        (("fe80::1%eth0", 50000, 0, 2), False),
        (("0.0.0.0", 50000), False),
        (None, False),  # transport gone: fail closed
        ("", False),  # a Unix socket's peer: not a TCP loopback peer
    ],
)
def test_which_peers_count_as_loopback(peername: Any, loopback: bool) -> None:
    # The forged header on every request changes nothing: only the socket counts.
    assert peer_request(peername)() is loopback


def test_every_unready_reason_has_a_code() -> None:
    reasons = [
        "shutting down",
        "no API key loaded from file /var/run/secrets/openai/api-key",
        "API listener not started",
        "something new, naming /a/secret/path",
    ]
    assert unready_codes(reasons) == [
        "shutting_down",
        "no_credential",
        "api_not_listening",
        "unready",
    ]
