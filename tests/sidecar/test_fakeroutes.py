"""The fake upstream beyond chat: the official SDK, pointed straight at it, parses every answer.

Direct (``/v1``), classic Azure (deployments and resource routes) and Azure's
GA ``/openai/v1`` routes; what the fake recorded; uploads read streaming;
failure scenarios on the new routes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from openai_runtime_sidecar.fakes import replies as fr
from openai_runtime_sidecar.fakes.records import FilePart
from openai_runtime_sidecar.fakes.upstream import FakeUpstream

from .fakeclients import KEY


@pytest.fixture
async def azure_v1(fake: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    """Azure's GA routes, as Microsoft documents them: the plain client, a v1 base URL."""
    async with openai.AsyncOpenAI(
        base_url=fake.url + "/openai/v1", api_key=KEY, max_retries=0
    ) as client:
        yield client


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, data) of each SSE frame, checking the framing on the way."""
    text = raw.decode()
    assert text.endswith("\n\n")
    out: list[tuple[str | None, Any]] = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        event = lines[0].removeprefix("event: ") if lines[0].startswith("event: ") else None
        assert lines[-1].startswith("data: "), block
        data = lines[-1].removeprefix("data: ")
        out.append((event, data if data == "[DONE]" else json.loads(data)))
    return out


# -- embeddings -------------------------------------------------------------------


async def test_embeddings_base64_by_default_and_floats(
    fake: FakeUpstream, direct: openai.AsyncOpenAI
) -> None:
    reply = await direct.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert [e.index for e in reply.data] == [0, 1]
    assert reply.data[0].embedding == fr.vector(b"hello", 1536)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == 2 * (5 // 4 + 1)
    assert reply.model == "text-embedding-3-small"
    floats = await direct.embeddings.create(
        model="text-embedding-3-small", input="hello", encoding_format="float", dimensions=8
    )
    values = floats.data[0].embedding
    assert values == fr.vector(b"hello", 8)
    assert math.isclose(math.fsum(v * v for v in values), 1.0, rel_tol=1e-6)

    first, second = fake.requests
    assert first.body["encoding_format"] == "base64", "the SDK asks for base64 by default"
    assert (first.endpoint, first.method, first.model) == (
        "embeddings",
        "POST",
        "text-embedding-3-small",
    )
    assert first.content_type == "application/json"
    assert first.body_bytes == len(json.dumps(first.body, separators=(",", ":")))
    assert second.body["dimensions"] == 8
    assert [r.outcome for r in fake.requests] == ["ok", "ok"]


async def test_embeddings_refuse_bad_bodies(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    url = fake.url + "/v1/embeddings"
    cases = [
        ({"input": "x"}, "model"),
        ({"model": "text-embedding-3-small"}, "input"),
        ({"model": "text-embedding-3-small", "input": [""]}, "input"),
    ]
    for body, param in cases:
        async with session.post(url, json=body, headers=auth()) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == param
    async with session.post(url, data=b"{nope", headers=auth()) as r:
        assert r.status == 400
        assert (await r.json())["error"]["message"].startswith("We could not parse")


async def test_a_huge_json_body_is_recorded_by_its_short_fields(
    fake: FakeUpstream, direct: openai.AsyncOpenAI
) -> None:
    text = "word " * 400_000  # 2 MB: over the 1 MiB kept whole
    reply = await direct.embeddings.create(model="text-embedding-3-large", input=text)
    assert len(reply.data[0].embedding) == 3072
    assert reply.usage.prompt_tokens == len(text) // 4 + 1
    [rec] = fake.requests
    assert rec.body == {"model": "text-embedding-3-large", "encoding_format": "base64"}
    assert rec.body_bytes > len(text)


# -- Responses API ------------------------------------------------------------------


async def test_responses_plain_retrieve_and_usage_headers(
    fake: FakeUpstream, direct: openai.AsyncOpenAI
) -> None:
    reply = await direct.responses.create(
        model="gpt-4o",
        input="hello there",
        instructions="be brief",
        metadata={"team": "search"},
        extra_headers={"x-fake-cached-tokens": "3", "x-fake-reasoning-tokens": "7"},
    )
    assert reply.id == "resp_1"
    assert reply.status == "completed"
    assert reply.model == "gpt-4o-2024-08-06"
    assert reply.output_text == "Echo: hello there"
    usage = reply.usage
    assert usage is not None
    assert usage.input_tokens == (len("hello there") + len("be brief")) // 4 + 7
    assert usage.input_tokens_details.cached_tokens == 3
    assert usage.output_tokens_details.reasoning_tokens == 7
    assert usage.output_tokens == 4 + 7
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert reply.metadata == {"team": "search"}

    again = await direct.responses.retrieve(reply.id)
    assert again.output_text == reply.output_text
    assert again.usage == reply.usage
    unstored = await direct.responses.create(model="gpt-4o", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await direct.responses.retrieve(unstored.id)
    await direct.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError):
        await direct.responses.retrieve(reply.id)
    assert [r.endpoint for r in fake.requests] == [
        "responses.create",
        "responses.retrieve",
        "responses.create",
        "responses.retrieve",
        "responses.delete",
        "responses.retrieve",
    ]
    assert fake.requests[1].method == "GET"


async def test_responses_stream_helper_and_raw_events(
    fake: FakeUpstream, direct: openai.AsyncOpenAI
) -> None:
    messages = [{"role": "user", "content": [{"type": "input_text", "text": "stream it"}]}]
    async with direct.responses.stream(model="gpt-4o-mini", input=messages) as stream:  # type: ignore[arg-type]
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "Echo: stream it"
    assert final.usage is not None and final.usage.output_tokens == 4
    assert fake.requests[-1].stream

    events = [
        e async for e in await direct.responses.create(model="gpt-4o", input="x", stream=True)
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.usage is not None
    assert last.response.usage.total_tokens == last.response.usage.input_tokens + 4


async def test_responses_sse_framing_and_max_output_tokens(
    fake: FakeUpstream, session: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-4o", "input": "hello", "stream": True, "max_output_tokens": 2}
    async with session.post(fake.url + "/v1/responses", json=body, headers=auth()) as r:
        assert r.content_type == "text/event-stream"
        frames = sse_events(await r.read())
    assert all(name == data["type"] for name, data in frames), "event: names the data's type"
    deltas = [d["delta"] for _, d in frames if d["type"] == "response.output_text.delta"]
    assert deltas == ["Ech", "o: "]  # "Echo: hello" in 4 pieces, cut at 2
    name, final = frames[-1]
    assert name == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["usage"]["output_tokens"] == 2

    headers = auth() | {"x-fake-scenario": "inband-error"}
    async with session.post(fake.url + "/v1/responses", json=body, headers=headers) as r:
        frames = sse_events(await r.read())
    assert frames[-1][0] == "error"
    assert frames[-1][1]["code"] == "server_error"
    assert fake.requests[-1].outcome == "inband-error"


# -- legacy completions, moderations, images ---------------------------------------------------


async def test_completions_plain_and_streamed(
    fake: FakeUpstream, direct: openai.AsyncOpenAI, session: aiohttp.ClientSession
) -> None:
    reply = await direct.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hello")
    assert reply.id == "cmpl-1"
    assert reply.choices[0].text == "Echo: say hello"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        len("say hello") // 4 + 1,
        4,
    )

    stream = await direct.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="say hello",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Echo: say hello"
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage
    assert fake.requests[-1].include_usage

    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "stream": True}
    async with session.post(fake.url + "/v1/completions", json=body, headers=auth()) as r:
        frames = sse_events(await r.read())
    assert frames[-1] == (None, "[DONE]")
    assert all("usage" not in data for _, data in frames[:-1]), "no usage unless asked"
    assert frames[-2][1]["choices"][0]["finish_reason"] == "stop"


async def test_moderations_and_images(fake: FakeUpstream, direct: openai.AsyncOpenAI) -> None:
    verdict = await direct.moderations.create(input=["a kind word", "a [flagged] word"])
    assert verdict.model == "omni-moderation-2024-09-26"
    assert [r.flagged for r in verdict.results] == [False, True]
    assert verdict.results[1].categories.violence
    assert not verdict.results[1].categories.harassment_threatening

    picture = await direct.images.generate(model="dall-e-3", prompt="a lighthouse")
    assert picture.data is not None
    image = picture.data[0]
    assert image.revised_prompt == "a lighthouse"
    assert image.b64_json is not None
    assert base64.b64decode(image.b64_json).startswith(b"\x89PNG\r\n\x1a\n")
    costly = await direct.images.generate(model="gpt-image-1", prompt="a cat", n=2, quality="low")
    assert costly.data is not None and len(costly.data) == 2
    assert costly.usage is not None and costly.usage.output_tokens == 2 * 272
    assert [r.endpoint for r in fake.requests] == ["moderations", *["images.generations"] * 2]


# -- audio ---------------------------------------------------------------------------------------


async def test_transcription_reads_the_multipart_upload(
    fake: FakeUpstream, direct: openai.AsyncOpenAI, session: aiohttp.ClientSession
) -> None:
    audio = bytes(range(256)) * 125  # 32000 bytes: two seconds at the fake's 16 kB/s
    text = await direct.audio.transcriptions.create(model="whisper-1", file=("talk.mp3", audio))
    assert text.text == "Fake transcription of talk.mp3: 32000 bytes."
    assert text.usage is not None and text.usage.type == "duration"
    assert text.usage.seconds == 2
    rec = fake.requests[-1]
    assert rec.content_type == "multipart/form-data"
    assert rec.form == {"model": "whisper-1"}
    assert rec.uploads == [
        FilePart("file", "talk.mp3", "audio/mpeg", 32000, hashlib.sha256(audio).hexdigest())
    ]
    assert rec.body_bytes > 32000
    assert rec.model == "whisper-1"
    assert rec.body == {}, "a multipart body is never kept"

    plain = await direct.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", b"RIFF" * 10), response_format="text"
    )
    assert plain == "Fake transcription of a.wav: 40 bytes.\n"
    verbose = await direct.audio.transcriptions.create(
        model="whisper-1", file=("b.mp3", b"x" * 8000), response_format="verbose_json"
    )
    assert verbose.text == "Fake transcription of b.mp3: 8000 bytes."
    assert verbose.duration == 0.5
    assert verbose.segments is not None and verbose.segments[0].end == 0.5

    # The SDK deprecates translations; apps still send them.
    form = aiohttp.FormData({"model": "whisper-1", "response_format": "text"})
    form.add_field("file", b"x" * 100, filename="c.ogg", content_type="audio/ogg")
    async with session.post(fake.url + "/v1/audio/translations", data=form, headers=auth()) as r:
        assert r.status == 200
        assert await r.text() == "Fake translation of c.ogg: 100 bytes.\n"
    assert fake.requests[-1].form == {"model": "whisper-1", "response_format": "text"}
    assert fake.requests[-1].uploads[0].content_type == "audio/ogg"


async def test_speech_is_streamed_binary_of_the_asked_size(
    fake: FakeUpstream, direct: openai.AsyncOpenAI, session: aiohttp.ClientSession
) -> None:
    audio = await direct.audio.speech.create(
        model="tts-1", voice="alloy", input="hello", extra_headers={"x-fake-bytes": "100000"}
    )
    assert len(audio.content) == 100_000
    assert audio.response.headers["content-type"] == "audio/mpeg"
    again = await direct.audio.speech.create(
        model="tts-1", voice="alloy", input="hello", extra_headers={"x-fake-bytes": "100000"}
    )
    assert again.content == audio.content
    default = await direct.audio.speech.create(
        model="tts-1", voice="alloy", input="hello", response_format="wav"
    )
    assert len(default.content) == 400 * len("hello")
    assert default.response.headers["content-type"] == "audio/wav"

    body = {"model": "tts-1", "voice": "alloy", "input": "hello"}
    headers = auth() | {"x-fake-bytes": "100000"}
    async with session.post(fake.url + "/v1/audio/speech", json=body, headers=headers) as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        pieces = [piece async for piece in r.content.iter_chunked(1 << 20)]
    assert b"".join(pieces) == audio.content

    headers = auth() | {"x-fake-bytes": "100000", "x-fake-scenario": "reset-mid-stream"}
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(fake.url + "/v1/audio/speech", json=body, headers=headers) as r:
            await r.read()
    assert fake.requests[-1].outcome == "reset"


# -- files, batches, vector stores, models -------------------------------------------------------


async def test_file_lifecycle(fake: FakeUpstream, direct: openai.AsyncOpenAI) -> None:
    lines = b'{"custom_id":"1"}\n{"custom_id":"2"}\n'
    created = await direct.files.create(file=("in.jsonl", lines), purpose="batch")
    assert (created.id, created.bytes, created.filename) == ("file-1", len(lines), "in.jsonl")
    assert (created.purpose, created.status) == ("batch", "processed")
    other = await direct.files.create(file=("notes.txt", b"notes"), purpose="assistants")

    assert (await direct.files.retrieve(created.id)).bytes == len(lines)
    assert (await direct.files.content(created.id)).content == lines, "small files read back"
    assert [f.id async for f in direct.files.list()] == [other.id, created.id], "newest first"
    assert [f.id async for f in direct.files.list(purpose="batch")] == [created.id]
    page = await direct.files.list(limit=1, order="asc")
    assert [f.id for f in page.data] == [created.id] and page.has_more

    deleted = await direct.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as caught:
        await direct.files.retrieve(created.id)
    assert caught.value.message.endswith(f"No such File object: {created.id}")
    assert fake.requests[0].form == {"purpose": "batch"}
    assert fake.requests[0].uploads[0].sha256 == hashlib.sha256(lines).hexdigest()
    assert fake.store.files.keys() == {other.id}


async def test_big_file_content_is_regenerated_filler(
    fake: FakeUpstream, direct: openai.AsyncOpenAI
) -> None:
    data = b"\x01" * 300_000
    created = await direct.files.create(file=("big.bin", data), purpose="user_data")
    stored = fake.store.files[created.id]
    assert stored.content is None, "beyond KEEP_FILE only size and hash are kept"
    content = (await direct.files.content(created.id)).content
    assert len(content) == 300_000
    expected = b"".join(fr.filler(300_000, hashlib.sha256(data).digest(), 4096))
    assert content == expected


async def test_batch_lifecycle(fake: FakeUpstream, direct: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await direct.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.param == "input_file_id"
    source = await direct.files.create(file=("in.jsonl", b"{}\n{}\n{}\n"), purpose="batch")
    batch = await direct.batches.create(
        input_file_id=source.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
        extra_headers={"Idempotency-Key": "batch-1"},
    )
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert batch.metadata == {"job": "nightly"}
    assert fake.requests[-1].headers["idempotency-key"] == "batch-1"
    assert (await direct.batches.retrieve(batch.id)).input_file_id == source.id
    assert [b.id async for b in direct.batches.list()] == [batch.id]
    assert (await direct.batches.cancel(batch.id)).status == "cancelling"
    assert (await direct.batches.retrieve(batch.id)).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        await direct.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        await direct.batches.retrieve("batch_nope")


async def test_vector_store_lifecycle(fake: FakeUpstream, direct: openai.AsyncOpenAI) -> None:
    source = await direct.files.create(file=("kb.txt", b"knowledge"), purpose="assistants")
    store = await direct.vector_stores.create(
        name="kb",
        file_ids=[source.id, "file-gone"],
        expires_after={"anchor": "last_active_at", "days": 2},
    )
    assert (store.name, store.status, store.usage_bytes) == ("kb", "completed", 9)
    assert (store.file_counts.completed, store.file_counts.failed) == (1, 1)
    assert store.expires_at == store.created_at + 2 * 86400
    assert fake.requests[-1].headers["openai-beta"] == "assistants=v2"
    renamed = await direct.vector_stores.update(store.id, name="kb2")
    assert renamed.name == "kb2"
    assert (await direct.vector_stores.retrieve(store.id)).name == "kb2"
    assert [s.id async for s in direct.vector_stores.list()] == [store.id]
    assert (await direct.vector_stores.delete(store.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await direct.vector_stores.retrieve(store.id)


async def test_models(direct: openai.AsyncOpenAI, azure: openai.AsyncAzureOpenAI) -> None:
    model = await direct.models.retrieve("text-embedding-3-large")
    assert (model.id, model.object) == ("text-embedding-3-large", "model")
    assert {"gpt-4o", "whisper-1", "tts-1"} <= {m.id async for m in direct.models.list()}
    with pytest.raises(openai.NotFoundError) as caught:
        await direct.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"
    assert (await azure.models.retrieve("gpt-4o-2024-08-06")).id == "gpt-4o-2024-08-06"
