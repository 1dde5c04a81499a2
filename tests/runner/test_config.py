"""Tests for the runner configuration (openai_runtime_sidecar.runner.config)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import yaml

from openai_runtime_sidecar.runner.config import (
    AzureVariant,
    DirectVariant,
    OpenAiConfig,
    RetrySettings,
    SecretRef,
    Variant,
)
from openai_runtime_sidecar.runner.modeling import ValidationError
from openai_runtime_sidecar.runner.schemas import json_schema

OPENAI_KEY = SecretRef(env="OPENAI_API_KEY")


def error_locs(info: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in info.value.errors()]


def minimal(**extra: Any) -> dict[str, Any]:
    return {"variant": {"direct": {}}, "apiKey": {"env": "OPENAI_API_KEY"}, **extra}


def test_defaults_for_openai() -> None:
    config = OpenAiConfig.defaults_for_openai(OPENAI_KEY)
    assert config.api_key == OPENAI_KEY
    assert config.variant.direct == DirectVariant()
    assert config.variant.azure is None
    assert config.variant.selected.name == "direct"

    limits = config.rate_limits
    assert limits.requests_per_minute == 500
    assert limits.tokens_per_minute == 200_000
    assert limits.max_concurrency == 64
    assert limits.max_queue_wait == 2.0
    assert limits.learn_from_headers is True

    retry = config.retry
    assert (retry.max_attempts, retry.initial_backoff, retry.max_backoff) == (3, 0.5, 8.0)
    assert retry.max_retry_after == 120.0
    assert retry.jitter == 0.25

    breaker = config.circuit_breaker
    assert (breaker.failure_threshold, breaker.open_duration, breaker.half_open_probes) == (
        5,
        30.0,
        1,
    )

    timeouts = config.timeouts
    assert (timeouts.connect, timeouts.first_byte, timeouts.stream_idle, timeouts.total) == (
        5.0,
        60.0,
        60.0,
        600.0,
    )
    assert config.pricing == {}


def test_defaults_for_openai_with_overrides() -> None:
    config = OpenAiConfig.defaults_for_openai(OPENAI_KEY, retry=RetrySettings(max_attempts=5))
    assert config.retry.max_attempts == 5
    assert config.retry.initial_backoff == 0.5


def test_defaults_for_azure() -> None:
    config = OpenAiConfig.defaults_for_azure(
        SecretRef(file="/var/run/secrets/openai/api-key"), resource="contoso", deployment="gpt-4o"
    )
    assert config.variant.selected.name == "azure"
    assert config.variant.selected.chat_completions_url() == (
        "https://contoso.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
        "?api-version=2024-10-21"
    )


def test_parse_camel_case_with_go_durations() -> None:
    data = {
        "variant": {"direct": {"organization": "org-abc", "project": "proj_123"}},
        "apiKey": {"file": "/var/run/secrets/openai/api-key"},
        "rateLimits": {
            "requestsPerMinute": 60,
            "tokensPerMinute": None,
            "maxConcurrency": 4,
            "maxQueueWait": "250ms",
            "learnFromHeaders": False,
        },
        "retry": {"maxAttempts": 5, "initialBackoff": "100ms", "maxBackoff": "2s", "jitter": 0},
        "circuitBreaker": {"failureThreshold": 3, "openDuration": "1m30s", "halfOpenProbes": 2},
        "timeouts": {"connect": 2, "firstByte": "10s", "streamIdle": "1.5s", "total": "1h"},
        "pricing": {"my-model": {"inputPerMTokUsd": 1.0, "outputPerMTokUsd": 2.0}},
    }
    config = OpenAiConfig.model_validate(data)
    assert config.api_key.file == "/var/run/secrets/openai/api-key"
    assert config.api_key.describe() == "file:/var/run/secrets/openai/api-key"
    assert config.rate_limits.requests_per_minute == 60
    assert config.rate_limits.tokens_per_minute is None
    assert config.rate_limits.max_queue_wait == 0.25
    assert config.rate_limits.learn_from_headers is False
    assert config.retry.max_attempts == 5
    assert config.retry.initial_backoff == 0.1
    assert config.retry.max_backoff == 2.0
    assert config.retry.max_retry_after == 120.0  # default kept
    assert config.circuit_breaker.open_duration == 90.0
    assert config.circuit_breaker.half_open_probes == 2
    assert config.timeouts.connect == 2.0
    assert config.timeouts.first_byte == 10.0
    assert config.timeouts.stream_idle == 1.5
    assert config.timeouts.total == 3600.0
    assert config.pricing["my-model"].output_per_mtok_usd == 2.0


def test_parse_yaml() -> None:
    text = """
variant:
  azure:
    resource: contoso
    deployment: gpt-4o-mini
    apiVersion: 2024-06-01
apiKey:
  file: /secrets/api-key
rateLimits:
  maxQueueWait: 250ms
timeouts:
  streamIdle: 30s
"""
    config = OpenAiConfig.model_validate(yaml.safe_load(text))
    azure = config.variant.azure
    assert azure is not None
    # YAML reads the unquoted version as a date; it is taken back as its text.
    assert azure.api_version == "2024-06-01"
    assert azure.chat_completions_url().endswith("?api-version=2024-06-01")
    assert config.rate_limits.max_queue_wait == 0.25
    assert config.timeouts.stream_idle == 30.0


@pytest.mark.parametrize("version", ['"2024-06-01"', "2024-10-01-preview"])
def test_yaml_api_version_strings(version: str) -> None:
    data = yaml.safe_load(f"resource: r\ndeployment: d\napiVersion: {version}\n")
    assert AzureVariant.model_validate(data).api_version == version.strip('"')


def test_snake_case_names_are_accepted_too() -> None:
    config = OpenAiConfig.model_validate(
        {
            "variant": {"direct": {}},
            "api_key": {"env": "K"},
            "rate_limits": {"max_queue_wait": "1s"},
        }
    )
    assert config.rate_limits.max_queue_wait == 1.0


def test_direct_url_and_headers() -> None:
    direct = DirectVariant()
    assert direct.chat_completions_url() == "https://api.openai.com/v1/chat/completions"
    assert direct.auth_headers("sk-1") == {"Authorization": "Bearer sk-1"}

    custom = DirectVariant(
        endpoint="http://localhost:8080/v1/", organization="org-a", project="p-1"
    )
    assert custom.chat_completions_url() == "http://localhost:8080/v1/chat/completions"
    assert custom.auth_headers("sk-1") == {
        "Authorization": "Bearer sk-1",
        "OpenAI-Organization": "org-a",
        "OpenAI-Project": "p-1",
    }
    only_org = DirectVariant(organization="org-a")
    assert "OpenAI-Project" not in only_org.auth_headers("k")


def test_azure_url_and_headers() -> None:
    azure = AzureVariant(resource="contoso", deployment="gpt-4o", api_version="2024-10-21")
    assert azure.base_url() == "https://contoso.openai.azure.com"
    assert azure.chat_completions_url() == (
        "https://contoso.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
        "?api-version=2024-10-21"
    )
    assert azure.auth_headers("abc123") == {"api-key": "abc123"}
    assert azure.name == "azure"


def test_azure_quotes_deployment_and_version() -> None:
    azure = AzureVariant(resource="r", deployment="my dep/1", api_version="2024-10-01-preview&x")
    assert azure.chat_completions_url() == (
        "https://r.openai.azure.com/openai/deployments/my%20dep%2F1/chat/completions"
        "?api-version=2024-10-01-preview%26x"
    )


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        ("https://apim.example.com/", "https://apim.example.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_azure_custom_endpoint(endpoint: str, base: str) -> None:
    azure = AzureVariant.model_validate(
        {"endpoint": endpoint, "deployment": "d", "apiVersion": "v1"}
    )
    assert azure.base_url() == base
    assert (
        azure.chat_completions_url()
        == f"{base}/openai/deployments/d/chat/completions?api-version=v1"
    )
    # An endpoint wins over a resource.
    both = AzureVariant(resource="contoso", endpoint=endpoint, deployment="d")
    assert both.base_url() == base


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        pytest.param(
            minimal(variant={"direct": {}, "azure": {"resource": "r", "deployment": "d"}}),
            ("variant",),
            "exactly one of 'direct' or 'azure'",
            id="both-variants",
        ),
        pytest.param(
            minimal(variant={}), ("variant",), "exactly one of 'direct' or 'azure'", id="no-variant"
        ),
        pytest.param(
            minimal(apiKey={"env": "K", "file": "/k"}),
            ("apiKey",),
            "exactly one of 'env' or 'file'",
            id="secret-both",
        ),
        pytest.param(
            minimal(apiKey={}), ("apiKey",), "exactly one of 'env' or 'file'", id="secret-neither"
        ),
        pytest.param(
            minimal(apiKey={"env": ""}), ("apiKey", "env"), "at least 1", id="secret-empty-env"
        ),
        pytest.param(
            minimal(retry={"initialBackoff": "-1s"}),
            ("retry", "initialBackoff"),
            "invalid duration",
            id="negative-duration-string",
        ),
        pytest.param(
            minimal(timeouts={"connect": -5}),
            ("timeouts", "connect"),
            "non-negative",
            id="negative-duration-number",
        ),
        pytest.param(
            minimal(rateLimits={"maxQueueWait": "soon"}),
            ("rateLimits", "maxQueueWait"),
            "invalid duration",
            id="garbage-duration",
        ),
        pytest.param(
            minimal(retry={"maxAttempts": 0}),
            ("retry", "maxAttempts"),
            "greater than or equal to 1",
            id="max-attempts-zero",
        ),
        pytest.param(
            minimal(retry={"maxAttempts": 21}),
            ("retry", "maxAttempts"),
            "less than or equal to 20",
            id="max-attempts-too-many",
        ),
        pytest.param(
            minimal(retry={"jitter": 1.5}),
            ("retry", "jitter"),
            "less than or equal to 1",
            id="jitter",
        ),
        pytest.param(
            minimal(rateLimits={"requestsPerMinute": 0}),
            ("rateLimits", "requestsPerMinute"),
            "greater than or equal to 1",
            id="rpm-zero",
        ),
        pytest.param(minimal(bogus=1), ("bogus",), "Extra inputs", id="unknown-top-level"),
        pytest.param(
            minimal(retry={"maxAttempt": 2}),
            ("retry", "maxAttempt"),
            "Extra inputs",
            id="unknown-nested",
        ),
        pytest.param(
            minimal(variant={"azure": {"deployment": "d"}}),
            ("variant", "azure"),
            "set 'resource' or 'endpoint'",
            id="azure-no-resource",
        ),
        pytest.param(
            minimal(variant={"azure": {"resource": "r"}}),
            ("variant", "azure", "deployment"),
            "Field required",
            id="azure-no-deployment",
        ),
        pytest.param(
            minimal(variant={"azure": {"resource": "bad.name", "deployment": "d"}}),
            ("variant", "azure", "resource"),
            "pattern",
            id="azure-bad-resource",
        ),
        pytest.param(
            minimal(variant={"direct": {"endpoint": "api.openai.com"}}),
            ("variant", "direct", "endpoint"),
            "pattern",
            id="direct-no-scheme",
        ),
        pytest.param(
            minimal(pricing={"m": {"inputPerMTokUsd": 1}}),
            ("pricing", "m", "outputPerMTokUsd"),
            "Field required",
            id="pricing-incomplete",
        ),
        pytest.param({"variant": {"direct": {}}}, ("apiKey",), "Field required", id="no-api-key"),
    ],
)
def test_validation_errors_name_the_field(
    data: dict[str, Any], loc: tuple[str, ...], fragment: str
) -> None:
    with pytest.raises(ValidationError) as info:
        OpenAiConfig.model_validate(data)
    errors = info.value.errors()
    assert [tuple(e["loc"]) for e in errors] == [loc]
    assert fragment in errors[0]["msg"]


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ValidationError) as info:
        OpenAiConfig.model_validate(
            minimal(retry={"maxAttempts": 0, "initialBackoff": "-1s"}, bogus=True)
        )
    assert sorted(error_locs(info)) == [
        ("bogus",),
        ("retry", "initialBackoff"),
        ("retry", "maxAttempts"),
    ]


@pytest.mark.parametrize("kwargs", [{"env": "K", "file": "/k"}, {}])
def test_secret_ref_needs_exactly_one(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="exactly one of 'env' or 'file'"):
        SecretRef(**kwargs)


def test_secret_ref_describe() -> None:
    assert SecretRef(env="K").describe() == "env:K"
    assert SecretRef(file="/k").describe() == "file:/k"


def test_variant_selected() -> None:
    azure = AzureVariant(resource="r", deployment="d")
    assert Variant(azure=azure).selected is azure
    with pytest.raises(ValidationError):
        Variant()


def test_models_are_frozen() -> None:
    config = OpenAiConfig.defaults_for_openai(OPENAI_KEY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retry = RetrySettings()  # type: ignore[misc]


def test_dump_is_camel_case_with_duration_strings() -> None:
    config = OpenAiConfig.defaults_for_openai(OPENAI_KEY)
    dumped = config.model_dump(by_alias=True, mode="json")
    assert set(dumped) == {
        "variant",
        "apiKey",
        "name",
        "weight",
        "upstreamModels",
        "upstreamPricing",
        "rateLimits",
        "retry",
        "circuitBreaker",
        "timeouts",
        "pricing",
        "budget",
        "fallbacks",
    }
    assert dumped["rateLimits"] == {
        "requestsPerMinute": 500,
        "tokensPerMinute": 200000,
        "maxConcurrency": 64,
        "maxQueueWait": "2s",
        "learnFromHeaders": True,
    }
    assert dumped["retry"] == {
        "maxAttempts": 3,
        "initialBackoff": "500ms",
        "maxBackoff": "8s",
        "maxRetryAfter": "2m",
        "jitter": 0.25,
    }
    assert dumped["circuitBreaker"] == {
        "failureThreshold": 5,
        "openDuration": "30s",
        "halfOpenProbes": 1,
    }
    assert dumped["timeouts"] == {
        "connect": "5s",
        "firstByte": "1m",
        "streamIdle": "1m",
        "attempt": None,
        "total": "10m",
    }
    assert dumped["apiKey"] == {"env": "OPENAI_API_KEY", "file": None}
    # Python mode keeps floats.
    assert config.model_dump()["timeouts"]["total"] == 600.0


@pytest.mark.parametrize(
    "config",
    [
        OpenAiConfig.defaults_for_openai(OPENAI_KEY),
        OpenAiConfig.defaults_for_azure(
            SecretRef(file="/k"), resource="contoso", deployment="gpt-4o", api_version="2024-06-01"
        ),
        OpenAiConfig.model_validate(
            minimal(
                variant={"direct": {"endpoint": "http://fake:1/v1", "organization": "o"}},
                rateLimits={"maxQueueWait": "250ms", "maxConcurrency": None},
                retry={"initialBackoff": 0.123456789, "maxRetryAfter": "1h1m1.5s"},
                timeouts={"connect": "12ms", "total": 0},
                pricing={
                    "m": {
                        "inputPerMTokUsd": 0.15,
                        "cachedInputPerMTokUsd": 0.075,
                        "outputPerMTokUsd": 0.6,
                    }
                },
            )
        ),
    ],
    ids=["openai", "azure", "custom"],
)
def test_dump_round_trips(config: OpenAiConfig) -> None:
    dumped = config.model_dump(by_alias=True, mode="json")
    assert OpenAiConfig.model_validate(dumped) == config
    assert OpenAiConfig.model_validate(json.loads(json.dumps(dumped))) == config
    assert OpenAiConfig.model_validate(yaml.safe_load(yaml.safe_dump(dumped))) == config


def test_json_schema_has_duration_pattern() -> None:
    schema = json_schema(OpenAiConfig)
    retry = schema["properties"]["retry"]["properties"]
    assert "initialBackoff" in retry
    kinds = {s["type"] for s in retry["initialBackoff"]["anyOf"]}
    assert kinds == {"string", "number"}
