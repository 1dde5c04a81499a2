"""What a call cost, in US dollars.

Sits at the end of every call: once upstream reports ``usage`` (or, for a
stream cut short, once :mod:`.tokens` has estimated it) the runner asks a
:class:`PricingTable` for the :class:`Cost` and records it on the span and
the metrics. The table is the provider's published list prices
(:meth:`PricingTable.published`) with the operator's overrides from the
config or the CRD layered on top (:meth:`PricingTable.with_overrides`), for
negotiated discounts, regional Azure prices, or models newer than this list.

Name resolution never guesses by prefix (``gpt-4o-mini-…`` is not ``gpt-4o``):
a model name is tried as written, then with its snapshot date stripped, and
an unknown name is reported as unpriced rather than priced wrongly. Pure
code: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Cost", "ModelPrice", "PricingTable"]

_PER_TOKEN = 1e-6  # list prices are quoted per million tokens


class ModelPrice(BaseModel):
    """List price of one model in USD per million tokens.

    Written camelCase in Kubernetes and JSON configs (``inputPerMTokUsd``),
    snake_case from Python; unknown keys are rejected so a typo in a price
    override fails loudly instead of silently pricing at the list rate.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    input_per_mtok_usd: float = Field(alias="inputPerMTokUsd", ge=0, allow_inf_nan=False)
    cached_input_per_mtok_usd: float | None = Field(
        default=None, alias="cachedInputPerMTokUsd", ge=0, allow_inf_nan=False
    )
    """``None`` when the model has no prompt-cache discount: cached tokens cost the input rate."""
    output_per_mtok_usd: float = Field(alias="outputPerMTokUsd", ge=0, allow_inf_nan=False)

    @property
    def effective_cached_input_per_mtok_usd(self) -> float:
        """The rate actually charged for cached prompt tokens."""
        if self.cached_input_per_mtok_usd is None:
            return self.input_per_mtok_usd
        return self.cached_input_per_mtok_usd


@dataclass(frozen=True, slots=True)
class Cost:
    """The price of one call, split by the three billed token kinds."""

    usd: float
    input_usd: float
    cached_input_usd: float
    output_usd: float
    model: str | None
    """The table key that priced the call; ``None`` when no name resolved."""
    priced: bool
    """``False`` when the model is unknown: ``usd`` is 0, not a real price."""
    estimated: bool
    """``True`` when the token counts were estimated, not reported by upstream."""


def _price(input_usd: float, cached_usd: float | None, output_usd: float) -> ModelPrice:
    return ModelPrice(
        input_per_mtok_usd=input_usd,
        cached_input_per_mtok_usd=cached_usd,
        output_per_mtok_usd=output_usd,
    )


# Dated snapshots priced like their alias (gpt-4o-2024-08-06, gpt-4o-2024-11-20,
# gpt-4o-mini-2024-07-18, ...) are deliberately not keys of their own: they
# resolve to the alias by stripping the date, so an operator override of the
# alias reaches them too. Only a snapshot with a price of its own is listed.
_PUBLISHED: Mapping[str, ModelPrice] = MappingProxyType(
    {
        "gpt-4o": _price(2.50, 1.25, 10.00),
        "gpt-4o-2024-05-13": _price(5.00, None, 15.00),
        "gpt-4o-mini": _price(0.15, 0.075, 0.60),
        "gpt-4-turbo": _price(10.00, None, 30.00),
        "gpt-4": _price(30.00, None, 60.00),
        "gpt-3.5-turbo": _price(0.50, None, 1.50),
        "o1": _price(15.00, 7.50, 60.00),
        "o1-preview": _price(15.00, 7.50, 60.00),
        "o1-mini": _price(1.10, 0.55, 4.40),
        "o3": _price(2.00, 0.50, 8.00),
        "o3-mini": _price(1.10, 0.55, 4.40),
        "o4-mini": _price(1.10, 0.275, 4.40),
        "gpt-4.1": _price(2.00, 0.50, 8.00),
        "gpt-4.1-mini": _price(0.40, 0.10, 1.60),
        "gpt-4.1-nano": _price(0.10, 0.025, 0.40),
        "gpt-5": _price(1.25, 0.125, 10.00),
        "gpt-5-mini": _price(0.25, 0.025, 2.00),
        "gpt-5-nano": _price(0.05, 0.005, 0.40),
    }
)

# Names whose base cannot be found by stripping a suffix. "-preview" is never
# stripped in general: gpt-4-1106-preview is GPT-4 Turbo, and stripping would
# price it as gpt-4 at three times the rate; other previews (realtime, audio,
# search) are separately priced products that must stay unpriced here.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "gpt-4-turbo-preview": "gpt-4-turbo",
        "gpt-4-1106-preview": "gpt-4-turbo",
        "gpt-4-0125-preview": "gpt-4-turbo",
        "gpt-4-vision-preview": "gpt-4-turbo",
        "gpt-4-1106-vision-preview": "gpt-4-turbo",
    }
)

# Resolved names are remembered per table (tables are immutable), so a call's
# cost skips the suffix-stripping regexes; bounded, because upstream names the
# model it answered with and that list must not grow without end.
_RESOLVED_MAX = 1024

_DATED = re.compile(r"^(.+)-\d{4}-\d{2}-\d{2}$")  # gpt-4o-2024-08-06
_MMDD = re.compile(r"^(.+)-(\d{2})(\d{2})$")  # gpt-4-0613, gpt-3.5-turbo-0125


def _less_specific(name: str) -> str | None:
    """The next name to try for ``name``, or ``None`` when it is already a base."""
    if name in _ALIASES:
        return _ALIASES[name]
    dated = _DATED.match(name)
    if dated:
        return dated.group(1)
    mmdd = _MMDD.match(name)
    # Only a plausible month and day: "-8192" is a context size, not a date.
    if mmdd and 1 <= int(mmdd.group(2)) <= 12 and 1 <= int(mmdd.group(3)) <= 31:
        return mmdd.group(1)
    return None


def _canonical(name: str) -> str:
    name = name.strip().lower()
    # Azure forbids dots in model names and writes gpt-35-turbo for gpt-3.5-turbo;
    # both spellings are one key, for lookups and for overrides alike.
    if name.startswith("gpt-35-"):
        return "gpt-3.5-" + name.removeprefix("gpt-35-")
    return name


def _candidates(model: str) -> Iterator[str]:
    """Keys to try for ``model``, most specific first."""
    seen: set[str] = set()
    current: str | None = _canonical(model)
    while current and current not in seen:
        seen.add(current)
        yield current
        current = _less_specific(current)


def _normalise_keys(prices: Mapping[str, ModelPrice]) -> dict[str, ModelPrice]:
    out: dict[str, ModelPrice] = {}
    for name, price in prices.items():
        key = _canonical(name)
        if not key:
            raise ValueError("a model price needs a non-empty model name")
        out[key] = price
    return out


class PricingTable:
    """Model name → :class:`ModelPrice`, with name resolution and cost arithmetic.

    Precedence: the most specific key that resolves wins; for one key an
    operator override beats the built-in price. So an override of ``gpt-4o``
    prices ``gpt-4o`` and every snapshot priced like it (``gpt-4o-2024-08-06``),
    but not ``gpt-4o-2024-05-13``, which has a list price of its own, unless
    that snapshot is overridden too. Immutable: :meth:`with_overrides` returns
    a new table.
    """

    __slots__ = ("_builtin", "_overrides", "_resolved")

    def __init__(
        self,
        prices: Mapping[str, ModelPrice],
        overrides: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        self._builtin: Mapping[str, ModelPrice] = MappingProxyType(_normalise_keys(prices))
        self._overrides: Mapping[str, ModelPrice] = MappingProxyType(
            _normalise_keys(overrides or {})
        )
        self._resolved: dict[str, tuple[str, ModelPrice] | None] = {}

    @classmethod
    def published(cls) -> PricingTable:
        """The provider's list prices built into this release."""
        return cls(_PUBLISHED)

    def with_overrides(self, overrides: Mapping[str, ModelPrice]) -> PricingTable:
        """A copy where ``overrides`` win over the built-in prices (and earlier overrides).

        Model names are matched case-insensitively and in either the OpenAI or
        the Azure spelling (``gpt-35-turbo``); an override of an alias also
        prices the snapshots that resolve to it (see the class docstring).
        """
        merged = {**self._overrides, **_normalise_keys(overrides)}
        return PricingTable(self._builtin, merged)

    def lookup(self, model: str) -> tuple[str, ModelPrice] | None:
        """The key and price for ``model``, or ``None`` when it does not resolve."""
        resolved = self._resolved
        if model in resolved:
            return resolved[model]
        found: tuple[str, ModelPrice] | None = None
        for key in _candidates(model):
            if key in self._overrides:
                found = key, self._overrides[key]
                break
            if key in self._builtin:
                found = key, self._builtin[key]
                break
        if len(resolved) < _RESOLVED_MAX:
            resolved[model] = found
        return found

    def cost(
        self,
        *,
        model: str | None,
        fallback_model: str | None = None,
        prompt_tokens: int,
        cached_tokens: int = 0,
        completion_tokens: int,
        estimated: bool = False,
    ) -> Cost:
        """Price one call.

        ``model`` is the one upstream answered with (Azure reports the real
        snapshot behind a deployment); ``fallback_model`` is the one the
        request asked for, used when the first does not resolve. Cached
        tokens are part of ``prompt_tokens`` and are clamped into it;
        reasoning tokens are part of ``completion_tokens`` (billed as output).
        """
        found: tuple[str, ModelPrice] | None = None
        for name in (model, fallback_model):
            if name:
                found = self.lookup(name)
                if found is not None:
                    break
        if found is None:
            return Cost(
                usd=0.0,
                input_usd=0.0,
                cached_input_usd=0.0,
                output_usd=0.0,
                model=None,
                priced=False,
                estimated=estimated,
            )
        key, price = found
        # Upstream counts are trusted but not blindly: a negative or
        # inconsistent count must never produce a negative cost.
        prompt = max(0, prompt_tokens)
        cached = min(max(0, cached_tokens), prompt)
        completion = max(0, completion_tokens)
        input_usd = (prompt - cached) * price.input_per_mtok_usd * _PER_TOKEN
        cached_usd = cached * price.effective_cached_input_per_mtok_usd * _PER_TOKEN
        output_usd = completion * price.output_per_mtok_usd * _PER_TOKEN
        return Cost(
            usd=input_usd + cached_usd + output_usd,
            input_usd=input_usd,
            cached_input_usd=cached_usd,
            output_usd=output_usd,
            model=key,
            priced=True,
            estimated=estimated,
        )

    def models(self) -> list[str]:
        """Every key with a price, built-in or overridden, sorted."""
        return sorted({*self._builtin, *self._overrides})
