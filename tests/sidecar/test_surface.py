"""The whole API surface through a real sidecar, driven by the official SDK as an app does.

Each test calls one family of endpoints with ``openai.AsyncOpenAI`` (or
``AsyncAzureOpenAI``) pointed at the sidecar, which forwards to the fake
upstream; it asserts what upstream received (method, path, query, the
runtime's key, the body) and what the app got back, and where a call has
usage, its tokens, cost header, metrics and span.
"""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import openai
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from openai_runtime_sidecar.app import Sidecar
from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from openai_runtime_sidecar.runner.credentials import fingerprint

from ..support import OLD_KEY, points
from .conftest import SidecarFactory

APP_KEY = "not-the-real-key"


def last(upstream: FakeUpstream, endpoint: str | None = None) -> Any:
    found = [r for r in upstream.requests if endpoint is None or r.endpoint == endpoint]
    assert found, f"upstream saw no {endpoint} request"
    return found[-1]


def sdk(sidecar: Sidecar, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/v1", api_key=APP_KEY, max_retries=0, **options
    )


def assert_runtime_key(rec: Any) -> None:
    """Upstream saw the runtime's key, never the app's placeholder."""
    assert rec.key_fingerprint == fingerprint(OLD_KEY)


async def azure_sidecar(
    make_sidecar: SidecarFactory, upstream: FakeUpstream, deployments: list[str], **overrides: Any
) -> Sidecar:
    """An Azure runtime on the fake's gpt-4o-prod that also serves ``deployments``."""
    azure = {"endpoint": upstream.url, "deployment": "gpt-4o-prod", "deployments": deployments}
    return await make_sidecar("azure", variant={"azure": azure}, **overrides)


async def test_embeddings_are_accounted(
    sidecar: Sidecar,
    upstream: FakeUpstream,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricReader,
) -> None:
    async with sdk(sidecar) as client:
        raw = await client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["alpha", "beta"]
        )
        result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    rec = last(upstream, "embeddings")
    assert (rec.method, rec.path) == ("POST", "/v1/embeddings")
    assert_runtime_key(rec)
    assert rec.body["input"] == ["alpha", "beta"]
    tokens = result.usage.prompt_tokens
    assert tokens > 0
    cost = float(raw.headers["x-openai-runtime-cost-usd"])
    assert cost == pytest.approx(tokens * 0.02 / 1e6)
    [span] = [s for s in spans.get_finished_spans() if s.name.startswith("embeddings")]
    assert span.attributes is not None
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["gen_ai.usage.input_tokens"] == tokens
    usage_points = points(metrics)["gen_ai.client.token.usage"]
    assert any(p.attributes.get("gen_ai.operation.name") == "embeddings" for p in usage_points)
    assert sidecar.spend["text-embedding-3-small"].prompt_tokens == tokens


async def test_responses_plain_and_streamed(sidecar: Sidecar, upstream: FakeUpstream) -> None:
    async with sdk(sidecar) as client:
        raw = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
        reply = raw.parse()
        assert reply.usage is not None and reply.usage.input_tokens > 0
        assert "x-openai-runtime-cost-usd" in raw.headers
        assert last(upstream, "responses.create").path == "/v1/responses"

        events = [
            e
            async for e in await client.responses.create(
                model="gpt-4o-mini", input="hi", stream=True
            )
        ]
    assert events[-1].type == "response.completed"
    streamed = events[-1].response.usage
    assert streamed is not None
    # A stream has no header left for its cost: the usage the SDK parses carries it.
    priced = sidecar.runner.pricing.cost(
        model=events[-1].response.model,
        prompt_tokens=streamed.input_tokens,
        completion_tokens=streamed.output_tokens,
    )
    assert streamed.openai_runtime_cost_usd == pytest.approx(priced.usd)  # type: ignore[attr-defined]
    model = events[-1].response.model
    totals = sidecar.spend[model]
    assert totals.requests == 2
    assert totals.prompt_tokens == reply.usage.input_tokens + streamed.input_tokens


async def test_legacy_completions_hide_the_usage_they_did_not_ask_for(
    sidecar: Sidecar, upstream: FakeUpstream
) -> None:
    async with sdk(sidecar) as client:
        plain = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
        assert plain.usage is not None and plain.usage.prompt_tokens > 0
        chunks = [
            c
            async for c in await client.completions.create(
                model="gpt-3.5-turbo-instruct", prompt="hi", stream=True
            )
        ]
    assert chunks and all(c.usage is None for c in chunks)
    rec = last(upstream, "completions")
    assert rec.body["stream_options"] == {"include_usage": True}  # asked on the app's behalf
    # Neither allowed nor priced: its spend is counted under "other".
    assert sidecar.spend["other"].requests == 2
    assert sidecar.spend["other"].completion_tokens > 0


async def test_moderations_images_and_models(sidecar: Sidecar, upstream: FakeUpstream) -> None:
    async with sdk(sidecar) as client:
        moderation = await client.moderations.create(input="hello")
        assert moderation.results
        image = await client.images.generate(model="gpt-image-1", prompt="a cat")
        assert image.data and image.data[0].b64_json
        model = await client.models.retrieve("gpt-4o-mini")
        assert model.id == "gpt-4o-mini"
    assert [r.path for r in upstream.requests[-3:]] == [
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/models/gpt-4o-mini",
    ]
    assert all(r.key_fingerprint == fingerprint(OLD_KEY) for r in upstream.requests[-3:])


async def test_audio_both_ways(sidecar: Sidecar, upstream: FakeUpstream) -> None:
    audio = bytes(range(256)) * 400
    async with sdk(sidecar) as client:
        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", io.BytesIO(audio), "audio/wav")
        )
        assert text.text
        speech = await client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input="hello there",
            extra_headers={"x-fake-bytes": "300000"},
        )
        spoken = speech.read()
    rec = last(upstream, "audio.transcriptions")
    assert rec.content_type == "multipart/form-data"
    assert rec.form["model"] == "whisper-1"
    [part] = rec.uploads
    assert part.size == len(audio)
    assert len(spoken) == 300_000
    assert last(upstream, "audio.speech").body["voice"] == "alloy"


async def test_files_batches_and_vector_stores(sidecar: Sidecar, upstream: FakeUpstream) -> None:
    content = b'{"custom_id": "1"}\n' * 1000
    async with sdk(sidecar) as client:
        created = await client.files.create(
            file=("batch.jsonl", io.BytesIO(content)), purpose="batch"
        )
        assert created.bytes == len(content)
        fetched = await client.files.retrieve(created.id)
        assert fetched.id == created.id
        body = await client.files.content(created.id)
        assert len(body.read()) == len(content)
        listed = await client.files.list()
        assert created.id in [f.id async for f in listed]
        batch = await client.batches.create(
            input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert (await client.batches.retrieve(batch.id)).id == batch.id
        await client.batches.cancel(batch.id)
        store = await client.vector_stores.create(name="docs")
        assert (await client.vector_stores.retrieve(store.id)).id == store.id
        await client.vector_stores.delete(store.id)
        deleted = await client.files.delete(created.id)
        assert deleted.deleted
    seen = [(r.method, r.path) for r in upstream.requests]
    assert ("POST", "/v1/files") in seen and ("DELETE", f"/v1/files/{created.id}") in seen
    assert ("POST", f"/v1/batches/{batch.id}/cancel") in seen
    assert all(r.key_fingerprint == fingerprint(OLD_KEY) for r in upstream.requests)


async def test_creating_calls_are_not_repeated_once_upstream_may_have_seen_them(
    sidecar: Sidecar, upstream: FakeUpstream
) -> None:
    failing = {"x-fake-scenario": "server-error", "x-fake-fail-times": "1"}
    async with sdk(sidecar) as client:
        # Inference: retried as before.
        await client.embeddings.create(
            model="text-embedding-3-small",
            input="a",
            extra_headers={**failing, "x-fake-sequence": "emb"},
        )
        assert len([r for r in upstream.requests if r.endpoint == "embeddings"]) == 2
        # A file upload: not repeated after a 500 (upstream may have stored it).
        with pytest.raises(openai.InternalServerError) as caught:
            await client.files.create(
                file=("a.jsonl", io.BytesIO(b"{}\n")),
                purpose="batch",
                extra_headers={**failing, "x-fake-sequence": "file"},
            )
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert len([r for r in upstream.requests if r.endpoint == "files.create"]) == 1
        # With the app's Idempotency-Key a stored response may be retried, key and all.
        await client.responses.create(
            model="gpt-4o-mini",
            input="hi",
            extra_headers={**failing, "x-fake-sequence": "resp", "Idempotency-Key": "k-1"},
        )
    attempts = [r for r in upstream.requests if r.endpoint == "responses.create"]
    assert len(attempts) == 2
    assert [r.headers.get("idempotency-key") for r in attempts] == ["k-1", "k-1"]


async def test_azure_routes_and_deployments(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await azure_sidecar(
        make_sidecar, upstream, ["gpt-4o-mini-prod", "text-embedding-3-small-prod"]
    )
    # An app written for the OpenAI SDK: a model naming a served deployment chooses
    # it, anything else goes to the runtime's deployment; the runtime's api-version.
    async with sdk(sidecar) as client:
        await client.embeddings.create(model="text-embedding-3-small-prod", input="a")
        rec = last(upstream)
        assert rec.path == "/openai/deployments/text-embedding-3-small-prod/embeddings"
        assert rec.query["api-version"] == "2024-10-21"
        assert_runtime_key(rec)
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert last(upstream).path == "/openai/deployments/gpt-4o-prod/chat/completions"
    # An app written for Azure: its deployment (when allowed) and its api-version.
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sidecar.api_url,
        api_key=APP_KEY,
        api_version="2025-03-01-preview",
        max_retries=0,
    ) as azure:
        reply = await azure.chat.completions.create(
            model="gpt-4o-mini-prod", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices
        assert last(upstream).path == "/openai/deployments/gpt-4o-mini-prod/chat/completions"
        assert last(upstream).query["api-version"] == "2025-03-01-preview"
        with pytest.raises(openai.BadRequestError) as caught:
            await azure.embeddings.create(model="someone-elses", input="a")
        assert caught.value.code == "deployment_not_allowed"
        vectors = await azure.embeddings.create(model="text-embedding-3-small-prod", input="a")
        assert vectors.data
        with pytest.raises(openai.BadRequestError) as caught:
            await azure.chat.completions.create(
                model="someone-elses", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.code == "deployment_not_allowed"
        uploaded = await azure.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        assert uploaded.id
    rec = last(upstream, "files.create")
    assert rec.path == "/openai/files" and rec.query["api-version"] == "2025-03-01-preview"


async def test_realtime_is_refused_clearly(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.get(
            sidecar.api_url + "/v1/realtime?model=gpt-realtime",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
        payload = await response.json()
    assert response.status == 501
    assert payload["error"]["code"] == "unsupported_endpoint"
    assert "not proxied" in payload["error"]["message"]


async def test_uploads_have_their_own_limit(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(limits={"maxRequestBytes": 2048, "maxUploadBytes": 4096})
    async with sdk(sidecar) as client:
        # Bigger than the JSON limit, within the upload limit: fine.
        small = await client.files.create(file=("a.bin", io.BytesIO(b"x" * 3000)), purpose="batch")
        assert small.bytes == 3000
        with pytest.raises(openai.APIStatusError) as caught:
            await client.files.create(file=("b.bin", io.BytesIO(b"x" * 5000)), purpose="batch")
    assert caught.value.status_code == 413
    assert len([r for r in upstream.requests if r.endpoint == "files.create"]) == 1


async def test_a_model_outside_the_allow_list_never_reaches_upstream(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(models={"allow": ["gpt-4o-mini", "text-embedding-3-small"]})
    async with sdk(sidecar) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="text-embedding-3-large", input="a")
        assert caught.value.code == "model_not_allowed"
        await client.embeddings.create(model="text-embedding-3-small", input="a")
    assert [r.endpoint for r in upstream.requests] == ["embeddings"]


async def test_a_chat_stream_tells_its_cost_in_the_usage_the_app_asked_for(
    sidecar: Sidecar,
) -> None:
    messages: Any = [{"role": "user", "content": "hello"}]
    async with sdk(sidecar) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages
        )
        header = float(raw.headers["x-openai-runtime-cost-usd"])
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        quiet = [
            c
            async for c in await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, stream=True
            )
        ]
    [usage] = [c.usage for c in chunks if c.usage is not None]
    assert usage.openai_runtime_cost_usd == pytest.approx(header)  # type: ignore[attr-defined]
    # An app that did not ask for usage gets no usage chunk, as upstream would send.
    assert all(c.usage is None for c in quiet)


async def test_an_azure_sdk_app_reaches_every_route_of_the_resource(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    """The Azure SDK's own routes, deployments named by ``model``, its api-version."""
    deployments = [
        "gpt-4o-mini-prod",
        "text-embedding-3-small-prod",
        "gpt-35-turbo-instruct-prod",
        "whisper-prod",
        "tts-prod",
        "dall-e-3-prod",
    ]
    sidecar = await azure_sidecar(make_sidecar, upstream, deployments)
    version = "2025-03-01-preview"
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=sidecar.api_url, api_key=APP_KEY, api_version=version, max_retries=0
    ) as azure:
        vectors = await azure.embeddings.with_raw_response.create(
            model="text-embedding-3-small-prod", input="a"
        )
        assert vectors.parse().data and "x-openai-runtime-cost-usd" in vectors.headers
        text = await azure.completions.create(model="gpt-35-turbo-instruct-prod", prompt="hi")
        assert text.choices
        reply = await azure.responses.create(model="gpt-4o-prod", input="hi")
        assert reply.usage is not None
        heard = await azure.audio.transcriptions.create(
            model="whisper-prod", file=("a.wav", io.BytesIO(b"\0" * 5000), "audio/wav")
        )
        assert heard.text
        spoken = await azure.audio.speech.create(model="tts-prod", voice="alloy", input="hi")
        assert len(spoken.read()) > 0
        image = await azure.images.generate(model="dall-e-3-prod", prompt="a cat")
        assert image.data
        uploaded = await azure.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        assert len((await azure.files.content(uploaded.id)).read()) == 3
        batch = await azure.batches.create(
            input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
        )
        assert (await azure.batches.retrieve(batch.id)).id == batch.id
        models = await azure.models.list()
        assert [m async for m in models]
    seen = {(r.method, r.path) for r in upstream.requests}
    assert {
        ("POST", "/openai/deployments/text-embedding-3-small-prod/embeddings"),
        ("POST", "/openai/deployments/gpt-35-turbo-instruct-prod/completions"),
        ("POST", "/openai/responses"),
        ("POST", "/openai/deployments/whisper-prod/audio/transcriptions"),
        ("POST", "/openai/deployments/tts-prod/audio/speech"),
        ("POST", "/openai/deployments/dall-e-3-prod/images/generations"),
        ("POST", "/openai/files"),
        ("GET", f"/openai/files/{uploaded.id}/content"),
        ("POST", "/openai/batches"),
        ("GET", "/openai/models"),
    } <= seen
    assert {r.query.get("api-version") for r in upstream.requests} == {version}
    assert {r.key_fingerprint for r in upstream.requests} == {fingerprint(OLD_KEY)}
    assert sidecar.spend["text-embedding-3-small"].prompt_tokens > 0


async def test_an_openai_sdk_app_on_an_azure_runtime(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    """Resource-level operations go to the resource with the runtime's api-version."""
    sidecar = await make_sidecar("azure")
    async with sdk(sidecar) as client:
        created = await client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        listed = await client.files.list()
        assert created.id in [f.id async for f in listed]
        reply = await client.responses.create(model="gpt-4o-prod", input="hi")
        assert reply.output_text
    paths = [(r.method, r.path) for r in upstream.requests]
    assert paths == [
        ("POST", "/openai/files"),
        ("GET", "/openai/files"),
        ("POST", "/openai/responses"),
    ]
    assert {r.query.get("api-version") for r in upstream.requests} == {"2024-10-21"}


async def test_azure_v1_routes_keep_their_shape(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    """An app on Azure's GA ``/openai/v1`` routes (the OpenAI SDK, base URL on the resource)."""
    sidecar = await azure_sidecar(make_sidecar, upstream, ["text-embedding-3-small-prod"])
    async with openai.AsyncOpenAI(
        base_url=sidecar.api_url + "/openai/v1", api_key=APP_KEY, max_retries=0
    ) as client:
        vectors = await client.embeddings.create(model="text-embedding-3-small-prod", input="a")
        assert vectors.data
        reply = await client.chat.completions.create(
            model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices
    embeddings, chat = upstream.requests
    assert embeddings.path == "/openai/v1/embeddings" and "api-version" not in embeddings.query
    assert chat.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert {r.key_fingerprint for r in upstream.requests} == {fingerprint(OLD_KEY)}


async def test_an_upload_without_a_length_is_cut_at_the_limit(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    sidecar = await make_sidecar(limits={"maxUploadBytes": 65536})

    async def body() -> Any:
        for _ in range(64):
            yield b"x" * 4096

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sidecar.api_url + "/v1/files",
            data=body(),
            headers={"Content-Type": "application/octet-stream"},
        ) as response,
    ):
        payload = await response.json()
    assert response.status == 413
    assert payload["error"]["code"] == "request_too_large"
    async with sdk(sidecar) as client:  # and the sidecar carries on
        assert (await client.models.list()).data


async def test_a_deployment_route_needs_no_model_in_the_body(
    make_sidecar: SidecarFactory, upstream: FakeUpstream
) -> None:
    """As on Azure: the deployment in the URL chooses the model."""
    sidecar = await azure_sidecar(
        make_sidecar, upstream, ["text-embedding-3-small-prod"], models={"allow": ["gpt-4o-mini"]}
    )
    base = sidecar.api_url + "/openai/deployments"
    query = "?api-version=2024-10-21"
    async with aiohttp.ClientSession() as http:
        chat = await http.post(
            f"{base}/gpt-4o-prod/chat/completions{query}",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        vectors = await http.post(
            f"{base}/text-embedding-3-small-prod/embeddings{query}", json={"input": "a"}
        )
        assert chat.status == 200 and vectors.status == 200
    assert [r.path for r in upstream.requests] == [
        "/openai/deployments/gpt-4o-prod/chat/completions",
        "/openai/deployments/text-embedding-3-small-prod/embeddings",
    ]
