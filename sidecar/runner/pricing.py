"""What a call cost, in US dollars.

Sits at the end of every call: once upstream reports ``usage`` (or, for a
stream cut short, once :mod:`.tokens` has estimated it) the runner asks a
:class:`PricingTable` for the :class:`Cost` and records it on the span and
the metrics. The table is the provider's published list prices
(:meth:`PricingTable.published`) with the operator's overrides from the
config or the CRD layered on top (:meth:`PricingTable.with_overrides`), for
negotiated discounts, regional Azure prices, or models newer than this list.

Every built-in price is a :class:`ListPrice`: the rates, the date they were
read from their source and the source itself, so a stale price can be seen
(``openai-runtime pricing`` prints the date) and checked again.

Name resolution never guesses by prefix (``gpt-4o-mini-…`` is not ``gpt-4o``):
a model name is tried as written, then with its snapshot date stripped, and
an unknown name is reported as unpriced rather than priced wrongly. Pure
code: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import TypeVar

from .modeling import ConfigModel, Field

__all__ = ["Cost", "ListPrice", "LongContext", "ModelPrice", "PriceEntry", "PricingTable"]

_PER_TOKEN = 1e-6  # list prices are quoted per million tokens


class ModelPrice(ConfigModel):
    """List price of one model in USD per million tokens.

    Written camelCase in Kubernetes and JSON configs (``inputPerMTokUsd``),
    snake_case from Python; unknown keys are rejected so a typo in a price
    override fails loudly instead of silently pricing at the list rate.
    """

    input_per_mtok_usd: float = Field(wire="inputPerMTokUsd", ge=0, finite=True)
    cached_input_per_mtok_usd: float | None = Field(
        default=None, wire="cachedInputPerMTokUsd", ge=0, finite=True
    )
    """``None`` when the model has no prompt-cache discount: cached tokens cost the input rate."""
    output_per_mtok_usd: float = Field(wire="outputPerMTokUsd", ge=0, finite=True)

    @property
    def effective_cached_input_per_mtok_usd(self) -> float:
        """The rate actually charged for cached prompt tokens."""
        if self.cached_input_per_mtok_usd is None:
            return self.input_per_mtok_usd
        return self.cached_input_per_mtok_usd


@dataclass(frozen=True, slots=True)
class LongContext:
    """A surcharge on one whole request whose prompt exceeds a size.

    OpenAI prices the 1.05M-context models (GPT-5.4, GPT-5.4 pro) at 2x input
    and 1.5x output once a prompt passes 272K tokens, for every token of that
    request, not only those past the line; cached input is input and is
    multiplied too.
    """

    above_prompt_tokens: int
    input_multiplier: float
    output_multiplier: float


@dataclass(frozen=True, slots=True)
class ListPrice:
    """A built-in list price with the date it was read and where from.

    Kept apart from :class:`ModelPrice`, which is also the override schema of
    the config and the CRD: an operator's override has no source to cite.
    """

    price: ModelPrice
    as_of: date
    """When the source was read showing this price (for a price dataset: its own check date)."""
    source: str
    long_context: LongContext | None = None


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """One row of the table: the price charged for a key and, if built in, its provenance."""

    model: str
    price: ModelPrice
    listed: ListPrice | None
    """The built-in list price; ``None`` when an operator override sets this key."""


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


# Where the prices were read. OpenAI's model pages are the primary source
# (stored copies read on 2026-11-30, which show no date of their own). Where
# no OpenAI page could be read, the price comes from pydantic's genai-prices,
# a curated transcription of OpenAI's pricing pages that records the date it
# last checked each model; its snapshot of 2026-08-21 is pinned so the cited
# text cannot move.
_OPENAI_READ = "2026-11-30"
_GENAI_PRICES = (
    "https://github.com/pydantic/genai-prices/blob/"
    "47df840a5ab10bbcffb8e5ac01b9899032245d1b/prices/providers/openai.yml"
)
_GENAI_PRICES_SNAPSHOT = "2026-08-21"  # for its entries that carry no check date


def _openai_page(model: str) -> str:
    return f"https://developers.openai.com/api/docs/models/{model}"


# OpenAI, on the GPT-5.4 model page: "For models with a 1.05M context window
# (GPT-5.4 and GPT-5.4 pro), prompts with >272K input tokens are priced at 2x
# input and 1.5x output for the full session". Its token counts are decimal
# (the same pages give "Maximum input tokens: 272,000").
_GPT_5_4_LONG_CONTEXT = LongContext(
    above_prompt_tokens=272_000, input_multiplier=2.0, output_multiplier=1.5
)


def _listed(
    input_usd: float,
    cached_usd: float | None,
    output_usd: float,
    *,
    as_of: str,
    source: str,
    long_context: LongContext | None = None,
) -> ListPrice:
    return ListPrice(
        price=_price(input_usd, cached_usd, output_usd),
        as_of=date.fromisoformat(as_of),
        source=source,
        long_context=long_context,
    )


def _genai(
    input_usd: float, cached_usd: float | None, output_usd: float, *, checked: str
) -> ListPrice:
    return _listed(input_usd, cached_usd, output_usd, as_of=checked, source=_GENAI_PRICES)


def _openai(
    model: str,
    input_usd: float,
    cached_usd: float | None,
    output_usd: float,
    *,
    long_context: LongContext | None = None,
) -> ListPrice:
    return _listed(
        input_usd,
        cached_usd,
        output_usd,
        as_of=_OPENAI_READ,
        source=_openai_page(model),
        long_context=long_context,
    )


# Dated snapshots priced like their alias (gpt-4o-2024-08-06, gpt-5.4-2026-03-05,
# o3-pro-2025-06-10, ...) are deliberately not keys of their own: they resolve
# to the alias by stripping the date, so an operator override of the alias
# reaches them too. Only a snapshot with a price of its own is listed.
#
# Embedding models bill input tokens only: their output rate is 0, and usage
# reports no completion tokens for them anyway.
#
# Left out on purpose (unpriced, never guessed): models billed for more than
# the token counts in ``usage`` can show, i.e. search previews and deep
# research (a fee per search call), realtime/audio/image models (audio and
# image tokens at other rates) and GPT-5.6 and later (cache writes billed
# apart); and GPT-5.5 / 5.5 pro, whose long-context terms no OpenAI page
# read here states.
_PUBLISHED: Mapping[str, ListPrice] = MappingProxyType(
    {
        # Embeddings. OpenAI's text-embedding-3-large page lists both v3 models
        # in its comparison; ada-002's price is from OpenAI's announcement of
        # the v3 models, which priced them against it.
        "text-embedding-3-small": _listed(
            0.02, None, 0.0, as_of=_OPENAI_READ, source=_openai_page("text-embedding-3-large")
        ),
        "text-embedding-3-large": _openai("text-embedding-3-large", 0.13, None, 0.0),
        "text-embedding-ada-002": _listed(
            0.10,
            None,
            0.0,
            as_of="2024-01-25",
            source="https://openai.com/index/new-embedding-models-and-api-updates/",
        ),
        # GPT-3.5 and GPT-4. The 0301, 0613 and 1106 snapshots are dearer than
        # gpt-3.5-turbo (0125): before they were listed here, stripping their
        # suffix priced them at the 0125 rate.
        "gpt-3.5-turbo": _openai("gpt-3.5-turbo", 0.50, None, 1.50),
        "gpt-3.5-turbo-0301": _genai(1.50, None, 2.00, checked=_GENAI_PRICES_SNAPSHOT),
        "gpt-3.5-turbo-0613": _genai(1.50, None, 2.00, checked="2025-11-07"),
        "gpt-3.5-turbo-1106": _genai(1.00, None, 2.00, checked="2025-11-07"),
        "gpt-4": _genai(30.00, None, 60.00, checked="2025-07-04"),
        "gpt-4-turbo": _genai(10.00, None, 30.00, checked="2025-07-04"),
        # GPT-4o and GPT-4.1.
        "gpt-4o": _genai(2.50, 1.25, 10.00, checked="2025-07-04"),
        "gpt-4o-2024-05-13": _listed(
            5.00,
            None,
            15.00,
            # A transcription of platform.openai.com/docs/pricing "last updated
            # on 2025-06-03"; genai-prices folds this snapshot into gpt-4o.
            as_of="2025-06-03",
            source="https://hex.pm/packages/openai_responses/0.4.1/files/lib/responses/pricing.ex",
        ),
        "gpt-4o-mini": _genai(0.15, 0.075, 0.60, checked="2025-07-04"),
        "gpt-4.1": _genai(2.00, 0.50, 8.00, checked="2025-07-04"),
        "gpt-4.1-mini": _genai(0.40, 0.10, 1.60, checked="2025-07-04"),
        "gpt-4.1-nano": _genai(0.10, 0.025, 0.40, checked="2025-07-04"),
        # o-series reasoning models (reasoning tokens are billed as output).
        "o1": _genai(15.00, 7.50, 60.00, checked="2025-07-04"),
        "o1-preview": _genai(15.00, 7.50, 60.00, checked="2025-07-04"),
        "o1-mini": _genai(1.10, 0.55, 4.40, checked="2025-07-04"),
        "o1-pro": _genai(150.00, None, 600.00, checked="2025-07-04"),
        "o3": _genai(2.00, 0.50, 8.00, checked="2025-07-12"),
        "o3-mini": _genai(1.10, 0.55, 4.40, checked="2025-07-04"),
        "o3-pro": _genai(20.00, None, 80.00, checked=_GENAI_PRICES_SNAPSHOT),
        "o4-mini": _genai(1.10, 0.275, 4.40, checked="2025-07-04"),
        "codex-mini-latest": _genai(1.50, 0.375, 6.00, checked=_GENAI_PRICES_SNAPSHOT),
        # GPT-5.
        "gpt-5": _genai(1.25, 0.125, 10.00, checked="2025-11-13"),
        "gpt-5-chat-latest": _genai(1.25, 0.125, 10.00, checked="2025-11-13"),
        "gpt-5-codex": _openai("gpt-5-codex", 1.25, 0.125, 10.00),
        "gpt-5-mini": _openai("gpt-5-mini", 0.25, 0.025, 2.00),
        "gpt-5-nano": _openai("gpt-5-nano", 0.05, 0.005, 0.40),
        "gpt-5-pro": _openai("gpt-5-pro", 15.00, None, 120.00),
        # GPT-5.1.
        "gpt-5.1": _openai("gpt-5.1", 1.25, 0.125, 10.00),
        "gpt-5.1-chat-latest": _genai(1.25, 0.125, 10.00, checked="2025-11-13"),
        "gpt-5.1-codex": _genai(1.25, 0.125, 10.00, checked="2025-11-13"),
        "gpt-5.1-codex-max": _genai(1.25, 0.125, 10.00, checked="2025-11-13"),
        "gpt-5.1-codex-mini": _genai(0.25, 0.025, 2.00, checked="2025-11-13"),
        # GPT-5.2 and GPT-5.3.
        "gpt-5.2": _genai(1.75, 0.175, 14.00, checked="2025-12-11"),
        "gpt-5.2-chat-latest": _genai(1.75, 0.175, 14.00, checked="2025-12-11"),
        "gpt-5.2-codex": _genai(1.75, 0.175, 14.00, checked="2025-12-11"),
        "gpt-5.2-pro": _genai(21.00, None, 168.00, checked="2025-12-11"),
        "gpt-5.3-chat-latest": _genai(1.75, 0.175, 14.00, checked="2026-05-07"),
        "gpt-5.3-codex": _genai(1.75, 0.175, 14.00, checked="2026-02-05"),
        # GPT-5.4: the 1.05M-context models carry the long-context surcharge;
        # mini and nano (400K context, 272K input at most) cannot reach it.
        "gpt-5.4": _openai("gpt-5.4", 2.50, 0.25, 15.00, long_context=_GPT_5_4_LONG_CONTEXT),
        "gpt-5.4-mini": _genai(0.75, 0.075, 4.50, checked="2026-03-18"),
        "gpt-5.4-nano": _genai(0.20, 0.02, 1.25, checked="2026-03-18"),
        "gpt-5.4-pro": _listed(
            30.00,
            None,
            180.00,
            as_of="2026-03-06",
            source=_GENAI_PRICES,
            long_context=_GPT_5_4_LONG_CONTEXT,
        ),
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


_P = TypeVar("_P")


def _normalise_keys(prices: Mapping[str, _P]) -> dict[str, _P]:
    out: dict[str, _P] = {}
    for name, price in prices.items():
        key = _canonical(name)
        if not key:
            raise ValueError("a model price needs a non-empty model name")
        out[key] = price
    return out


# What a name resolves to: the key, the rates charged, and the long-context
# surcharge that comes with a built-in price (an override is a flat rate).
_Resolved = tuple[str, ModelPrice, LongContext | None]


class PricingTable:
    """Model name → :class:`ModelPrice`, with name resolution and cost arithmetic.

    Precedence: the most specific key that resolves wins; for one key an
    operator override beats the built-in price. So an override of ``gpt-4o``
    prices ``gpt-4o`` and every snapshot priced like it (``gpt-4o-2024-08-06``),
    but not ``gpt-4o-2024-05-13``, which has a list price of its own, unless
    that snapshot is overridden too. An override replaces the whole list
    price, long-context surcharge included: it is the operator's rate for that
    model. Immutable: :meth:`with_overrides` returns a new table.
    """

    __slots__ = ("_builtin", "_overrides", "_resolved")

    def __init__(
        self,
        prices: Mapping[str, ListPrice],
        overrides: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        self._builtin: Mapping[str, ListPrice] = MappingProxyType(_normalise_keys(prices))
        self._overrides: Mapping[str, ModelPrice] = MappingProxyType(
            _normalise_keys(overrides or {})
        )
        self._resolved: dict[str, _Resolved | None] = {}

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

    def _resolve(self, model: str) -> _Resolved | None:
        resolved = self._resolved
        if model in resolved:
            return resolved[model]
        found: _Resolved | None = None
        for key in _candidates(model):
            if key in self._overrides:
                found = key, self._overrides[key], None
                break
            if key in self._builtin:
                listed = self._builtin[key]
                found = key, listed.price, listed.long_context
                break
        if len(resolved) < _RESOLVED_MAX:
            resolved[model] = found
        return found

    def lookup(self, model: str) -> tuple[str, ModelPrice] | None:
        """The key and price for ``model``, or ``None`` when it does not resolve."""
        found = self._resolve(model)
        return None if found is None else (found[0], found[1])

    def cost(
        self,
        *,
        model: str | None,
        fallback_model: str | None = None,
        prompt_tokens: int,
        cached_tokens: int = 0,
        completion_tokens: int = 0,
        estimated: bool = False,
    ) -> Cost:
        """Price one call.

        ``model`` is the one upstream answered with (Azure reports the real
        snapshot behind a deployment); ``fallback_model`` is the one the
        request asked for, used when the first does not resolve. Cached
        tokens are part of ``prompt_tokens`` and are clamped into it.
        Reasoning tokens are part of ``completion_tokens`` (OpenAI counts
        them in ``completion_tokens`` / ``output_tokens`` and bills them as
        output), so they are never passed, or charged, a second time. An
        embedding call has prompt tokens only: ``completion_tokens`` is 0.
        """
        found: _Resolved | None = None
        for name in (model, fallback_model):
            if name:
                found = self._resolve(name)
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
        key, price, long_context = found
        # Upstream counts are trusted but not blindly: a negative or
        # inconsistent count must never produce a negative cost.
        prompt = max(0, prompt_tokens)
        cached = min(max(0, cached_tokens), prompt)
        completion = max(0, completion_tokens)
        input_rate = price.input_per_mtok_usd
        cached_rate = price.effective_cached_input_per_mtok_usd
        output_rate = price.output_per_mtok_usd
        if long_context is not None and prompt > long_context.above_prompt_tokens:
            input_rate *= long_context.input_multiplier
            cached_rate *= long_context.input_multiplier
            output_rate *= long_context.output_multiplier
        input_usd = (prompt - cached) * input_rate * _PER_TOKEN
        cached_usd = cached * cached_rate * _PER_TOKEN
        output_usd = completion * output_rate * _PER_TOKEN
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

    def entries(self) -> list[PriceEntry]:
        """Every key with the price charged for it and, if built in, its date and source."""
        return [
            PriceEntry(key, self._overrides[key], None)
            if key in self._overrides
            else PriceEntry(key, self._builtin[key].price, self._builtin[key])
            for key in self.models()
        ]
