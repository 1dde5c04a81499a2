"""The fake upstream's new routes across Azure's dialects, under failure, and under a big upload.

Classic Azure (deployment and resource routes, ``api-version``), Azure's GA
``/openai/v1`` routes, failure scenarios and retries on JSON routes and
uploads, holds on downloads, and a 50 MB upload read without holding it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.payload import AsyncIterablePayload

from openai_runtime_sidecar.fakes.upstream import FakeUpstream
from tests.support import until

from .fakeclients import API_VERSION, KEY

USER = {"role": "user", "content": "hello"}


def azure_client(fake: FakeUpstream, **options: Any) -> openai.AsyncAzureOpenAI:
    options = {"api_key": KEY, "api_version": API_VERSION, "max_retries": 0} | options
    return openai.AsyncAzureOpenAI(azure_endpoint=fake.url, **options)


def direct_client(fake: FakeUpstream, base: str = "/v1", **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=fake.url + base, **({"api_key": KEY, "max_retries": 0} | options)
    )


# -- classic Azure -----------------------------------------------------------------------


async def test_azure_deployment_routes(fake: FakeUpstream) -> None:
    async with azure_client(fake) as azure:
        raw = await azure.embeddings.with_raw_response.create(
            model="text-embedding-3-small-prod", input="hi"
        )
        assert raw.headers["apim-request-id"]
        assert raw.parse().model == "text-embedding-3-small"
        text = await azure.completions.create(model="gpt-35-turbo-instruct-prod", prompt="hi")
        assert (text.model, text.choices[0].text) == ("gpt-35-turbo-instruct", "Echo: hi")
        heard = await azure.audio.transcriptions.create(
            model="whisper-prod", file=("a.mp3", b"x" * 16)
        )
        assert heard.text == "Fake transcription of a.mp3: 16 bytes."
        audio = await azure.audio.speech.create(model="tts-prod", voice="alloy", input="hey")
        assert len(audio.content) == 400 * 3
        picture = await azure.images.generate(model="dall-e-3-prod", prompt="a boat")
        assert picture.data is not None and picture.data[0].revised_prompt == "a boat"
    deployments = {
        "text-embedding-3-small-prod": ("embeddings", "text-embedding-3-small"),
        "gpt-35-turbo-instruct-prod": ("completions", "gpt-35-turbo-instruct"),
        "whisper-prod": ("audio/transcriptions", "whisper"),
        "tts-prod": ("audio/speech", "tts"),
        "dall-e-3-prod": ("images/generations", "dall-e-3"),
    }
    assert [(r.path, r.deployment, r.model) for r in fake.requests] == [
        (f"/openai/deployments/{name}/{path}", name, model)
        for name, (path, model) in deployments.items()
    ]
    assert all(r.variant == "azure" and r.outcome == "ok" for r in fake.requests)
    assert all(r.query == {"api-version": API_VERSION} for r in fake.requests)
    assert fake.requests[2].uploads[0].size == 16
    assert "api-key" not in fake.requests[0].headers


async def test_azure_resource_routes(fake: FakeUpstream) -> None:
    async with azure_client(fake) as azure:
        created = await azure.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
        assert (await azure.files.content(created.id)).content == b"{}\n"
        assert [f.id async for f in azure.files.list()] == [created.id]
        batch = await azure.batches.create(
            input_file_id=created.id, endpoint="/chat/completions", completion_window="24h"
        )
        assert (await azure.batches.retrieve(batch.id)).endpoint == "/chat/completions"
        reply = await azure.responses.create(model="gpt-4o-mini-prod", input="hello")
        assert (reply.model, reply.output_text) == ("gpt-4o-mini-2024-07-18", "Echo: hello")
        assert (await azure.responses.retrieve(reply.id)).id == reply.id
        assert "gpt-4o-2024-08-06" in {m.id async for m in azure.models.list()}
        assert (await azure.files.delete(created.id)).deleted
    assert [r.path for r in fake.requests] == [
        "/openai/files",
        f"/openai/files/{created.id}/content",
        "/openai/files",
        "/openai/batches",
        f"/openai/batches/{batch.id}",
        "/openai/responses",
        f"/openai/responses/{reply.id}",
        "/openai/models",
        f"/openai/files/{created.id}",
    ]
    responses = fake.requests[5]
    assert (responses.deployment, responses.model) == ("gpt-4o-mini-prod", "gpt-4o-mini-2024-07-18")
    assert all(r.variant == "azure" and r.outcome == "ok" for r in fake.requests)


async def test_azure_refusals(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with azure_client(fake) as azure:
        with pytest.raises(openai.NotFoundError) as missing:
            await azure.embeddings.create(model="nope", input="hi")
        assert missing.value.code == "DeploymentNotFound"
        with pytest.raises(openai.NotFoundError) as missing:
            await azure.responses.create(model="nope", input="hi")
        assert missing.value.code == "DeploymentNotFound"
        with pytest.raises(openai.BadRequestError) as unable:
            await azure.embeddings.create(model="gpt-4o-prod", input="hi")
        assert unable.value.code == "OperationNotSupported"
        assert "embeddings operation" in unable.value.message
        with pytest.raises(openai.AuthenticationError):
            await azure.with_options(api_key="sk-wrong").files.list()

    headers = {"api-key": KEY}
    async with session.get(fake.url + "/openai/files", headers=headers) as r:
        assert r.status == 404, "classic routes need an api-version"
        assert (await r.json())["error"] == {"code": "404", "message": "Resource not found"}
    url = fake.url + f"/openai/moderations?api-version={API_VERSION}"
    async with session.post(url, json={"input": "x"}, headers=headers) as r:
        assert r.status == 404, "Azure has no moderations"
        assert (await r.json())["error"]["code"] == "404"
    assert fake.requests[-1].variant == "azure"
    assert fake.requests[-1].endpoint == ""


# -- Azure's GA /openai/v1 routes ----------------------------------------------------------


async def test_azure_v1_routes(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    async with direct_client(fake, "/openai/v1") as v1:
        chat = await v1.chat.completions.create(model="gpt-4o-prod", messages=[USER])  # type: ignore[list-item]
        assert (chat.model, chat.choices[0].message.content) == ("gpt-4o-2024-08-06", "Echo: hello")
        assert chat.prompt_filter_results is not None  # type: ignore[attr-defined]
        vectors = await v1.embeddings.create(model="text-embedding-3-small-prod", input="hi")
        assert len(vectors.data[0].embedding) == 1536
        reply = await v1.responses.create(model="gpt-4o-prod", input="hi")
        assert reply.model == "gpt-4o-2024-08-06"
        created = await v1.files.create(file=("a.txt", b"a"), purpose="assistants")
        assert (await v1.files.retrieve(created.id)).bytes == 1
        with pytest.raises(openai.NotFoundError) as missing:
            await v1.embeddings.create(model="text-embedding-3-large", input="hi")
        assert missing.value.code == "DeploymentNotFound", "the model names a deployment"
    assert all(r.query == {} for r in fake.requests), "no api-version on the GA routes"
    assert [r.deployment for r in fake.requests[:3]] == [
        "gpt-4o-prod",
        "text-embedding-3-small-prod",
        "gpt-4o-prod",
    ]
    assert {r.variant for r in fake.requests} == {"azure"}

    url = fake.url + "/openai/v1/files"
    async with session.get(url, headers={"api-key": KEY}) as r:
        assert r.status == 200, "the api-key header works too"
        assert r.headers["apim-request-id"]
    async with session.get(url) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "401"


# -- failure scenarios on the new routes --------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "error", "status"),
    [
        ("server-error", openai.InternalServerError, 500),
        ("rate-limit", openai.RateLimitError, 429),
        ("overloaded", openai.InternalServerError, 503),
        ("html-502", openai.InternalServerError, 502),
    ],
)
async def test_scenarios_strike_every_route(
    fake: FakeUpstream, scenario: str, error: type[openai.APIStatusError], status: int
) -> None:
    headers = {"x-fake-scenario": scenario}
    async with direct_client(fake, default_headers=headers) as client:
        calls = [
            client.embeddings.create(model="text-embedding-3-small", input="x"),
            client.files.create(file=("a.txt", b"abc"), purpose="assistants"),
            client.files.list(),
            client.audio.speech.create(model="tts-1", voice="alloy", input="x"),
            client.responses.create(model="gpt-4o", input="x", stream=True),
            client.batches.retrieve("batch_1"),
        ]
        for call in calls:
            with pytest.raises(error) as caught:
                await call
            assert caught.value.status_code == status
            if scenario == "rate-limit":
                assert caught.value.response.headers["retry-after"] == "1"
    assert [r.outcome for r in fake.requests] == [f"error:{status}"] * len(calls)
    assert {r.scenario for r in fake.requests} == {scenario}
    assert fake.store.files == {}, "a failed upload stores nothing"
    assert fake.requests[1].uploads[0].size == 3, "the upload was read before failing"


async def test_sdk_retries_an_upload_through_fail_times(fake: FakeUpstream) -> None:
    headers = {
        "x-fake-scenario": "rate-limit-ms",
        "x-fake-retry-after-ms": "1",
        "x-fake-fail-times": "2",
        "x-fake-sequence": "upload",
    }
    data = b"retry me" * 1000
    async with direct_client(fake, max_retries=2) as client:
        created = await client.files.create(
            file=("r.bin", data), purpose="user_data", extra_headers=headers
        )
    assert [r.outcome for r in fake.requests] == ["error:429", "error:429", "ok"]
    assert [r.uploads[0].sha256 for r in fake.requests] == [hashlib.sha256(data).hexdigest()] * 3
    assert fake.requests[-1].headers["x-stainless-retry-count"] == "2"
    assert list(fake.store.files) == [created.id]


async def test_connection_failures_on_new_routes(fake: FakeUpstream) -> None:
    async with direct_client(fake) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.embeddings.create(
                model="text-embedding-3-small",
                input="x",
                extra_headers={"x-fake-scenario": "reset-before-headers"},
            )
        assert fake.requests[-1].outcome == "reset"
        with pytest.raises(openai.APITimeoutError):
            await client.with_options(timeout=0.05).files.list(
                extra_headers={"x-fake-scenario": "hang"}
            )
    await until(lambda: fake.requests[-1].outcome == "cancelled")


async def test_hold_pauses_a_download_after_its_first_piece(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    async with direct_client(fake) as client:
        created = await client.files.create(
            file=("big.bin", b"\x07" * 300_000), purpose="user_data"
        )
    first_piece = asyncio.Event()

    async def download() -> bytes:
        url = fake.url + f"/v1/files/{created.id}/content"
        headers = {"Authorization": f"Bearer {KEY}", "x-fake-hold": "dl"}
        async with session.get(url, headers=headers) as r:
            received = b""
            async for data in r.content.iter_any():
                received += data
                first_piece.set()
            return received

    task = asyncio.create_task(download())
    await fake.wait_held("dl")
    await first_piece.wait()
    assert not task.done()
    fake.release("dl")
    assert len(await task) == 300_000
    assert fake.requests[-1].outcome == "ok"


# -- bodies: streaming uploads and refusals ---------------------------------------------------


def _memory() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in kB."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


async def test_a_50mb_upload_is_read_streaming(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    """The fake (in this very process) must not hold the upload: peak RSS stays flat.

    The client streams too: 800 pieces of 64 KiB made on the fly.
    """
    size, piece = 50 * 1024 * 1024, 64 * 1024
    digest = hashlib.sha256()
    samples: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(size // piece):
            chunk = hashlib.sha256(i.to_bytes(4, "big")).digest() * (piece // 32)
            digest.update(chunk)
            samples.append(_memory()["VmRSS"])
            yield chunk

    peak_resettable = _reset_peak()
    before = _memory()["VmRSS"]
    with aiohttp.MultipartWriter("form-data") as form:
        form.append("user_data").set_content_disposition("form-data", name="purpose")
        upload = AsyncIterablePayload(body(), content_type="application/octet-stream")
        upload.set_content_disposition("form-data", name="file", filename="big.bin")
        form.append_payload(upload)
        async with session.post(
            fake.url + "/v1/files", data=form, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            assert r.status == 200, await r.text()
            created = await r.json()
    after = _memory()
    peak = max([*samples, after["VmRSS"], after["VmHWM"] if peak_resettable else 0])
    assert (peak - before) < 20 * 1024, f"RSS grew by {peak - before} kB"

    assert created["bytes"] == size
    [part] = fake.requests[-1].uploads
    assert (part.name, part.filename, part.size) == ("file", "big.bin", size)
    assert part.sha256 == digest.hexdigest()
    assert fake.requests[-1].body_bytes > size
    assert fake.store.files[created["id"]].content is None


async def test_bodies_the_api_refuses(fake: FakeUpstream, session: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    async with session.post(fake.url + "/v1/files", json={"purpose": "batch"}, headers=auth) as r:
        assert r.status == 400
        assert "expected multipart/form-data" in (await r.json())["error"]["message"]
    form = aiohttp.FormData({"purpose": "batch"}, default_to_multipart=True)
    async with session.post(fake.url + "/v1/files", data=form, headers=auth) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "file"
    broken = {"Content-Type": "multipart/form-data; boundary=xyz"} | auth
    async with session.post(fake.url + "/v1/files", data=b"--xyz\r\nnope", headers=broken) as r:
        assert r.status == 400
    async with session.get(fake.url + "/v1/embeddings", headers=auth) as r:
        assert r.status == 404
        assert (await r.json())["error"]["message"] == "Invalid URL (GET /v1/embeddings)"
    async with session.get(fake.url + "/v1/files/file-9/content", headers=auth) as r:
        assert r.status == 404
        assert (await r.json())["error"]["message"] == "No such File object: file-9"
    async with session.get(fake.url + "/v1/files?limit=0", headers=auth) as r:
        assert r.status == 400
    body = {"model": "tts-1", "voice": "alloy", "input": "hi", "stream_format": "sse"}
    async with session.post(fake.url + "/v1/audio/speech", json=body, headers=auth) as r:
        frames = [json.loads(b.removeprefix("data: ")) for b in (await r.text()).split("\n\n") if b]
    assert [f["type"] for f in frames] == ["speech.audio.delta", "speech.audio.done"]
    assert frames[-1]["usage"]["output_tokens"] == 1
