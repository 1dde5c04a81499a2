"""Checking a value against a type: the rules behind config models, in pydantic's words.

Where it sits in the flow::

    modeling.ConfigModel (fields, documents) --compile_type(annotation)--> Check
    Check(value, loc, errors) --> the value as the model holds it, or FAIL (errors appended)

A type becomes a chain of small functions once per model class: scalars
(coerced as pydantic's lax mode does: ``"5"`` is an int, ``"yes"`` a bool),
``Literal``, ``X | None``, ``list[X]``, ``dict[str, X]``, nested models, and
the markers of ``Annotated`` (:class:`Rule`, :class:`Before`, :class:`After`;
:class:`Serializer` and :class:`JsonSchema` are for writing and describing).
Every problem is collected, not just the first, each with where and what in
the wording pydantic used, so errors read as they did before.

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
from typing import Any, Protocol, TypedDict

__all__ = [
    "FAIL",
    "After",
    "Before",
    "Check",
    "ErrorDetails",
    "JsonSchema",
    "Loc",
    "Rule",
    "Serializer",
    "ValidationError",
    "compile_type",
    "model_check",
    "optional_of",
    "report",
    "split_annotated",
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


# -- the compiled form of a type -----------------------------------------------

Check = Callable[[Any, Loc, list[ErrorDetails]], Any]
"""Validates ``value`` found at ``loc``: its checked form, or FAIL with ``errors`` appended."""
FAIL: Any = object()


class Modeled(Protocol):
    """What a nested model offers its checks (``modeling.ConfigModel``)."""

    @classmethod
    def _from_mapping(
        cls, data: Mapping[str, Any], loc: Loc, errors: list[ErrorDetails]
    ) -> Any: ...


def report(errors: list[ErrorDetails], loc: Loc, kind: str, msg: str) -> Any:
    """Append one problem; FAIL, for ``return report(...)``."""
    errors.append({"loc": loc, "msg": msg, "type": kind})
    return FAIL


def _plural(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _apply_rule(rule: Rule, value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, int | float):
        if rule.finite and not math.isfinite(value):
            return report(errors, loc, "finite_number", "Input should be a finite number")
        # The upper bound first, as pydantic reports NaN (which fails both).
        if rule.le is not None and not value <= rule.le:
            msg = f"Input should be less than or equal to {rule.le:g}"
            return report(errors, loc, "less_than_equal", msg)
        if rule.ge is not None and not value >= rule.ge:
            msg = f"Input should be greater than or equal to {rule.ge:g}"
            return report(errors, loc, "greater_than_equal", msg)
        if rule.gt is not None and not value > rule.gt:
            return report(errors, loc, "greater_than", f"Input should be greater than {rule.gt:g}")
        return value
    what, noun = ("String", "character") if isinstance(value, str) else ("List", "item")
    if isinstance(value, dict):
        what = "Dictionary"
    size = len(value)
    after = "" if isinstance(value, str) else f" after validation, not {size}"
    if rule.min_length is not None and size < rule.min_length:
        msg = f"{what} should have at least {_plural(rule.min_length, noun)}{after}"
        return report(errors, loc, "too_short" if what != "String" else "string_too_short", msg)
    if rule.max_length is not None and size > rule.max_length:
        msg = f"{what} should have at most {_plural(rule.max_length, noun)}{after}"
        return report(errors, loc, "too_long" if what != "String" else "string_too_long", msg)
    if isinstance(value, str) and rule.pattern and re.search(rule.pattern, value) is None:
        msg = f"String should match pattern '{rule.pattern}'"
        return report(errors, loc, "string_pattern_mismatch", msg)
    return value


def _str(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, str):
        return value
    return report(errors, loc, "string_type", "Input should be a valid string")


def _int(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return report(errors, loc, "finite_number", "Input should be a finite number")
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        return report(errors, loc, "int_from_float", msg)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            return report(errors, loc, "int_parsing", msg)
    return report(errors, loc, "int_type", "Input should be a valid integer")


def _float(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            msg = "Input should be a valid number, unable to parse string as a number"
            return report(errors, loc, "float_parsing", msg)
    return report(errors, loc, "float_type", "Input should be a valid number")


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
        return report(errors, loc, "bool_parsing", msg)
    return report(errors, loc, "bool_type", "Input should be a valid boolean")


def _any(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
    return value


_SCALARS: dict[Any, Check] = {str: _str, int: _int, float: _float, bool: _bool, Any: _any}


def _literal(choices: tuple[Any, ...]) -> Check:
    spelled = [repr(c) for c in choices]
    listed = spelled[0] if len(spelled) == 1 else ", ".join(spelled[:-1]) + f" or {spelled[-1]}"

    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        return report(errors, loc, "literal_error", f"Input should be {listed}")

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        return None if value is None else inner(value, loc, errors)

    return check


def _list(item: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if not isinstance(value, list | tuple):
            return report(errors, loc, "list_type", "Input should be a valid list")
        before = len(errors)
        out = [item(v, (*loc, i), errors) for i, v in enumerate(value)]
        return out if len(errors) == before else FAIL

    return check


def _dict(item: Check) -> Check:
    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if not isinstance(value, Mapping):
            return report(errors, loc, "dict_type", "Input should be a valid dictionary")
        before = len(errors)
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                report(
                    errors,
                    (*loc, str(key), "[key]"),
                    "string_type",
                    "Input should be a valid string",
                )
                continue
            out[key] = item(v, (*loc, key), errors)
        return out if len(errors) == before else FAIL

    return check


def model_check(cls: type[Modeled]) -> Check:
    """The check of a nested model: an instance as it is, a mapping validated."""

    def check(value: Any, loc: Loc, errors: list[ErrorDetails]) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            msg = f"Input should be a valid dictionary or instance of {cls.__name__}"
            return report(errors, loc, "model_type", msg)
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
            return report(errors, loc, "value_error", f"Value error, {exc}")
        value = inner(value, loc, errors)
        for each in rules:
            if value is FAIL:
                return FAIL
            value = _apply_rule(each, value, loc, errors)
        if value is FAIL:
            return FAIL
        try:
            for func in afters:
                value = func(value)
        except ValueError as exc:
            return report(errors, loc, "value_error", f"Value error, {exc}")
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
    elif isinstance(base, type) and hasattr(base, "_from_mapping"):
        check = model_check(base)
    elif optional_of(base) is not None:
        check = compile_type(base)
    else:
        raise TypeError(f"no validation for {tp!r}")
    return _annotated(check, markers, rule)
