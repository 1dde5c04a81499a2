"""What the API server does with a CRD schema, as far as tests here can emulate it.

No API server runs in these tests, so three of its checks are written out:
the structural-schema rules it applies when the CRD is created
(:func:`structural_problems`), OpenAPI validation of an object
(:func:`json_schema`, translated for the ``jsonschema`` package), and the
CEL rules (:data:`CEL`, each rule's Python equivalent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jsonschema

Schema = dict[str, Any]

_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "properties",
        "additionalProperties",
        "items",
        "required",
        "enum",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "nullable",
        "anyOf",
    }
)
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Why ``node`` is not a structural schema (empty when it is)."""
    where = path or "(root)"
    if not isinstance(node, dict):
        return [f"{where}: not a schema object"]
    problems: list[str] = []
    unknown = {k for k in node if k not in _KEYWORDS and not k.startswith("x-kubernetes-")}
    if unknown:
        problems.append(f"{where}: keywords not allowed here: {sorted(unknown)}")
    if node.get("x-kubernetes-int-or-string") is True:
        if "type" in node:
            problems.append(f"{where}: int-or-string must not set a type")
        if "anyOf" in node and node["anyOf"] != _INT_OR_STRING:
            problems.append(f"{where}: int-or-string anyOf must be exactly integer, string")
    elif "anyOf" in node:
        problems.append(f"{where}: anyOf chooses between types")
    elif (
        node.get("type") not in _TYPES
        and node.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        problems.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties together")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            problems.append(f"{where}: {bound} must be a boolean in OpenAPI 3.0")
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if "additionalProperties" in node:
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    if node.get("type") == "array":
        problems += structural_problems(node.get("items"), f"{path}[]")
    missing = set(node.get("required", [])) - set(node.get("properties", {}))
    if missing:
        problems.append(f"{where}: required but not declared: {sorted(missing)}")
    return problems


def json_schema(node: Schema, *, strict_fields: bool) -> Schema:
    """``node`` as a JSON Schema (2020-12) with the Kubernetes extensions spelled out.

    ``strict_fields`` adds what kubectl's default strict field validation does:
    an unknown field is an error (without it the API server drops the field).
    """
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "format"):
            continue
        if key == "properties":
            out[key] = {k: json_schema(v, strict_fields=strict_fields) for k, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = json_schema(value, strict_fields=strict_fields)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue  # handled with its bound below
        else:
            out[key] = value
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        if "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        else:
            out["type"] = [out["type"], "null"]
    if strict_fields and "properties" in out:
        out["additionalProperties"] = False
    return out


def schema_errors(schema: Schema, instance: Any, *, strict_fields: bool) -> list[str]:
    """OpenAPI validation errors of ``instance``, one line each."""
    translated = json_schema(schema, strict_fields=strict_fields)
    validator = jsonschema.Draft202012Validator(translated)
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(instance)
    )


def _has(obj: Mapping[str, Any], field: str) -> bool:
    # A null in a non-nullable field is pruned by the API server before CEL runs.
    return obj.get(field) is not None


CEL: Mapping[str, Callable[[Mapping[str, Any]], bool]] = {
    "has(self.direct) != has(self.azure)": lambda s: _has(s, "direct") != _has(s, "azure"),
    "has(self.resource) || has(self.endpoint)": lambda s: (
        _has(s, "resource") or _has(s, "endpoint")
    ),
    (
        "!has(self.default) || !has(self.allow) || size(self.allow) == 0 "
        "|| self.default in self.allow"
    ): lambda s: (
        not _has(s, "default")
        or not _has(s, "allow")
        or len(s["allow"]) == 0
        or s["default"] in s["allow"]
    ),
    (
        "(has(self.backends) && size(self.backends) > 0) "
        "!= (has(self.variant) || has(self.apiKeySecretRef))"
    ): lambda s: (
        bool(_has(s, "backends") and s["backends"])
        != (_has(s, "variant") or _has(s, "apiKeySecretRef"))
    ),
    "has(self.backends) || (has(self.variant) && has(self.apiKeySecretRef))": lambda s: (
        _has(s, "backends") or (_has(s, "variant") and _has(s, "apiKeySecretRef"))
    ),
    (
        "!has(self.backends) || size(self.backends) == 0 "
        "|| !has(self.backends[0].weight) "
        "|| self.backends.exists(b, has(b.weight) && b.weight > 0)"
    ): lambda s: (
        not _has(s, "backends")
        or len(s["backends"]) == 0
        or not _has(s["backends"][0], "weight")
        or any(_has(b, "weight") and b["weight"] > 0 for b in s["backends"])
    ),
}
"""Each CEL rule of the CRD with its Python equivalent."""


def rules(schema: Schema, path: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    """Every ``x-kubernetes-validations`` rule with the path of its node."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from rules(sub, f"{path}.{name}")
    if "items" in schema:
        yield from rules(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from rules(schema["additionalProperties"], f"{path}{{}}")


def cel_errors(schema: Schema, instance: Any, path: str = "") -> list[str]:
    """Messages of the CEL rules ``instance`` breaks (evaluated with :data:`CEL`)."""
    errors: list[str] = []
    if isinstance(instance, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            if not CEL[rule["rule"]](instance):
                errors.append(f"{path or '(root)'}: {rule['message']}")
        for name, sub in schema.get("properties", {}).items():
            if instance.get(name) is not None:
                errors += cel_errors(sub, instance[name], f"{path}.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            for key, value in instance.items():
                errors += cel_errors(schema["additionalProperties"], value, f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            errors += cel_errors(schema["items"], item, f"{path}[{index}]")
    return errors
