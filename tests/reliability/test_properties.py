"""Property-based tests: request validation, the config parser, the SSE decoder.

- Whatever is posted, the sidecar answers with an OpenAI-shaped error or a
  completion: never a 500, never a traceback. (The model allow-list holds
  the fake upstream's ``fake-<scenario>`` models back, so only well-formed
  calls for ``gpt-4o-mini`` reach it.)
- Whatever a config file holds, loading it gives a valid config or a
  :class:`ConfigError` with a message, never another exception.
- The SSE decoder keeps its promises for arbitrary bytes in arbitrary
  chunkings (the same checks as the fuzz target, which this also smoke-tests).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openai_runtime_sidecar.config import SidecarConfig, load_sidecar_config
from openai_runtime_sidecar.configfile import ConfigError

from .harness import CHAT, Rig, assert_openai_error, running

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"

# -- what gets posted ------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant"]), "content": json_values}
        ),
        min_size=1,
        max_size=3,
    ),
    json_values,
)
chat_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["gpt-4o-mini", "gpt-4o", "fake-hang", ""]), scalars),
        "messages": messages,
        "stream": st.one_of(st.booleans(), json_values),
        "stream_options": st.one_of(st.just({"include_usage": True}), json_values),
        "max_tokens": st.one_of(st.integers(-2, 10**20), json_values),
        "max_completion_tokens": st.one_of(st.integers(-2, 64), json_values),
        "n": st.one_of(st.integers(-1, 3), json_values),
        "temperature": json_values,
        "tools": json_values,
    },
)
bodies = st.one_of(
    chat_like.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def check_answer(status: int, content_type: str, raw: bytes) -> None:
    assert status < 500, (status, raw[:300])
    assert b"Traceback" not in raw
    if status == 200:
        if content_type.startswith("text/event-stream"):
            assert raw.rstrip().endswith(b"data: [DONE]"), raw[-200:]
        else:
            assert json.loads(raw)["object"] == "chat.completion"
    else:
        assert content_type.startswith("application/json"), content_type
        assert_openai_error(json.loads(raw))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    models = {"allow": ["gpt-4o-mini"], "default": "gpt-4o-mini"}
    async with running(tmp_path, models=models, chunks=2, limits={"maxRequestBytes": 4096}) as rig:
        yield rig


# One sidecar for all examples: that is the point (it must survive them all).
SHARED = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SHARED
@given(data=bodies)
async def test_any_body_gets_an_openai_shaped_answer(rig: Rig, data: bytes) -> None:
    answer = await rig.send(data=data, headers={"Content-Type": "application/json"})
    check_answer(answer.status, answer.headers.get("Content-Type", ""), answer.raw)


@SHARED
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from([CHAT, "/v1/models", "/chat/completions", "/v1", "/"]),
        st.text(
            alphabet=st.characters(
                min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#%"
            ),
            max_size=30,
        ).map(lambda p: "/" + p),
    ),
    data=bodies,
)
async def test_any_route_and_method_gets_an_openai_shaped_answer(
    rig: Rig, method: str, path: str, data: bytes
) -> None:
    answer = await rig.send(
        method=method, path=path, data=data, headers={"Content-Type": "application/json"}
    )
    if answer.status == 200 and path == "/v1/models":
        assert answer.json["object"] == "list"
    else:
        check_answer(answer.status, answer.headers.get("Content-Type", ""), answer.raw)


# -- config files --------------------------------------------------------------

durations = st.one_of(
    st.sampled_from(["250ms", "1m30s", "5s", "1h", "0", "-1s", "1e400s", "", "5 s", "µs", "1.5"]),
    st.integers(min_value=-10, max_value=10**400),
    st.floats(),
    json_values,
)
policy = st.fixed_dictionaries(
    {},
    optional={
        "requestsPerMinute": st.one_of(st.integers(-1, 10**20), json_values),
        "tokensPerMinute": st.one_of(st.none(), st.integers(-1, 10**6)),
        "maxConcurrency": json_values,
        "maxQueueWait": durations,
        "maxAttempts": st.one_of(st.integers(-1, 30), json_values),
        "initialBackoff": durations,
        "maxBackoff": durations,
        "jitter": st.one_of(st.floats(), json_values),
        "failureThreshold": json_values,
        "openDuration": durations,
        "connect": durations,
        "firstByte": durations,
        "streamIdle": durations,
        "total": durations,
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "variant": st.one_of(
            st.just({"direct": {}}),
            st.just({"azure": {"resource": "r", "deployment": "d"}}),
            st.fixed_dictionaries({"direct": st.fixed_dictionaries({"endpoint": json_values})}),
            st.fixed_dictionaries(
                {"azure": st.dictionaries(st.sampled_from(["deployment", "apiVersion"]), scalars)}
            ),
            json_values,
        ),
        "apiKey": st.one_of(st.just({"file": "/k"}), st.just({"env": "K"}), json_values),
        "runtime": json_values,
        "models": st.one_of(
            st.fixed_dictionaries({"allow": json_values, "default": json_values}), json_values
        ),
        "listen": st.one_of(
            st.fixed_dictionaries({"api": st.sampled_from(["127.0.0.1:8787", "::1", ":99999"])}),
            json_values,
        ),
        "limits": st.fixed_dictionaries({"maxRequestBytes": json_values}),
        "watch": st.fixed_dictionaries({"interval": durations, "shutdownGrace": durations}),
        "rateLimits": policy,
        "retry": policy,
        "circuitBreaker": policy,
        "timeouts": policy,
        "pricing": st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    },
)


def load(text: str, suffix: str) -> SidecarConfig | None:
    """Load ``text`` as a config file; ``None`` when refused with a message."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"config{suffix}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            return load_sidecar_config(path, environ={})
        except ConfigError as refused:
            message = str(refused)
    assert message.strip(), "a refusal says why"
    return None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=configs)
def test_any_config_document_is_valid_or_refused_with_a_message(document: dict[str, Any]) -> None:
    config = load(json.dumps(document), ".json")
    if config is not None:
        assert config.variant.selected is not None
    # The same document as YAML gives the same verdict.
    assert (load(yaml.safe_dump(document), ".yaml") is None) == (config is None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(["{", "}", "[", "]", ":", "-", " ", "\n", "a", "&x", "*x", "!!"])
        ).map("".join),
    ),
    suffix=st.sampled_from([".yaml", ".json"]),
)
def test_any_config_text_is_valid_or_refused_with_a_message(text: str, suffix: str) -> None:
    load(text, suffix)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        "variant: {direct: {}}\napiKey: {file: /k}\nwatch: {interval: " + "9" * 400 + "}\n",
        "variant: {direct: {}}\napiKey: {file: /k}\ntimeouts: {total: " + "9" * 4000 + "}\n",
    ],
    ids=["nested-5000-deep", "interval-400-digits", "total-4000-digits"],
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_hostile_config_files_are_refused_with_a_message(text: str, suffix: str) -> None:
    if suffix == ".json" and not text.startswith("["):
        text = json.dumps(yaml.safe_load(text))
    assert load(text, suffix) is None


# -- the SSE decoder: the fuzz target's checks, under hypothesis too --------------


def fuzz_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_sse", FUZZ_DIR / "fuzz_sse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = fuzz_target()
SSE_PIECES = st.sampled_from(
    [
        *(b"data:", b"data: ", b"event: e", b"id: 1", b"retry: 7", b": c", b"x", b"{}", b"[DONE]"),
        *(b"\r", b"\n", b"\r\n", b"\n\n", b"\xef\xbb\xbf", b"\xff", b"\x00", b"\xe2\x82"),
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.one_of(st.binary(max_size=400), st.lists(SSE_PIECES, max_size=60).map(b"".join)),
    data=st.data(),
)
def test_sse_decoder_any_bytes_any_chunking(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    FUZZ.check(stream, chunks)


def test_fuzz_target_runs_on_its_seed_corpus_and_random_inputs() -> None:
    seeds = sorted((FUZZ_DIR / "corpus" / "sse").iterdir())
    assert len(seeds) >= 10
    for seed in seeds:
        FUZZ.TestOneInput(seed.read_bytes())
    rng = random.Random(20_240_601)
    for _ in range(300):
        FUZZ.TestOneInput(rng.randbytes(rng.randrange(0, 200)))
    # What a seed means: a chunking header, then the stream.
    stream, chunks = FUZZ.split(b"\x02\x01\x03data: x\n\n")
    assert stream == b"data: x\n\n" and chunks[:3] == [b"d", b"ata", b":"]
    assert callable(FUZZ.main)
