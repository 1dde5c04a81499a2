"""Tests for the error tree and upstream classification (openai_runtime_sidecar.runner.errors)."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest

from openai_runtime_sidecar.runner.errors import (
    AuthenticationFailed,
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    CredentialUnavailable,
    InvalidRequest,
    LocalRateLimited,
    QuotaExhausted,
    RateLimited,
    RunnerError,
    TransportError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    classify_error_payload,
    classify_response,
)

CONTEXT_MESSAGE = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted "
    "in 130000 tokens. Please reduce the length of the messages."
)
OPENAI_CONTEXT = {
    "error": {
        "message": CONTEXT_MESSAGE,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
AZURE_CONTEXT_NULL_CODE = {
    "error": {
        "message": CONTEXT_MESSAGE,
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
}
_FILTER_RESULT = {
    "hate": {"filtered": True, "severity": "high"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry."
)
AZURE_FILTER_SINGULAR = {
    "error": {
        "message": FILTER_MESSAGE,
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": _FILTER_RESULT,
        },
    }
}
# Only the inner results say "content filter": the outer code is not the usual one.
AZURE_FILTER_PLURAL = {
    "error": {
        "message": FILTER_MESSAGE,
        "type": "invalid_request_error",
        "param": "prompt",
        "code": None,
        "innererror": {"content_filter_results": _FILTER_RESULT},
    }
}
OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_RATE_LIMIT = {
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM).",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided: sk-abc***.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
OPENAI_OVERLOADED = {
    "error": {
        "message": "The server is overloaded, please try again later.",
        "type": "server_error",
        "param": None,
        "code": "server_is_overloaded",
    }
}
OPENAI_NOT_FOUND = {
    "error": {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


CASES: list[tuple[str, int, bytes, type[UpstreamError]]] = [
    ("openai-context-length", 400, dumps(OPENAI_CONTEXT), ContextLengthExceeded),
    ("azure-context-length-null-code", 400, dumps(AZURE_CONTEXT_NULL_CODE), ContextLengthExceeded),
    ("azure-filter-result", 400, dumps(AZURE_FILTER_SINGULAR), ContentFiltered),
    ("azure-filter-results", 400, dumps(AZURE_FILTER_PLURAL), ContentFiltered),
    ("quota", 429, dumps(OPENAI_QUOTA), QuotaExhausted),
    ("rate-limit", 429, dumps(OPENAI_RATE_LIMIT), RateLimited),
    ("bad-key", 401, dumps(OPENAI_BAD_KEY), AuthenticationFailed),
    (
        "forbidden",
        403,
        b'{"error": {"message": "nope", "type": "invalid_request_error"}}',
        AuthenticationFailed,
    ),
    ("not-found", 404, dumps(OPENAI_NOT_FOUND), InvalidRequest),
    (
        "unprocessable",
        422,
        b'{"error": {"message": "bad", "type": "invalid_request_error"}}',
        InvalidRequest,
    ),
    ("timeout", 408, b"", UpstreamUnavailable),
    ("conflict", 409, b"", UpstreamUnavailable),
    (
        "server-error",
        500,
        b'{"error": {"message": "boom", "type": "server_error"}}',
        UpstreamUnavailable,
    ),
    ("bad-gateway-html", 502, HTML_502, UpstreamUnavailable),
    ("unavailable", 503, b"", UpstreamUnavailable),
    ("overloaded", 503, dumps(OPENAI_OVERLOADED), UpstreamUnavailable),
    ("empty-400", 400, b"", InvalidRequest),
    ("empty-429", 429, b"", RateLimited),
    ("non-utf8", 500, b"\xff\xfe\xfa not json \x80", UpstreamUnavailable),
    ("non-utf8-400", 400, b"\xc3\x28\xa0\xa1", InvalidRequest),
    ("json-list", 400, b'[{"error": {"code": "context_length_exceeded"}}]', InvalidRequest),
    ("json-without-error", 500, b'{"detail": "Internal Server Error"}', UpstreamUnavailable),
    ("json-error-is-string", 400, b'{"error": "Bad request"}', InvalidRequest),
    ("json-scalar", 503, b"42", UpstreamUnavailable),
    ("plain-text", 401, b"Unauthorized", AuthenticationFailed),
    ("deeply-nested", 502, b"[" * 100_000, UpstreamUnavailable),
]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [pytest.param(status, body, expected, id=name) for name, status, body, expected in CASES],
)
def test_classify_response(status: int, body: bytes, expected: type[UpstreamError]) -> None:
    error = classify_response(status, {"content-type": "application/json"}, body)
    assert type(error) is expected
    assert isinstance(error, UpstreamError)
    assert error.status == status
    assert error.http_status() == status
    assert error.body == body
    assert error.message
    body_out = error.openai_body()
    assert isinstance(body_out["error"], dict)
    assert body_out["error"]["message"]
    json.dumps(body_out)  # always serialisable for a proxy answer


def test_context_length_keeps_upstream_fields() -> None:
    error = classify_response(400, {}, dumps(OPENAI_CONTEXT))
    assert isinstance(error, ContextLengthExceeded)
    assert error.message == CONTEXT_MESSAGE
    assert error.code == "context_length_exceeded"
    assert error.error_type == "invalid_request_error"
    assert error.param == "messages"
    assert error.payload == OPENAI_CONTEXT


def test_null_code_falls_back_to_the_class_code() -> None:
    error = classify_response(400, {}, dumps(AZURE_CONTEXT_NULL_CODE))
    assert error.code == "context_length_exceeded"
    # ...but the replayed body is exactly what upstream said, null included.
    assert error.openai_body() == AZURE_CONTEXT_NULL_CODE


def test_content_filter_with_null_type_uses_the_class_type() -> None:
    error = classify_response(400, {}, dumps(AZURE_FILTER_SINGULAR))
    assert error.code == "content_filter"
    assert error.error_type == "invalid_request_error"
    assert error.param == "prompt"


def test_quota_is_not_a_rate_limit() -> None:
    error = classify_response(429, {"retry-after": "20"}, dumps(OPENAI_QUOTA))
    assert isinstance(error, QuotaExhausted)
    assert not isinstance(error, RateLimited)
    assert error.retryable is False


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_rate_limited_retry_after(headers: dict[str, str], expected: float | None) -> None:
    error = classify_response(429, headers, dumps(OPENAI_RATE_LIMIT))
    assert isinstance(error, RateLimited)
    assert error.retry_after == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    error = classify_response(503, {"retry-after": date}, b"", now=now)
    assert isinstance(error, UpstreamUnavailable)
    assert error.retry_after == pytest.approx(30.0)


def test_retry_after_on_server_errors_is_kept() -> None:
    error = classify_response(503, {"retry-after-ms": "1500"}, dumps(OPENAI_OVERLOADED))
    assert error.retry_after == 1.5


def test_permanent_errors_have_no_retry_after() -> None:
    error = classify_response(400, {"retry-after": "5"}, dumps(OPENAI_CONTEXT))
    assert error.retry_after is None


def test_html_page_keeps_bytes_and_synthesises_an_openai_body() -> None:
    headers = {"Content-Type": "text/html", "X-Request-Id": "req_123"}
    error = classify_response(502, headers, HTML_502)
    assert isinstance(error, UpstreamUnavailable)
    assert error.body == HTML_502
    assert error.headers == headers
    assert error.request_id == "req_123"
    body = error.openai_body()
    assert body == {
        "error": {
            "message": "upstream answered HTTP 502 with a non-OpenAI body",
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    }
    assert error.code == "upstream_unavailable"
    assert error.error_type == "upstream_error"


def test_openai_body_replays_the_payload_exactly() -> None:
    payload = {
        "error": {
            "message": "x",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
            "extra": {"anything": [1, 2, 3]},
        },
        "sibling": True,
    }
    error = classify_response(400, {}, dumps(payload))
    assert error.openai_body() == payload


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"error": {"message": "The server had an error", "type": "server_error"}},
            UpstreamUnavailable,
        ),
        ({"error": {"message": "?", "type": None, "code": None}}, UpstreamUnavailable),
        ({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, RateLimited),
        ({"error": {"message": "slow down", "type": "requests"}}, RateLimited),
        ({"error": {"message": "no money", "code": "insufficient_quota"}}, QuotaExhausted),
        ({"error": {"message": "filtered", "code": "content_filter"}}, ContentFiltered),
        ({"error": {"message": "bad key", "type": "authentication_error"}}, AuthenticationFailed),
        ({"error": {"message": "the maximum context length is 8k"}}, ContextLengthExceeded),
        ({"error": "not a dict"}, UpstreamUnavailable),
        ({}, UpstreamUnavailable),
        (None, UpstreamUnavailable),
    ],
)
def test_classify_in_band_stream_errors(
    payload: dict[str, Any] | None, expected: type[UpstreamError]
) -> None:
    error = classify_error_payload(200, payload)
    assert type(error) is expected
    assert error.status == 200


def test_in_band_server_error_fields() -> None:
    payload = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    error = classify_error_payload(200, payload)
    assert isinstance(error, UpstreamUnavailable)
    assert error.message == payload["error"]["message"]
    assert error.retryable
    assert error.health_failure
    assert error.openai_body() == payload
    assert error.body == b""


def test_missing_message_is_generated() -> None:
    error = classify_error_payload(500, {"error": {"message": ""}})
    assert error.message == "upstream answered HTTP 500"


FLAGS: list[tuple[type[RunnerError], bool, bool]] = [
    (InvalidRequest, False, False),
    (ContextLengthExceeded, False, False),
    (ContentFiltered, False, False),
    (AuthenticationFailed, False, False),
    (QuotaExhausted, False, False),
    (RateLimited, True, False),
    (UpstreamUnavailable, True, True),
    (UpstreamTimeout, True, True),
    (TransportError, True, True),
    (CircuitOpen, False, False),
    (LocalRateLimited, False, False),
    (CredentialUnavailable, False, False),
]


@pytest.mark.parametrize(
    ("cls", "retryable", "health"), FLAGS, ids=[c.__name__ for c, _, _ in FLAGS]
)
def test_retryable_and_health_flags(cls: type[RunnerError], retryable: bool, health: bool) -> None:
    assert cls.retryable is retryable
    assert cls.health_failure is health


def test_hierarchy() -> None:
    assert issubclass(ContextLengthExceeded, InvalidRequest)
    assert issubclass(ContentFiltered, InvalidRequest)
    for cls in (
        InvalidRequest,
        AuthenticationFailed,
        QuotaExhausted,
        RateLimited,
        UpstreamUnavailable,
    ):
        assert issubclass(cls, UpstreamError)
    for local in (
        UpstreamTimeout,
        TransportError,
        CircuitOpen,
        LocalRateLimited,
        CredentialUnavailable,
    ):
        assert issubclass(local, RunnerError)
        assert not issubclass(local, UpstreamError)


@pytest.mark.parametrize(
    ("error", "status", "code", "etype"),
    [
        (CircuitOpen("open", retry_after=3.0), 503, "circuit_open", "server_error"),
        (
            LocalRateLimited("wait", retry_after=1.0, limit="tokens"),
            429,
            "local_rate_limited",
            "requests",
        ),
        (UpstreamTimeout("slow", phase="first_byte"), 504, "upstream_timeout", "timeout"),
        (TransportError("reset"), 502, "upstream_transport_error", "server_error"),
        (CredentialUnavailable("no key"), 503, "credential_unavailable", "server_error"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, RunnerError) else None,
)
def test_local_errors_status_and_body(
    error: RunnerError, status: int, code: str, etype: str
) -> None:
    assert error.http_status() == status
    assert error.code == code
    assert error.kind == type(error).__name__
    assert error.attempts == 1
    assert error.openai_body() == {
        "error": {"message": error.message, "type": etype, "param": None, "code": code}
    }


def test_local_error_details() -> None:
    timeout = UpstreamTimeout("no first byte in 60s", phase="first_byte")
    assert timeout.phase == "first_byte"
    assert timeout.retry_after is None
    assert timeout.response_headers() == {}
    limited = LocalRateLimited("queue wait exceeded", retry_after=0.2, limit="concurrency")
    assert limited.limit == "concurrency"
    assert str(limited) == "queue wait exceeded"


@pytest.mark.parametrize(
    ("retry_after", "seconds", "millis"),
    [
        (0.0, "1", "0"),
        (0.2, "1", "200"),
        (1.0, "1", "1000"),
        (1.2, "2", "1200"),
        (2.0, "2", "2000"),
        (29.5, "30", "29500"),
        (30.0, "30", "30000"),
    ],
)
def test_response_headers_round_retry_after_up(
    retry_after: float, seconds: str, millis: str
) -> None:
    for error in (
        CircuitOpen("open", retry_after=retry_after),
        LocalRateLimited("wait", retry_after=retry_after, limit="requests"),
    ):
        assert error.retry_after == retry_after
        assert error.response_headers() == {"retry-after": seconds, "retry-after-ms": millis}


def test_upstream_error_response_headers_follow_its_retry_after() -> None:
    error = classify_response(429, {"retry-after-ms": "1250"}, dumps(OPENAI_RATE_LIMIT))
    assert error.response_headers() == {"retry-after": "2", "retry-after-ms": "1250"}
    assert classify_response(400, {}, b"").response_headers() == {}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-request-id": "req_abc"}, "req_abc"),
        ({"X-Request-ID": "req_abc"}, "req_abc"),
        ({"apim-request-id": "0b1f-azure"}, "0b1f-azure"),
        ({"Apim-Request-Id": "0b1f-azure"}, "0b1f-azure"),
        ({"apim-request-id": "azure", "x-request-id": "openai"}, "openai"),
        ({"content-type": "application/json"}, None),
        ({}, None),
    ],
)
def test_request_id(headers: dict[str, str], expected: str | None) -> None:
    assert classify_response(500, headers, b"").request_id == expected


def test_headers_are_copied() -> None:
    headers = {"x-request-id": "a"}
    error = classify_response(500, headers, b"")
    headers["x-request-id"] = "b"
    assert error.request_id == "a"
