"""The OpenAiRuntime CRD: generated from the models, structural, in sync, and agreeing with them.

Each example CR must pass the CRD's schema, its CEL rules and the spec
model, and render into a sidecar config the sidecar loads. Each invalid
CR under ``invalid/`` must be rejected by the spec model and by the
cluster-side check named for it in :data:`INVALID`.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_runtime_operator.crd import PRINTER_COLUMNS, REGENERATE, build_crd, render_yaml
from openai_runtime_operator.models import (
    API_VERSION,
    CRD_NAME,
    KIND,
    OpenAiRuntimeSpec,
    OpenAiRuntimeStatus,
    render_sidecar_config,
)
from openai_runtime_sidecar import cli
from openai_runtime_sidecar.config import DEFAULT_KEY_FILE, SidecarConfig, load_sidecar_config
from openai_runtime_sidecar.contract import KEY_DIR
from openai_runtime_sidecar.runner.config import TimeoutSettings
from openai_runtime_sidecar.runner.modeling import ValidationError

from .k8sschema import CEL, cel_errors, json_schema, rules, schema_errors, structural_problems

ROOT = Path(__file__).resolve().parents[2]
COPIES = [ROOT / "deploy/base/crd.yaml", ROOT / "charts/openai-runtime/crds/openairuntimes.yaml"]
EXAMPLES = ["runtime-direct.yaml", "runtime-azure.yaml", "runtime-failover.yaml"]
INVALID_DIR = Path(__file__).parent / "invalid"

# Which checks reject each invalid CR. "model" is the spec model (every
# file must have it); "schema" is the CRD's OpenAPI schema; "cel" its CEL
# rules; "strict-fields" is kubectl's default strict field validation (the
# schema alone would make the API server drop the unknown field, not refuse it).
INVALID: dict[str, set[str]] = {
    "both-variants.yaml": {"model", "cel"},
    "no-variant.yaml": {"model", "cel"},
    "azure-without-resource.yaml": {"model", "cel"},
    "default-not-allowed.yaml": {"model", "cel"},
    "zero-attempts.yaml": {"model", "schema"},
    "bad-duration.yaml": {"model", "schema"},
    "unknown-field.yaml": {"model", "strict-fields"},
    "backend-both-variants.yaml": {"model", "cel"},
    "backends-and-variant.yaml": {"model", "cel"},
    "backends-without-weight.yaml": {"model", "cel"},
}


@functools.cache
def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def rejections(document: dict[str, Any]) -> set[str]:
    schema = crd_schema()
    found: set[str] = set()
    try:
        OpenAiRuntimeSpec.model_validate(document["spec"])
    except ValidationError:
        found.add("model")
    if schema_errors(schema, document, strict_fields=False):
        found.add("schema")
    elif schema_errors(schema, document, strict_fields=True):
        found.add("strict-fields")
    if cel_errors(schema, document):
        found.add("cel")
    return found


# -- generated == committed ---------------------------------------------------


@pytest.mark.parametrize("path", COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_copies_are_the_generated_crd(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing; generate it: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render_yaml(), (
        f"{path.relative_to(ROOT)} is out of date with the models; regenerate: {REGENERATE}"
    )


def test_the_crd_command_prints_writes_and_checks(tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["crd"]) == 0
    assert out.getvalue() == render_yaml()
    first, second = tmp_path / "a" / "crd.yaml", tmp_path / "b.yaml"
    assert cli.main(["crd", "--output", str(first), "-o", str(second)]) == 0
    assert first.read_text() == second.read_text() == render_yaml()
    assert cli.main(["crd", "--check", "-o", str(first)]) == 0
    second.write_text("stale\n")
    assert cli.main(["crd", "--check", "-o", str(first), "-o", str(second)]) == 1


def test_generating_the_crd_imports_neither_kopf_nor_kubernetes(tmp_path: Path) -> None:
    code = (
        "import sys; from openai_runtime_sidecar import cli; "
        f"assert cli.main(['crd', '-o', {str(tmp_path / 'crd.yaml')!r}]) == 0; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=60)


# -- the CRD itself -------------------------------------------------------------


def test_names_scope_and_status_subresource() -> None:
    crd = build_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == CRD_NAME == "openairuntimes.infer.atomr.io"
    spec = crd["spec"]
    assert spec["group"] == "infer.atomr.io" and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "OpenAiRuntime",
        "listKind": "OpenAiRuntimeList",
        "plural": "openairuntimes",
        "singular": "openairuntime",
        "shortNames": ["oair"],
    }
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_the_schema_is_structural() -> None:
    assert structural_problems(crd_schema()) == []
    assert "$ref" not in json.dumps(crd_schema())


def test_the_structural_checker_catches_what_the_api_server_refuses() -> None:
    assert structural_problems({"$ref": "#/$defs/X"})
    assert structural_problems({"anyOf": [{"type": "string"}, {"type": "integer"}]})
    assert structural_problems({"type": "object", "properties": {"a": {"description": "x"}}})
    assert structural_problems({"type": "object", "additionalProperties": False, "properties": {}})
    assert structural_problems({"type": "number", "minimum": 0, "exclusiveMinimum": 0})
    assert not structural_problems({"x-kubernetes-int-or-string": True, "pattern": "^a$"})


def test_durations_are_int_or_string_with_the_go_pattern() -> None:
    timeouts = crd_schema()["properties"]["spec"]["properties"]["timeouts"]["properties"]
    for field in timeouts.values():
        assert field["x-kubernetes-int-or-string"] is True
        assert field["minimum"] == 0 and "250ms" in field["description"]
    assert "Default: 5s" in timeouts["connect"]["description"]


def test_null_is_kept_only_where_it_means_off() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert spec["rateLimits"]["properties"]["tokensPerMinute"]["nullable"] is True
    # direct/azure default to absent: a null is pruned, so CEL's has() sees "unset".
    assert "nullable" not in spec["variant"]["properties"]["direct"]
    assert (
        "nullable"
        not in spec["pricing"]["additionalProperties"]["properties"]["cachedInputPerMTokUsd"]
    )


def test_maps_have_typed_values() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert spec["pricing"]["additionalProperties"]["type"] == "object"
    requests = spec["sidecar"]["properties"]["resources"]["properties"]["requests"]
    assert requests["additionalProperties"]["x-kubernetes-int-or-string"] is True


def test_every_cel_rule_has_a_python_equivalent() -> None:
    found = {(path, rule["rule"]) for path, rule in rules(crd_schema())}
    assert {path for path, _ in found} == {
        ".spec",
        ".spec.variant",
        ".spec.variant.azure",
        ".spec.backends[].variant",
        ".spec.backends[].variant.azure",
        ".spec.models",
    }
    assert {rule for _, rule in found} == set(CEL)


def test_printer_columns() -> None:
    (version,) = build_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Variant", "Model", "Ready", "Credential", "Spend", "Limit", "Age"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Credential"]["jsonPath"] == ".status.credential.fingerprint"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    status = crd_schema()["properties"]["status"]
    for column in PRINTER_COLUMNS:
        path = column["jsonPath"].split("[")[0].split(".")[1:]
        if path[0] != "status":
            continue
        node = {"properties": {"status": status}}
        for part in path:
            node = node["properties"][part]
            node = node.get("items", node)
        assert "type" in node, column


def test_a_status_the_operator_writes_fits_the_schema() -> None:
    status = OpenAiRuntimeStatus.model_validate(
        {
            "observedGeneration": 3,
            "variant": "azure",
            "model": "gpt-4o-prod",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Resolved",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                }
            ],
            "credential": {"fingerprint": "sha256:1a2b3c4d5e6f", "rotations": 2},
            "convergence": {"pods": 3, "current": 2},
            "kopf": {"progress": {}},  # fields of others are ignored when read back
        }
    )
    assert status.condition("Ready") is not None and status.condition("Missing") is None
    written = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    schema = crd_schema()["properties"]["status"]
    assert schema_errors(schema, written, strict_fields=True) == []


# -- examples -------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_are_valid_everywhere(name: str) -> None:
    document = load(ROOT / "examples" / name)
    assert document["apiVersion"] == API_VERSION and document["kind"] == KIND
    assert schema_errors(crd_schema(), document, strict_fields=True) == []
    assert cel_errors(crd_schema(), document) == []
    OpenAiRuntimeSpec.model_validate(document["spec"])


def test_the_example_secret_matches_the_references() -> None:
    secret = load(ROOT / "examples" / "secret.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "openai-key"
    assert secret["stringData"] == {"api-key": "sk-REPLACE-ME"}
    for name in EXAMPLES:
        spec = OpenAiRuntimeSpec.model_validate(load(ROOT / "examples" / name)["spec"])
        assert (spec.primary.api_key_secret_ref.name, spec.primary.api_key_secret_ref.key) == (
            "openai-key",
            "api-key",
        )


@pytest.mark.parametrize("name", EXAMPLES)
def test_render_sidecar_config(name: str, tmp_path: Path) -> None:
    document = load(ROOT / "examples" / name)
    spec = OpenAiRuntimeSpec.model_validate(document["spec"])
    config = render_sidecar_config("team-a", document["metadata"]["name"], spec)
    assert isinstance(config, SidecarConfig)
    assert str(config.runtime) == f"team-a/{document['metadata']['name']}"
    assert config.api_key.file == f"{KEY_DIR}/api-key" == DEFAULT_KEY_FILE
    assert config.variant == spec.primary.variant and config.models == spec.models
    assert [f.name for f in config.fallbacks] == [b.name for b in spec.fallbacks]
    assert config.pricing == spec.pricing
    assert (config.rate_limits, config.retry) == (spec.rate_limits, spec.retry)
    assert (config.circuit_breaker, config.timeouts) == (spec.circuit_breaker, spec.timeouts)
    # Round trips: JSON, and YAML through the sidecar's own loader.
    text = json.dumps(config.model_dump(by_alias=True, mode="json"))
    assert SidecarConfig.model_validate(json.loads(text)) == config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    assert load_sidecar_config(path, environ={}) == config


def test_render_uses_the_referenced_key_and_spec_defaults() -> None:
    spec = OpenAiRuntimeSpec.model_validate(
        {"variant": {"direct": {}}, "apiKeySecretRef": {"name": "k", "key": "token.txt"}}
    )
    config = render_sidecar_config("ns", "rt", spec)
    assert config.api_key.file == f"{KEY_DIR}/token.txt"
    assert config.retry.max_attempts == 3 and config.timeouts.connect == 5
    assert spec.variant_name == "direct" and spec.target_model is None
    assert spec.sidecar.resources.requests == {"cpu": "50m", "memory": "64Mi"}


def test_spec_bounds_match_the_crd() -> None:
    base = {"variant": {"direct": {}}, "apiKeySecretRef": {"name": "k"}}
    too_many = {**base, "models": {"allow": [f"m{i}" for i in range(129)]}}
    with pytest.raises(ValidationError, match="at most 128"):
        OpenAiRuntimeSpec.model_validate(too_many)
    for key in ("..", ".", "..x", "a/b"):
        with pytest.raises(ValidationError):
            OpenAiRuntimeSpec.model_validate({**base, "apiKeySecretRef": {"name": "k", "key": key}})
    quantity = {"sidecar": {"resources": {"requests": {"cpu": 1}}}}
    spec = OpenAiRuntimeSpec.model_validate({**base, **quantity})
    assert spec.sidecar.resources.requests == {"cpu": "1"}


# -- invalid CRs ----------------------------------------------------------------


def test_every_invalid_example_is_declared() -> None:
    assert sorted(p.name for p in INVALID_DIR.glob("*.yaml")) == sorted(INVALID)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_examples_are_rejected(name: str) -> None:
    expected = INVALID[name]
    assert "model" in expected and len(expected) >= 2
    assert rejections(load(INVALID_DIR / name)) == expected


# -- the sidecar accepts what the CRD accepts ------------------------------------


def _timeouts_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd_schema()["properties"]["spec"]["properties"]["timeouts"]
    return schema


@functools.cache
def _timeouts_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema(_timeouts_schema(), strict_fields=False))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_duration_the_crd_accepts_the_sidecar_accepts(data: st.DataObject) -> None:
    pattern = _timeouts_schema()["properties"]["connect"]["pattern"]
    value = data.draw(
        st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= 64)
        | st.integers(min_value=0, max_value=2**63 - 1)
    )
    assert _timeouts_validator().is_valid({"connect": value})
    TimeoutSettings.model_validate({"connect": value})


def test_the_crd_takes_whole_seconds_only_as_numbers() -> None:
    schema = _timeouts_schema()
    assert schema_errors(schema, {"connect": 0.5}, strict_fields=False)
    assert schema_errors(schema, {"connect": "0.5"}, strict_fields=False) == []
    assert schema_errors(schema, {"connect": -1}, strict_fields=False)
    assert TimeoutSettings.model_validate({"connect": "0.5"}).connect == 0.5
