"""JSON logs: one parseable object per line, request fields from CallOutcome only."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from openai_runtime_sidecar.logs import (
    JsonFormatter,
    RequestLog,
    configure_logging,
    request_fields,
)
from openai_runtime_sidecar.runner.errors import ContentFiltered
from openai_runtime_sidecar.runner.pricing import Cost
from openai_runtime_sidecar.runner.results import CallOutcome, Usage

SECRET_PROMPT = "SENTINEL-PROMPT tell me the launch codes"
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger configured into a buffer; restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("debug", buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_one_json_object_per_line(stream: io.StringIO) -> None:
    log = logging.getLogger("openai_runtime_sidecar.test")
    log.info("hello %s", "world")
    log.warning("multi\nline")
    first, second = lines(stream)
    assert first.keys() == {"ts", "level", "logger", "msg"}
    assert first["level"] == "INFO"
    assert first["logger"] == "openai_runtime_sidecar.test"
    assert first["msg"] == "hello world"
    assert RFC3339_UTC.match(first["ts"])
    stamp = datetime.strptime(first["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert second["msg"] == "multi\nline"  # escaped by JSON: still one line


def test_fields_are_merged_without_overwriting_core_keys(stream: io.StringIO) -> None:
    logging.getLogger("x").info(
        "request",
        extra={"fields": {"status": 200, "msg": "spoof", "tags": ("a",), "path": Path("/v1")}},
    )
    (line,) = lines(stream)
    assert line["msg"] == "request"
    assert line["field.msg"] == "spoof"
    assert line["status"] == 200
    assert line["tags"] == ["a"]
    assert line["path"] == "/v1"


def test_unknown_objects_are_logged_by_type_not_by_content(stream: io.StringIO) -> None:
    class Body:
        def __str__(self) -> str:
            return SECRET_PROMPT

    logging.getLogger("x").info(
        "odd", extra={"fields": {"body": Body(), "raw": SECRET_PROMPT.encode()}}
    )
    (line,) = lines(stream)
    assert line["body"] == "<Body>"
    assert line["raw"] == f"<{len(SECRET_PROMPT.encode())} bytes>"
    assert "SENTINEL" not in stream.getvalue()


def test_exceptions_are_type_and_message_only(stream: io.StringIO) -> None:
    def fail(secret_local: str) -> None:
        raise ValueError("bad value")

    try:
        fail(SECRET_PROMPT)
    except ValueError:
        logging.getLogger("x").exception("it failed", stack_info=True)
    (line,) = lines(stream)
    assert line["exception"] == {"type": "ValueError", "message": "bad value"}
    assert line["level"] == "ERROR"
    text = stream.getvalue()
    assert "Traceback" not in text and "SENTINEL" not in text and "fail(" not in text


def test_level_filters_and_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    other = io.StringIO()
    configure_logging("WARNING", other)
    log = logging.getLogger("x")
    log.info("dropped")
    log.warning("kept")
    assert stream.getvalue() == ""  # the first handler is gone
    assert [line["msg"] for line in lines(other)] == ["kept"]


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("chatty")


def test_formatter_alone() -> None:
    record = logging.LogRecord("n", logging.DEBUG, __file__, 1, "x=%d", (3,), None)
    record.created = 0.0
    assert json.loads(JsonFormatter().format(record)) == {
        "ts": "1970-01-01T00:00:00.000Z",
        "level": "DEBUG",
        "logger": "n",
        "msg": "x=3",
    }


def full_info() -> CallOutcome:
    return CallOutcome(
        stream=True,
        variant="direct",
        server_address="api.openai.com",
        request_model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        response_id="chatcmpl-1",
        request_id="req-9",
        status=200,
        usage=Usage(100, 20, 120, cached_tokens=64),
        finish_reasons=("stop",),
        attempts=2,
        credential_fingerprint="sha256:0123456789ab",
        time_to_first_byte=0.2505,
        cost=Cost(0.0004, 0.0002, 0.0001, 0.0001, "gpt-4o", True, False),
    )


def test_request_fields_from_a_full_call() -> None:
    fields = request_fields(
        full_info(),
        status=200,
        duration=1.23456,
        error_type=None,
        method="POST",
        path="/v1/chat/completions?api-version=2024-10-21",
    )
    assert fields == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 1234.56,
        "error_type": None,
        "model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "stream": True,
        "attempts": 2,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cached_tokens": 64,
        "usage_estimated": False,
        "cost_usd": 0.0004,
        "cost_estimated": False,
        "finish_reasons": ["stop"],
        "ttfb_ms": 250.5,
        "request_id": "req-9",
        "credential_fingerprint": "sha256:0123456789ab",
        "backend": "primary",
    }


def test_request_fields_before_the_runner_ran() -> None:
    fields = request_fields(
        None,
        status=400,
        duration=0.001,
        error_type="invalid_json",
        method="POST",
        path="/v1/chat/completions",
    )
    assert fields["status"] == 400
    assert fields["error_type"] == "invalid_json"
    assert fields["duration_ms"] == 1.0
    # The same keys as a full call: one shape for the log pipeline.
    assert (
        fields.keys()
        == request_fields(
            full_info(), status=200, duration=0, error_type=None, method="GET", path="/"
        ).keys()
    )
    assert all(fields[key] is None for key in ("model", "prompt_tokens", "cost_usd"))


def test_request_line_carries_no_content(stream: io.StringIO) -> None:
    """The error quotes the prompt (as a content filter's may): only its kind is logged."""
    error = ContentFiltered(
        f"filtered: {SECRET_PROMPT}",
        status=400,
        body=SECRET_PROMPT.encode(),
        payload={"error": {"message": SECRET_PROMPT, "code": "content_filter"}},
    )
    info = replace(full_info(), usage=None, cost=None, error=error)
    fields = request_fields(
        info, status=400, duration=0.5, error_type=None, method="POST", path="/v1/chat/completions"
    )
    logging.getLogger("openai_runtime_sidecar.server").info("request", extra={"fields": fields})
    (line,) = lines(stream)
    assert line["error_type"] == "ContentFiltered"
    assert line["credential_fingerprint"] == "sha256:0123456789ab"
    assert "SENTINEL" not in stream.getvalue()


@pytest.fixture
def alone() -> Iterator[io.StringIO]:
    """Only our handler on the root logger, as in the shipped process (no test capture)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers = []
    buffer = io.StringIO()
    configure_logging("info", buffer)
    yield buffer
    for handler in root.handlers:
        handler.close()
    root.handlers = handlers
    root.setLevel(level)


@contextlib.contextmanager
def only_ours() -> Iterator[None]:
    """Without pytest's own capture handlers, which it adds for every test phase."""
    root = logging.getLogger()
    others = [h for h in root.handlers if type(h).__name__ != "_JsonHandler"]
    for handler in others:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in others:
            root.addHandler(handler)


def test_the_request_line_written_directly_is_the_logged_line(alone: io.StringIO) -> None:
    logger = logging.getLogger("openai_runtime.requests")
    fields = {"method": "POST", "status": 200, "msg": "a field named like a core key"}
    direct = RequestLog(logger)
    with only_ours():
        assert direct._sole_handler() is not None, "the shipped set-up takes the direct path"
        direct.write("request", fields)
        logger.info("request", extra={"fields": fields})
    written, logged = lines(alone)
    assert list(written) == list(logged)  # same keys, same order
    assert {k: v for k, v in written.items() if k != "ts"} == {
        k: v for k, v in logged.items() if k != "ts"
    }
    assert written["field.msg"] == "a field named like a core key"


def test_the_request_line_goes_through_logging_when_others_listen(
    alone: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="openai_runtime.requests")
    RequestLog(logging.getLogger("openai_runtime.requests")).write("request", {"status": 201})
    assert [record.fields for record in caplog.records] == [{"status": 201}]  # type: ignore[attr-defined]
    assert lines(alone)[0]["status"] == 201, "and our handler still writes it"


def test_the_request_line_keeps_the_level_check(alone: io.StringIO) -> None:
    configure_logging("warning", alone)
    with only_ours():
        RequestLog(logging.getLogger("openai_runtime.requests")).write("request", {"status": 200})
    assert alone.getvalue() == ""


def test_a_failing_stream_does_not_fail_the_request_line(
    alone: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    alone.close()  # writes now raise ValueError, as a closed stderr would
    with only_ours():
        RequestLog(logging.getLogger("openai_runtime.requests")).write("request", {"status": 200})
    assert "Logging error" in capsys.readouterr().err, "reported the way logging reports it"
