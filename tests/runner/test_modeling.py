"""Config models without pydantic (openai_runtime_sidecar.runner.modeling).

The sidecar validates its config with these models and the operator its
spec, so what they accept, refuse and say must be what pydantic's lax mode
did when it validated them: the scalar checks are compared with pydantic
itself (installed with the operator extra, which the tests have), value by
value.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

import pydantic
import pytest

from openai_runtime_sidecar.config import SidecarConfig
from openai_runtime_sidecar.runner.durations import Duration
from openai_runtime_sidecar.runner.modeling import (
    After,
    Before,
    ConfigModel,
    Field,
    Rule,
    ValidationError,
)
from openai_runtime_sidecar.runner.schemas import json_schema

VALUES: list[Any] = [
    True,
    False,
    0,
    1,
    -1,
    2**70,
    1.0,
    1.5,
    math.nan,
    math.inf,
    "5",
    " 5 ",
    "1.5",
    "yes",
    "Off",
    "x",
    "",
    None,
    [],
    {},
]


def outcome(validate: Any, value: Any) -> tuple[str, Any]:
    try:
        result = validate(value)
    except (ValidationError, pydantic.ValidationError) as exc:
        return "error", [(e["msg"], e["type"]) for e in exc.errors()]
    if isinstance(result, float) and math.isnan(result):
        return "nan", None
    return type(result).__name__, result


class Scalars(ConfigModel):
    text: str | None = None
    whole: int | None = None
    number: float | None = None
    flag: bool | None = None
    bounded: int | None = Field(default=None, ge=1, le=20)
    positive: float | None = Field(default=None, gt=0, finite=True)
    short: str | None = Field(default=None, min_length=2, max_length=3, pattern=r"^[a-z]+$")
    choice: Literal["a", "b"] | None = None
    items: list[Annotated[str, Rule(min_length=1)]] | None = Field(default=None, max_length=2)


class PydanticScalars(pydantic.BaseModel):
    text: str | None = None
    whole: int | None = None
    number: float | None = None
    flag: bool | None = None
    bounded: int | None = pydantic.Field(default=None, ge=1, le=20)
    positive: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    short: str | None = pydantic.Field(
        default=None, min_length=2, max_length=3, pattern=r"^[a-z]+$"
    )
    choice: Literal["a", "b"] | None = None
    items: list[Annotated[str, pydantic.Field(min_length=1)]] | None = pydantic.Field(
        default=None, max_length=2
    )


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Scalars)])
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_scalars_coerce_and_refuse_as_pydantic_does(field: str, value: Any) -> None:
    ours = outcome(lambda v: getattr(Scalars.model_validate({field: v}), field), value)
    theirs = outcome(lambda v: getattr(PydanticScalars.model_validate({field: v}), field), value)
    assert ours == theirs


@pytest.mark.parametrize(
    "value",
    [["a", "b", "c"], ["a", ""], ("a",), "ab", ["a", 1]],
    ids=repr,
)
def test_lists_are_checked_as_pydantic_does(value: Any) -> None:
    ours = outcome(lambda v: Scalars.model_validate({"items": v}).items, value)
    theirs = outcome(lambda v: PydanticScalars.model_validate({"items": v}).items, value)
    assert ours == theirs


class Inner(ConfigModel):
    """An inner model."""

    wait: Duration = Field(default=1.0, description="How long.")
    name: str


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, int) else value


def _even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


Text = Annotated[str, Before(_text)]
Even = Annotated[int, After(_even)]


class Outer(ConfigModel):
    """An outer model."""

    inner: Inner = Field(description="The inner one.")
    price_per_mtok: float = Field(default=0.0, wire="pricePerMTok")
    tags: dict[str, Text] = Field(default_factory=dict)
    checked: Even = 0

    def __validate__(self) -> None:
        if self.inner.name == self.tags.get("name"):
            raise ValueError("tags.name repeats inner.name")


def errors_of(data: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


def test_every_problem_is_reported_at_its_wire_name() -> None:
    assert errors_of({"inner": {"wait": "soon"}, "pricePerMTok": "x", "bogus": 1}) == [
        (
            ("inner", "wait"),
            "Value error, invalid duration 'soon': use seconds (1.5) or units "
            "ns, us, ms, s, m, h (250ms, 1m30s)",
        ),
        (("inner", "name"), "Field required"),
        (("pricePerMTok",), "Input should be a valid number, unable to parse string as a number"),
        (("bogus",), "Extra inputs are not permitted"),
    ]
    assert errors_of({}) == [(("inner",), "Field required")]
    assert errors_of({"inner": "x"}) == [
        (("inner",), "Input should be a valid dictionary or instance of Inner")
    ]
    assert errors_of({"inner": {"name": "n"}, "checked": 3}) == [
        (("checked",), "Value error, must be even")
    ]
    assert errors_of({"inner": {"name": "n"}, "tags": {"name": "n"}}) == [
        ((), "Value error, tags.name repeats inner.name")
    ]


def test_documents_take_wire_or_python_names_and_coerce() -> None:
    outer = Outer.model_validate(
        {"inner": {"wait": "1m30s", "name": "n"}, "price_per_mtok": 2, "tags": {"n": 5}}
    )
    assert outer == Outer(inner=Inner(wait=90.0, name="n"), price_per_mtok=2.0, tags={"n": "5"})
    assert outer.model_dump() == {
        "inner": {"wait": 90.0, "name": "n"},
        "price_per_mtok": 2.0,
        "tags": {"n": "5"},
        "checked": 0,
    }
    assert outer.model_dump(by_alias=True, mode="json") == {
        "inner": {"wait": "1m30s", "name": "n"},
        "pricePerMTok": 2.0,
        "tags": {"n": "5"},
        "checked": 0,
    }
    assert Outer.model_validate(outer.model_dump(by_alias=True, mode="json")) == outer


def test_constructing_validates_like_a_document() -> None:
    assert Inner(wait="250ms", name="n").wait == 0.25  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as info:
        Outer(inner=Inner(name="n"), checked=1)
    assert str(info.value) == "1 validation error for Outer\nchecked\n  Value error, must be even"
    with pytest.raises(dataclasses.FrozenInstanceError):
        Inner(name="n").name = "m"  # type: ignore[misc]


def test_exclude_none_drops_unset_optionals_at_every_depth() -> None:
    config = SidecarConfig.model_validate({"variant": {"direct": {}}})
    dumped = config.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["variant"] == {"direct": {"endpoint": "https://api.openai.com/v1"}}
    assert "maxConnections" not in dumped["connections"]["api"]
    assert SidecarConfig.model_validate(dumped) == config


def test_json_schema_has_docstrings_descriptions_and_defaults_in_place() -> None:
    schema = json_schema(Outer)
    assert schema["description"] == "An outer model."
    assert schema["required"] == ["inner"] and schema["additionalProperties"] is False
    inner = schema["properties"]["inner"]
    assert inner["description"] == "The inner one."  # the field's words win over the docstring
    assert inner["properties"]["wait"]["default"] == "1s"
    assert inner["properties"]["wait"]["description"] == "How long."
    assert schema["properties"]["pricePerMTok"] == {"type": "number", "default": 0.0}
    assert "default" not in schema["properties"]["tags"]  # a factory's default is not shown


def test_an_unsupported_annotation_is_refused_when_first_used() -> None:
    class Odd(ConfigModel):
        when: complex = 0j

    with pytest.raises(TypeError, match="no validation for"):
        Odd.model_validate({})
