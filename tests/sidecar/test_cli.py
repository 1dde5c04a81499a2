"""The command line: the demo story, the price tool, usage errors."""

from __future__ import annotations

import re

import pytest

from openai_runtime_sidecar.cli import main
from openai_runtime_sidecar.fakes import demo


async def test_demo_rotates_mid_stream_without_a_failed_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await demo._run("gpt-4o-mini", real=False) == 0
    out = capsys.readouterr().out
    assert "failed requests: 0" in out
    rotated = re.search(r"key (sha256:\w{12}) -> (sha256:\w{12})", out)
    assert rotated is not None and rotated.group(1) != rotated.group(2)
    seen = re.search(r"upstream saw:\s+\[(.*)\]", out)
    assert seen is not None
    fingerprints = [f.strip(" '") for f in seen.group(1).split(",")]
    # Non-streamed and streamed calls on the old key, the call after on the new one.
    assert fingerprints == [rotated.group(1), rotated.group(1), rotated.group(2)]


def test_pricing_prints_one_calls_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pricing", "--model", "gpt-4o", "--prompt", "1000000"]) == 0
    assert capsys.readouterr().out.strip() == "gpt-4o: 2.500000 USD"
    assert main(["pricing", "--model", "no-such-model", "--prompt", "1"]) == 1


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as caught:
        main(["no-such-command"])
    assert caught.value.code == 2
