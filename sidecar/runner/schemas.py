"""The JSON schema of a config model, in the shape the CRD generator reads.

Where it sits in the flow::

    operator/crd.py --json_schema(OpenAiRuntimeSpec)--> JSON schema --_structural()--> CRD

Only the operator's ``crd`` command and the tests import this. Each model is
written inline (no ``$defs``): an object with its docstring as description,
its fields under their wire names, the required ones listed, and no other
keys allowed; a field's own description and default sit beside its type, as
pydantic places them, so the CRD reads as it did when pydantic generated it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from .modeling import (
    ConfigModel,
    FieldSpec,
    JsonSchema,
    Rule,
    dump_value,
    optional_of,
    split_annotated,
)

__all__ = ["json_schema"]

Schema = dict[str, Any]

_SCALARS: dict[Any, Schema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Any: {},
}


def json_schema(model: type[ConfigModel]) -> Schema:
    """The model's JSON schema, every nested model inline."""
    properties: Schema = {}
    required: list[str] = []
    for spec in model.model_fields_spec():
        properties[spec.wire] = _field_schema(spec)
        if spec.required:
            required.append(spec.wire)
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = required
    if model.__doc_text__:
        out["description"] = inspect.cleandoc(model.__doc_text__)
    return out


def _field_schema(spec: FieldSpec) -> Schema:
    out = _type_schema(spec.type, spec.info.rule)
    if spec.info.description:
        out["description"] = spec.info.description
    if spec.field.default is not dataclasses.MISSING:  # a factory's default is not shown
        out["default"] = dump_value(spec.field.default, spec.type, by_alias=True, json=True)
    return out


def _rule_schema(rule: Rule, kind: str | None) -> Schema:
    out: Schema = {}
    if kind in ("integer", "number"):
        for key, value in (
            ("minimum", rule.ge),
            ("exclusiveMinimum", rule.gt),
            ("maximum", rule.le),
        ):
            if value is not None:
                out[key] = value
    else:
        low, high = ("minItems", "maxItems") if kind == "array" else ("minLength", "maxLength")
        if rule.min_length is not None:
            out[low] = rule.min_length
        if rule.max_length is not None:
            out[high] = rule.max_length
        if rule.pattern is not None:
            out["pattern"] = rule.pattern
    return out


def _type_schema(tp: Any, rule: Rule | None = None) -> Schema:
    inner = optional_of(tp)
    if inner is not None:
        return {"anyOf": [_type_schema(inner, rule), {"type": "null"}]}
    base, markers = split_annotated(tp)
    override = next((m for m in markers if isinstance(m, JsonSchema)), None)
    if override is not None:
        return dict(override.schema)
    origin = typing.get_origin(base)
    if base in _SCALARS:
        out = dict(_SCALARS[base])
    elif origin is typing.Literal:
        choices = list(typing.get_args(base))
        out = {"enum": choices}
        if all(isinstance(c, str) for c in choices):
            out["type"] = "string"
    elif origin is list:
        out = {"type": "array", "items": _type_schema(typing.get_args(base)[0])}
    elif origin is dict:
        out = {"type": "object", "additionalProperties": _type_schema(typing.get_args(base)[1])}
    elif isinstance(base, type) and issubclass(base, ConfigModel):
        out = json_schema(base)
    else:
        raise TypeError(f"no JSON schema for {tp!r}")
    for each in [m for m in markers if isinstance(m, Rule)] + ([rule] if rule else []):
        out.update(_rule_schema(each, out.get("type")))
    return out
