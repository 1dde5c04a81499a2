"""The ``OpenAiRuntime`` CustomResourceDefinition, generated from the models.

``openai-runtime crd`` prints it; ``--output FILE`` (repeatable) writes it, and
``--check`` reports files that differ from what would be written. The copies in
``deploy/base/`` and the Helm chart are this output, kept in sync by a test.

The models' JSON schema (the spec's from
:func:`openai_runtime_sidecar.runner.schemas.json_schema`, the status's from
pydantic) is turned into a *structural* OpenAPI v3 schema, as the
API server requires: ``$ref`` resolved inline, every node typed, no ``anyOf``
choosing between types except the int-or-string form, OpenAPI 3.0 keywords.
Durations become ``x-kubernetes-int-or-string`` (integer seconds or a string
such as ``250ms``; the sidecar accepts both), ``None`` that means "off" becomes
``nullable``, and the cross-field rules of the models become CEL
``x-kubernetes-validations``. Defaults are not written into the schema (the
operator applies them when it renders the sidecar config, so a new release's
defaults reach existing objects); descriptions mention them instead.

No kopf or kubernetes import here: the sidecar's command loads this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from openai_runtime_sidecar.runner.durations import format_duration
from openai_runtime_sidecar.runner.modeling import ConfigModel
from openai_runtime_sidecar.runner.schemas import json_schema

from .models import (
    CRD_NAME,
    GROUP,
    KIND,
    MAX_ALLOWED_MODELS,
    MAX_MODEL_NAME_LENGTH,
    PLURAL,
    SHORT,
    SINGULAR,
    VERSION,
    OpenAiRuntimeSpec,
    OpenAiRuntimeStatus,
)

__all__ = ["PRINTER_COLUMNS", "RULES", "SchemaError", "build_crd", "main", "render_yaml"]

Schema = dict[str, Any]

REGENERATE = (
    "openai-runtime crd --output deploy/base/crd.yaml "
    "--output charts/openai-runtime/crds/openairuntimes.yaml"
)
_HEADER = (
    "# Generated from openai_runtime_operator.models by `openai-runtime crd`: do not edit.\n"
    f"# Regenerate with: {REGENERATE}\n"
)

_INT_OR_STRING_MAX_LENGTH = 64
"""Bounds duration and quantity strings (keeps CEL costs and parsed values finite)."""

_DURATION_HELP = (
    "A duration: integer seconds, or a string such as 250ms, 5s, 1m30s or 1.5 "
    "(units ns, us, ms, s, m, h)."
)

RULES: Mapping[tuple[str, ...], list[dict[str, str]]] = {
    ("spec", "variant"): [
        {
            "rule": "has(self.direct) != has(self.azure)",
            "message": "set exactly one of variant.direct or variant.azure",
        }
    ],
    ("spec", "variant", "azure"): [
        {
            "rule": "has(self.resource) || has(self.endpoint)",
            "message": "set variant.azure.resource or variant.azure.endpoint",
        }
    ],
    ("spec",): [
        {
            "rule": (
                "(has(self.backends) && size(self.backends) > 0) "
                "!= (has(self.variant) || has(self.apiKeySecretRef))"
            ),
            "message": "set variant and apiKeySecretRef, or backends, not both",
        },
        {
            "rule": ("has(self.backends) || (has(self.variant) && has(self.apiKeySecretRef))"),
            "message": "set variant and apiKeySecretRef, or backends",
        },
        {
            "rule": (
                "!has(self.backends) || size(self.backends) == 0 "
                "|| !has(self.backends[0].weight) "
                "|| self.backends.exists(b, has(b.weight) && b.weight > 0)"
            ),
            "message": "at least one backend needs a weight above 0",
        },
    ],
    ("spec", "backends", "[]", "variant"): [
        {
            "rule": "has(self.direct) != has(self.azure)",
            "message": "set exactly one of direct or azure in each backend's variant",
        }
    ],
    ("spec", "backends", "[]", "variant", "azure"): [
        {
            "rule": "has(self.resource) || has(self.endpoint)",
            "message": "set resource or endpoint in each backend's azure variant",
        }
    ],
    ("spec", "models"): [
        {
            "rule": (
                "!has(self.default) || !has(self.allow) || size(self.allow) == 0 "
                "|| self.default in self.allow"
            ),
            "message": "models.default must be one of models.allow when allow is set",
        }
    ],
}
"""CEL rules by schema path: the cross-field checks the models make in Python."""

_PATCHES: Mapping[tuple[str, ...], Schema] = {
    ("spec", "models", "allow"): {"maxItems": MAX_ALLOWED_MODELS},
    ("spec", "models", "allow", "[]"): {"minLength": 1, "maxLength": MAX_MODEL_NAME_LENGTH},
    ("spec", "models", "default"): {"minLength": 1, "maxLength": MAX_MODEL_NAME_LENGTH},
    ("status", "conditions"): {
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    },
}
"""Bounds for CEL cost estimation (the spec model enforces the same) and list semantics."""

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Variant",
        "type": "string",
        "jsonPath": ".status.variant",
        "description": "direct or azure",
    },
    {
        "name": "Model",
        "type": "string",
        "jsonPath": ".status.model",
        "description": "The Azure deployment, or the default model of a direct runtime",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {
        "name": "Credential",
        "type": "string",
        "jsonPath": ".status.credential.fingerprint",
        "description": "Fingerprint of the API key in use",
    },
    {
        "name": "Spend",
        "type": "number",
        "jsonPath": ".status.spend.usd",
        "description": "USD spent this period (with a budget)",
    },
    {
        "name": "Limit",
        "type": "number",
        "jsonPath": ".spec.budget.limitUsd",
        "description": "The budget's limit in USD per period",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Keywords copied as they are; anything else a model's schema holds is an error,
# so a new kind of field cannot slip into the CRD unchecked.
_COPIED = (
    "description",
    "format",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
)
_DROPPED = frozenset({"$defs", "title", "default", "examples", "additionalProperties"})
_HANDLED = frozenset(
    {"type", "properties", "required", "items", "const", "exclusiveMinimum", "exclusiveMaximum"}
)
_MISSING = object()


class SchemaError(ValueError):
    """A JSON schema construct with no structural equivalent."""


def _resolve(node: Schema, defs: Mapping[str, Schema]) -> Schema:
    """``node`` with ``$ref`` (or a one-element ``allOf``) merged in; siblings win."""
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        node = {**_resolve(node["allOf"][0], defs), **rest}
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        if name not in defs:
            raise SchemaError(f"unresolvable $ref {node['$ref']}")
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = {**_resolve(defs[name], defs), **rest}
    return node


def _describe(*parts: str | None, default: str | None = None) -> str | None:
    """One line for ``kubectl explain``: first paragraphs of docstrings, then the default."""
    texts = [" ".join(p.split("\n\n")[0].split()).replace("``", "`") for p in parts if p]
    line = " ".join(t if t.endswith(".") else t + "." for t in texts if t)
    if default is not None:
        line = f"{line} Default: {default}" if line else f"Default: {default}"
    return line or None


def _default_text(default: Any, duration: bool) -> str | None:
    if default is None or default == "" or isinstance(default, dict | list):
        return None
    if duration and isinstance(default, int | float):
        return format_duration(float(default))
    return default if isinstance(default, str) else json.dumps(default)


def _structural(node: Schema, defs: Mapping[str, Schema], path: tuple[str, ...]) -> Schema:
    node = _resolve(node, defs)
    where = ".".join(path) or "(root)"
    if "anyOf" in node or "oneOf" in node:
        return _alternatives(node, defs, path)
    kind = node.get("type")
    if not isinstance(kind, str):
        raise SchemaError(f"{where}: untyped schema {node!r}")
    unknown = set(node) - set(_COPIED) - _DROPPED - _HANDLED
    if unknown:
        raise SchemaError(f"{where}: unsupported keywords {sorted(unknown)}")
    out: Schema = {"type": kind}
    description = _describe(
        node.get("description"), default=_default_text(node.get("default"), False)
    )
    if description:
        out["description"] = description
    out.update({k: node[k] for k in _COPIED if k in node and k != "description"})
    if "const" in node:
        out["enum"] = [node["const"]]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:  # JSON Schema 2020's number -> OpenAPI 3.0's boolean form
            out[inclusive] = node[bound]
            out[bound] = True
    if kind == "object":
        properties = node.get("properties", {})
        if properties:
            out["properties"] = {
                name: _structural(sub, defs, (*path, name)) for name, sub in properties.items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            if properties:
                raise SchemaError(f"{where}: both properties and a map of values")
            out["additionalProperties"] = _structural(extra, defs, (*path, "{}"))
        elif not properties:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _structural(node["items"], defs, (*path, "[]"))
    return out


def _alternatives(node: Schema, defs: Mapping[str, Schema], path: tuple[str, ...]) -> Schema:
    """``anyOf``: ``X | None`` becomes X (nullable when null means more than absent),
    a string-or-number (durations, quantities) becomes int-or-string."""
    where = ".".join(path)
    choices: list[Schema] = node.get("anyOf") or node.get("oneOf") or []
    branches = [_resolve(b, defs) for b in choices]
    null = any(b.get("type") == "null" for b in branches)
    branches = [b for b in branches if b.get("type") != "null"]
    outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
    default = node.get("default", _MISSING)
    # A null that only repeats "absent" (default None) stays non-nullable: the API
    # server prunes it, so has() in CEL and the models agree that it is unset.
    nullable = null and default is not None
    if len(branches) == 1:
        out = _structural({**branches[0], **outer}, defs, path)
    elif {b.get("type") for b in branches} in ({"string", "number"}, {"string", "integer"}):
        out = _int_or_string(branches, outer)
    else:
        raise SchemaError(f"{where}: alternatives of differing types {branches!r}")
    if nullable:
        out["nullable"] = True
    return out


def _int_or_string(branches: list[Schema], outer: Schema) -> Schema:
    text = next(b for b in branches if b["type"] == "string")
    number = next(b for b in branches if b["type"] != "string")
    duration = number["type"] == "number"  # Duration is the one number-or-string type
    own = outer.get("description") or (None if duration else text.get("description"))
    extra = _DURATION_HELP if duration else None
    default = outer.get("default")
    description = _describe(own, extra, default=_default_text(default, duration))
    out: Schema = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }
    if description:
        out["description"] = description
    if "pattern" in text:
        out["pattern"] = text["pattern"]
    out["maxLength"] = text.get("maxLength", _INT_OR_STRING_MAX_LENGTH)
    for bound in ("minimum", "maximum"):
        if bound in number:
            out[bound] = number[bound]
    return out


def _schema_of(model: type[BaseModel | ConfigModel], path: tuple[str, ...]) -> Schema:
    if issubclass(model, ConfigModel):
        schema = json_schema(model)
    else:
        schema = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(schema, schema.get("$defs", {}), path)


def _node(schema: Schema, path: tuple[str, ...]) -> Schema:
    for part in path:
        if part == "[]":
            schema = schema["items"]
        elif part == "{}":
            schema = schema["additionalProperties"]
        else:
            schema = schema["properties"][part]
    return schema


def _open_api_schema() -> Schema:
    root: Schema = {
        "description": "An OpenAI or Azure OpenAI runtime for the pods that opt in to it.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {"type": "object"},
            "spec": _schema_of(OpenAiRuntimeSpec, ("spec",)),
            "status": _schema_of(OpenAiRuntimeStatus, ("status",)),
        },
    }
    for path, patch in _PATCHES.items():
        _node(root, path).update(patch)
    for path, rules in RULES.items():
        _node(root, path)["x-kubernetes-validations"] = [dict(rule) for rule in rules]
    return root


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) as a plain mapping."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "openai-runtime"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": _open_api_schema()},
                }
            ],
        },
    }


def render_yaml() -> str:
    """The CRD as the YAML document that is committed (with a do-not-edit header)."""
    body = yaml.safe_dump(build_crd(), sort_keys=False, allow_unicode=True, width=100)
    return _HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="openai-runtime crd",
        description="Print the OpenAiRuntime CustomResourceDefinition as YAML.",
    )
    parser.add_argument(
        "-o",
        "--output",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="write to FILE instead of standard output (repeatable)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when an --output file differs from the generated CRD",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    text = render_yaml()
    outputs: list[Path] = args.output
    if args.check:
        if not outputs:
            parser.error("--check needs at least one --output FILE")
        stale = [p for p in outputs if not p.is_file() or p.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path}: out of date; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    if not outputs:
        sys.stdout.write(text)
        return 0
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return 0
