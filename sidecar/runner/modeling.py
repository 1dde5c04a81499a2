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
``X | None``, ``list[X]``, ``dict[str, X]``, nested models, and the markers
below inside ``Annotated``. Coercion and the wording of errors follow
pydantic's lax mode, so a config, a spec and an admission denial read as
they did when pydantic validated them.

The exception tree::

    ValueError
    └── ValidationError   every problem of one document, each with loc and msg
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, TypedDict, dataclass_transform

__all__ = [
    "After",
    "Before",
    "ConfigModel",
    "ErrorDetails",
    "Field",
    "JsonSchema",
    "Rule",
    "Serializer",
    "ValidationError",
]

Loc = tuple[str | int, ...]


class ErrorDetails(TypedDict):
    """One problem: where (field names on the wire, list indexes) and what."""

    loc: Loc
    msg: str
    type: str


class ValidationError(ValueError):
    """A document (or constructor call) that does not fit its model."""

    def __init__(self, title: str, errors: list[ErrorDetails]) -> None:
        self.title = title
        self._errors = errors
        super().__init__(str(self))

    def errors(self) -> list[ErrorDetails]:
        return list(self._errors)

    def __str__(self) -> str:
        count = len(self._errors)
        lines = [f"{count} validation error{'s' if count != 1 else ''} for {self.title}"]
        for error in self._errors:
            lines.append(".".join(str(part) for part in error["loc"]) or "(top level)")
            lines.append(f"  {error['msg']}")
        return "\n".join(lines)


# -- markers -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """Bounds on a value: numbers (ge, gt, le, finite) or lengths (strings, lists, maps)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    finite: bool = False


@dataclasses.dataclass(frozen=True)
class Before:
    """Turns the raw value into what the type expects (YAML's dates and numbers as text)."""

    func: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class After:
    """Checks the validated value; a ``ValueError`` it raises is reported at the field."""

    func: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Serializer:
    """Writes the value for a JSON document (durations as ``1m30s``)."""

    func: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes markers
class JsonSchema:
    """The JSON schema of the type, replacing the one derived from it."""

    schema: Mapping[str, Any]


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


# -- the compiled form of a type -----------------------------------------------

Check = Callable[[Any, Loc, list[ErrorDetails]], Any]
_FAIL: Any = object()


def _error(errors: list[ErrorDetails], loc: Loc, kind: str, msg: str) -> Any:
    errors.append({"loc": loc, "msg": msg, "type": kind})
    return _FAIL


def _plural(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _apply_rule(rule: Rule, value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, int | float):
        if rule.finite and not math.isfinite(value):
            return _error(errors, loc, "finite_number", "Input should be a finite number")
        # The upper bound first, as pydantic reports NaN (which fails both).
        if rule.le is not None and not value <= rule.le:
            msg = f"Input should be less than or equal to {rule.le:g}"
            return _error(errors, loc, "less_than_equal", msg)
        if rule.ge is not None and not value >= rule.ge:
            msg = f"Input should be greater than or equal to {rule.ge:g}"
            return _error(errors, loc, "greater_than_equal", msg)
        if rule.gt is not None and not value > rule.gt:
            return _error(errors, loc, "greater_than", f"Input should be greater than {rule.gt:g}")
        return value
    what, noun = ("String", "character") if isinstance(value, str) else ("List", "item")
    if isinstance(value, dict):
        what = "Dictionary"
    size = len(value)
    after = "" if isinstance(value, str) else f" after validation, not {size}"
    if rule.min_length is not None and size < rule.min_length:
        msg = f"{what} should have at least {_plural(rule.min_length, noun)}{after}"
        return _error(errors, loc, "too_short" if what != "String" else "string_too_short", msg)
    if rule.max_length is not None and size > rule.max_length:
        msg = f"{what} should have at most {_plural(rule.max_length, noun)}{after}"
        return _error(errors, loc, "too_long" if what != "String" else "string_too_long", msg)
    if isinstance(value, str) and rule.pattern and re.search(rule.pattern, value) is None:
        msg = f"String should match pattern '{rule.pattern}'"
        return _error(errors, loc, "string_pattern_mismatch", msg)
    return value


def _str(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, str):
        return value
    return _error(errors, loc, "string_type", "Input should be a valid string")


def _int(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _error(errors, loc, "finite_number", "Input should be a finite number")
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        return _error(errors, loc, "int_from_float", msg)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            return _error(errors, loc, "int_parsing", msg)
    return _error(errors, loc, "int_type", "Input should be a valid integer")


def _float(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            msg = "Input should be a valid number, unable to parse string as a number"
            return _error(errors, loc, "float_parsing", msg)
    return _error(errors, loc, "float_type", "Input should be a valid number")


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _bool(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) or (isinstance(value, int) and -(2**63) <= value < 2**63):
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        msg = "Input should be a valid boolean, unable to interpret input"
        return _error(errors, loc, "bool_parsing", msg)
    return _error(errors, loc, "bool_type", "Input should be a valid boolean")


def _any(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    return value


_SCALARS: dict[Any, Check] = {str: _str, int: _int, float: _float, bool: _bool, Any: _any}


def _literal(choices: tuple[Any, ...]) -> Check:
    spelled = [repr(c) for c in choices]
    listed = spelled[0] if len(spelled) == 1 else ", ".join(spelled[:-1]) + f" or {spelled[-1]}"

    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        return _error(errors, loc, "literal_error", f"Input should be {listed}")

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        return None if value is None else inner(value, loc, errors)

    return check


def _list(item: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if not isinstance(value, list | tuple):
            return _error(errors, loc, "list_type", "Input should be a valid list")
        before = len(errors)
        out = [item(v, (*loc, i), errors) for i, v in enumerate(value)]
        return out if len(errors) == before else _FAIL

    return check


def _dict(item: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if not isinstance(value, Mapping):
            return _error(errors, loc, "dict_type", "Input should be a valid dictionary")
        before = len(errors)
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                _error(
                    errors,
                    (*loc, str(key), "[key]"),
                    "string_type",
                    "Input should be a valid string",
                )
                continue
            out[key] = item(v, (*loc, key), errors)
        return out if len(errors) == before else _FAIL

    return check


def _model(cls: type[ConfigModel]) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            msg = f"Input should be a valid dictionary or instance of {cls.__name__}"
            return _error(errors, loc, "model_type", msg)
        return cls._from_mapping(value, loc, errors)

    return check


def _annotated(inner: Check, markers: tuple[Any, ...], rule: Rule | None) -> Check:
    befores = [m.func for m in markers if isinstance(m, Before)]
    afters = [m.func for m in markers if isinstance(m, After)]
    rules = [m for m in markers if isinstance(m, Rule)] + ([rule] if rule else [])
    if not (befores or afters or rules):
        return inner

    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        try:
            for func in befores:
                value = func(value)
        except ValueError as exc:
            return _error(errors, loc, "value_error", f"Value error, {exc}")
        value = inner(value, loc, errors)
        for each in rules:
            if value is _FAIL:
                return _FAIL
            value = _apply_rule(each, value, loc, errors)
        if value is _FAIL:
            return _FAIL
        try:
            for func in afters:
                value = func(value)
        except ValueError as exc:
            return _error(errors, loc, "value_error", f"Value error, {exc}")
        return value

    return check


def split_annotated(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, *markers]`` as ``(T, markers)``; anything else with no markers."""
    if typing.get_origin(tp) is typing.Annotated:
        return tp.__origin__, tuple(tp.__metadata__)
    return tp, ()


def optional_of(tp: Any) -> Any | None:
    """``X`` of ``X | None``, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def compile_type(tp: Any, rule: Rule | None = None) -> Check:
    """The check for a type; ``rule`` (a field's own bounds) applies past any ``| None``."""
    inner = optional_of(tp)
    if inner is not None:
        return _optional(compile_type(inner, rule))
    base, markers = split_annotated(tp)
    origin = typing.get_origin(base)
    if base in _SCALARS:
        check = _SCALARS[base]
    elif origin is typing.Literal:
        check = _literal(typing.get_args(base))
    elif origin is list:
        check = _list(compile_type(typing.get_args(base)[0]))
    elif origin is dict:
        check = _dict(compile_type(typing.get_args(base)[1]))
    elif isinstance(base, type) and issubclass(base, ConfigModel):
        check = _model(base)
    elif optional_of(base) is not None:
        check = compile_type(base)
    else:
        raise TypeError(f"no validation for {tp!r}")
    return _annotated(check, markers, rule)


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
        instance = _model(cls)(data, (), errors)
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
                    _error(errors, (*loc, spec.wire), "missing", "Field required")
                else:
                    values[spec.name] = spec.default()
                continue
            values[spec.name] = spec.check(raw, (*loc, spec.wire), errors)
        known = cls._known_keys()
        for key in data:
            if key not in known:
                _error(errors, (*loc, key), "extra_forbidden", "Extra inputs are not permitted")
        if len(errors) != before:
            return _FAIL
        instance = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(instance, name, value)
        try:
            instance.__validate__()
        except ValueError as exc:
            return _error(errors, loc, "value_error", f"Value error, {exc}")
        return instance

    def __post_init__(self) -> None:
        errors: list[ErrorDetails] = []
        for spec in self.model_fields_spec():
            value = spec.check(getattr(self, spec.name), (spec.wire,), errors)
            if value is not _FAIL:
                object.__setattr__(self, spec.name, value)
        if not errors:
            try:
                self.__validate__()
            except ValueError as exc:
                _error(errors, (), "value_error", f"Value error, {exc}")
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
