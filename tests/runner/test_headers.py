"""Tests for provider response headers (openai_runtime_sidecar.runner.headers)."""

from __future__ import annotations

import dataclasses
import email.utils

import pytest

from openai_runtime_sidecar.runner.headers import (
    RateLimitHeaders,
    parse_rate_limit_headers,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"content-type": "application/json"}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": " 3 "}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after": "7", "retry-after-ms": "1500.5"}, 1.5005),
        # Case-insensitive lookup in plain dicts.
        ({"Retry-After": "7"}, 7.0),
        ({"RETRY-AFTER-MS": "20"}, 0.02),
        ({"Retry-After-Ms": "20", "Retry-After": "9"}, 0.02),
        # Garbage and negative values count as not said...
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "soon"}, None),
        ({"retry-after-ms": "-1"}, None),
        ({"retry-after-ms": "nan"}, None),
        # ...and a bad retry-after-ms falls back to retry-after.
        ({"retry-after-ms": "soon", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "-100", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "inf", "retry-after": "4"}, 4.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


@pytest.mark.parametrize(("offset", "expected"), [(30, 30.0), (1, 1.0), (0, 0.0), (-60, 0.0)])
def test_retry_after_http_date(offset: int, expected: float) -> None:
    headers = {"Retry-After": http_date(NOW + offset)}
    assert parse_retry_after(headers, NOW) == pytest.approx(expected)


def test_retry_after_fixed_http_date() -> None:
    # RFC 9110's example; 1445412480 is 2015-10-21T07:28:00Z.
    headers = {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert parse_retry_after(headers, 1445412480.0 - 12.5) == pytest.approx(12.5)
    assert parse_retry_after(headers, 1445412480.0 + 100) == 0.0


def test_retry_after_date_without_a_zone_is_ignored() -> None:
    # "-0000" means "unknown zone": parsedate_to_datetime returns a naive datetime.
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 -0000"}, NOW) is None


def test_retry_after_reads_multidict_like_mappings() -> None:
    class CaseInsensitive(dict[str, str]):
        def get(self, key: str, default: object = None) -> str | None:  # type: ignore[override]
            for k, v in self.items():
                if k.lower() == key.lower():
                    return v
            return None

    headers = CaseInsensitive({"Retry-After-Ms": "100"})
    assert parse_retry_after(headers, NOW) == 0.1


# What api.openai.com sends on a chat completion.
OPENAI_HEADERS = {
    "date": "Tue, 14 Nov 2023 22:13:20 GMT",
    "content-type": "application/json",
    "openai-organization": "org-abc",
    "openai-processing-ms": "412",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "1999950",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-reset-tokens": "6m0s",
    "x-request-id": "req_0123456789abcdef",
}


def test_parse_openai_rate_limit_headers() -> None:
    parsed = parse_rate_limit_headers(OPENAI_HEADERS)
    assert parsed == RateLimitHeaders(
        limit_requests=10000,
        limit_tokens=2_000_000,
        remaining_requests=9999,
        remaining_tokens=1_999_950,
        reset_requests=1.0,
        reset_tokens=360.0,
    )
    assert not parsed.empty
    assert parsed.as_dict() == {
        "limit_requests": 10000,
        "limit_tokens": 2_000_000,
        "remaining_requests": 9999,
        "remaining_tokens": 1_999_950,
        "reset_requests": 1.0,
        "reset_tokens": 360.0,
    }


def test_rate_limit_headers_are_case_insensitive() -> None:
    headers = {k.upper(): v for k, v in OPENAI_HEADERS.items()}
    assert parse_rate_limit_headers(headers) == parse_rate_limit_headers(OPENAI_HEADERS)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("12ms", 0.012), ("1m30s", 90.0), ("0s", 0.0), ("17", 17.0), ("1.5s", 1.5)],
)
def test_reset_durations(value: str, seconds: float) -> None:
    parsed = parse_rate_limit_headers({"x-ratelimit-reset-tokens": value})
    assert parsed.reset_tokens == pytest.approx(seconds)


def test_no_rate_limit_headers_is_empty() -> None:
    parsed = parse_rate_limit_headers({"content-type": "text/event-stream"})
    assert parsed == RateLimitHeaders()
    assert parsed.empty
    assert parsed.as_dict() == {}


@pytest.mark.parametrize("value", ["", "many", "-1", "nan", "inf", "1e400", "12tokens", "0x10"])
def test_garbage_counts_are_none(value: str) -> None:
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-remaining-tokens": value, "x-ratelimit-limit-requests": value}
    )
    assert parsed.remaining_tokens is None
    assert parsed.limit_requests is None
    assert parsed.empty


@pytest.mark.parametrize("value", ["", "soon", "-1s", "-3", "5 s", "inf", "1d"])
def test_garbage_resets_are_none(value: str) -> None:
    parsed = parse_rate_limit_headers({"x-ratelimit-reset-requests": value})
    assert parsed.reset_requests is None
    assert parsed.empty


def test_counts_accept_floats_and_keep_good_fields_next_to_bad_ones() -> None:
    parsed = parse_rate_limit_headers(
        {
            "x-ratelimit-remaining-requests": "41.0",
            "x-ratelimit-remaining-tokens": "lots",
            "x-ratelimit-reset-tokens": "2.5ms",
        }
    )
    assert parsed.as_dict() == {"remaining_requests": 41, "reset_tokens": pytest.approx(0.0025)}
    assert not parsed.empty


def test_zero_is_a_value_not_absence() -> None:
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"}
    )
    assert parsed.remaining_requests == 0
    assert parsed.reset_requests == 0.0
    assert not parsed.empty
    assert parsed.as_dict() == {"remaining_requests": 0, "reset_requests": 0.0}


def test_rate_limit_headers_are_frozen() -> None:
    parsed = parse_rate_limit_headers(OPENAI_HEADERS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.remaining_tokens = 0  # type: ignore[misc]
