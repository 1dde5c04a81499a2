"""Config models as frozen dataclasses, validated from documents without pydantic.

Where it sits in the flow::

    runner/config.py, config.py, operator/models.py --declare--> ConfigModel subclasses
    config file / ConfigMap / CR spec --Model.model_validate()--> frozen instance
    instance --model_dump(by_alias=True, mode="json")--> ConfigMap document
    operator/crd.py --schema.json_schema(Model)--> the CRD's OpenAPI schema

The sidecar reads a config once at start and on each hot reload, so this is
no hot path: it exists because pydantic's import and its compiled schemas
are a fifth of an idle sidecar's memory. What it supports is exactly what
the config models use: ``str``, ``int``, ``float``, ``bool``, ``Literal``,
``X | None``, ``list[X]``, ``dict[str, X]``, nested models, and the
markers inside ``Annotated`` (:mod:`.validating` checks them). Coercion and
the wording of errors follow pydantic's lax mode, so a config, a spec and an
admission denial read as they did when pydantic validated them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, dataclass_transform

from .validating import (
    FAIL,
    After,
    Before,
    Check,
    ErrorDetails,
    JsonSchema,
    Loc,
    Rule,
    Serializer,
    ValidationError,
    compile_type,
    model_check,
    optional_of,
    report,
    split_annotated,
)

__all__ = [
    "After",
    "Before",
    "ConfigModel",
    "ErrorDetails",
    "Field",
    "FieldSpec",
    "JsonSchema",
    "Rule",
    "Serializer",
    "ValidationError",
    "dump_value",
    "optional_of",
    "split_annotated",
]


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    description: str | None
    wire: str | None
    rule: Rule | None


_INFO = "openai_runtime.field"


def Field(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    description: str | None = None,
    wire: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    finite: bool = False,
) -> Any:
    """A model field: its default, documentation, wire name (else camelCase) and bounds."""
    bounds = (ge, gt, le, min_length, max_length, pattern)
    rule = Rule(ge, gt, le, min_length, max_length, pattern, finite)
    info = FieldInfo(
        description, wire, rule if finite or any(b is not None for b in bounds) else None
    )
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_INFO: info})
    return dataclasses.field(default=default, metadata={_INFO: info})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# -- dumping -------------------------------------------------------------------


def dump_value(
    value: Any, tp: Any, *, by_alias: bool, json: bool, exclude_none: bool = False
) -> Any:
    """``value`` of type ``tp`` as a document holds it."""
    inner = optional_of(tp)
    if inner is not None:
        return (
            None
            if value is None
            else dump_value(value, inner, by_alias=by_alias, json=json, exclude_none=exclude_none)
        )
    base, markers = split_annotated(tp)
    if json:
        for marker in markers:
            if isinstance(marker, Serializer):
                return marker.func(value)
    if isinstance(value, ConfigModel):
        return value.model_dump(
            by_alias=by_alias, mode="json" if json else "python", exclude_none=exclude_none
        )
    if isinstance(value, list):
        item = typing.get_args(base)[0] if typing.get_origin(base) is list else Any
        return [
            dump_value(v, item, by_alias=by_alias, json=json, exclude_none=exclude_none)
            for v in value
        ]
    if isinstance(value, dict):
        item = typing.get_args(base)[1] if typing.get_origin(base) is dict else Any
        return {
            k: dump_value(v, item, by_alias=by_alias, json=json, exclude_none=exclude_none)
            for k, v in value.items()
        }
    return value


# -- the base class ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """A model field as validation, dumping and the JSON schema see it."""

    name: str
    wire: str
    type: Any
    info: FieldInfo
    field: dataclasses.Field[Any]
    check: Check

    @property
    def required(self) -> bool:
        return (
            self.field.default is dataclasses.MISSING
            and self.field.default_factory is dataclasses.MISSING
        )

    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
class ConfigModel:
    """The base of every config model, here and in the sidecar's and the operator's.

    camelCase on the wire, snake_case in Python; unknown fields are errors (a
    typo in a ConfigMap or a spec must not be ignored); frozen, so a loaded
    config is shared without copies. Constructing one validates it as a
    document would be, so a model never holds a value its document could not.
    """

    __doc_text__: ClassVar[str | None] = None
    __extra_forbidden__: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Kept before dataclass() writes a signature into an empty __doc__.
        cls.__doc_text__ = cls.__dict__.get("__doc__")
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    @classmethod
    def model_fields_spec(cls) -> tuple[FieldSpec, ...]:
        """The fields, compiled on first use (annotations may name later classes)."""
        cached: tuple[FieldSpec, ...] | None = cls.__dict__.get("_specs")
        if cached is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            specs = []
            for field in dataclasses.fields(cls):  # type: ignore[arg-type]
                info = field.metadata.get(_INFO) or FieldInfo(None, None, None)
                tp = hints[field.name]
                wire = info.wire or _camel(field.name)
                specs.append(
                    FieldSpec(field.name, wire, tp, info, field, compile_type(tp, info.rule))
                )
            cached = tuple(specs)
            type.__setattr__(cls, "_specs", cached)
        return cached

    @classmethod
    def _known_keys(cls) -> frozenset[str]:
        specs = cls.model_fields_spec()
        return frozenset(s.wire for s in specs) | frozenset(s.name for s in specs)

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """A model from a document (a mapping with camelCase or snake_case keys)."""
        errors: list[ErrorDetails] = []
        instance = model_check(cls)(data, (), errors)
        if errors:
            raise ValidationError(cls.__name__, errors)
        return typing.cast(Self, instance)

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any], loc: Loc, errors: list[ErrorDetails]) -> Any:
        specs = cls.model_fields_spec()
        before = len(errors)
        values: dict[str, Any] = {}
        for spec in specs:
            raw = data.get(spec.wire, data.get(spec.name, dataclasses.MISSING))
            if raw is dataclasses.MISSING:
                if spec.required:
                    report(errors, (*loc, spec.wire), "missing", "Field required")
                else:
                    values[spec.name] = spec.default()
                continue
            values[spec.name] = spec.check(raw, (*loc, spec.wire), errors)
        known = cls._known_keys()
        for key in data:
            if key not in known:
                report(errors, (*loc, key), "extra_forbidden", "Extra inputs are not permitted")
        if len(errors) != before:
            return FAIL
        instance = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(instance, name, value)
        try:
            instance.__validate__()
        except ValueError as exc:
            errors.append({"loc": loc, "msg": f"Value error, {exc}", "type": "value_error"})
            return FAIL
        return instance

    def __post_init__(self) -> None:
        errors: list[ErrorDetails] = []
        for spec in self.model_fields_spec():
            value = spec.check(getattr(self, spec.name), (spec.wire,), errors)
            if value is not FAIL:
                object.__setattr__(self, spec.name, value)
        if not errors:
            try:
                self.__validate__()
            except ValueError as exc:
                report(errors, (), "value_error", f"Value error, {exc}")
        if errors:
            raise ValidationError(type(self).__name__, errors)

    def __validate__(self) -> None:
        """Checks across fields; a ``ValueError`` is reported at the model's place."""

    def model_dump(
        self, *, by_alias: bool = False, mode: str = "python", exclude_none: bool = False
    ) -> dict[str, Any]:
        """The model as a document: ``mode="json"`` writes durations as text."""
        out: dict[str, Any] = {}
        for spec in self.model_fields_spec():
            value = getattr(self, spec.name)
            if value is None and exclude_none:
                continue
            key = spec.wire if by_alias else spec.name
            out[key] = dump_value(
                value, spec.type, by_alias=by_alias, json=mode == "json", exclude_none=exclude_none
            )
        return out
