from __future__ import annotations

import dataclasses
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_runtime_sidecar.runner.modeling import ValidationError
from openai_runtime_sidecar.runner.pricing import (
    Cost,
    ListPrice,
    LongContext,
    ModelPrice,
    PricingTable,
)
from openai_runtime_sidecar.runner.results import Usage
from openai_runtime_sidecar.tools import pricing_main

# The list prices this release must charge: input / cached input / output per 1M tokens.
# Every built-in key is here (test_the_expected_list_covers_every_built_in_key), so a
# price added to or changed in the table has to be restated here too.
LIST_PRICES: dict[str, tuple[float, float | None, float]] = {
    "text-embedding-3-small": (0.02, None, 0.0),
    "text-embedding-3-large": (0.13, None, 0.0),
    "text-embedding-ada-002": (0.10, None, 0.0),
    "gpt-3.5-turbo": (0.50, None, 1.50),
    "gpt-3.5-turbo-0125": (0.50, None, 1.50),
    "gpt-3.5-turbo-0301": (1.50, None, 2.00),
    "gpt-3.5-turbo-0613": (1.50, None, 2.00),
    "gpt-3.5-turbo-1106": (1.00, None, 2.00),
    "gpt-4": (30.00, None, 60.00),
    "gpt-4-turbo": (10.00, None, 30.00),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": (5.00, None, 15.00),
    "gpt-4o-2024-08-06": (2.50, 1.25, 10.00),
    "gpt-4o-2024-11-20": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "o1": (15.00, 7.50, 60.00),
    "o1-preview": (15.00, 7.50, 60.00),
    "o1-mini": (1.10, 0.55, 4.40),
    "o1-pro": (150.00, None, 600.00),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o3-pro": (20.00, None, 80.00),
    "o4-mini": (1.10, 0.275, 4.40),
    "codex-mini-latest": (1.50, 0.375, 6.00),
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-chat-latest": (1.25, 0.125, 10.00),
    "gpt-5-codex": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-5-pro": (15.00, None, 120.00),
    "gpt-5.1": (1.25, 0.125, 10.00),
    "gpt-5.1-chat-latest": (1.25, 0.125, 10.00),
    "gpt-5.1-codex": (1.25, 0.125, 10.00),
    "gpt-5.1-codex-max": (1.25, 0.125, 10.00),
    "gpt-5.1-codex-mini": (0.25, 0.025, 2.00),
    "gpt-5.2": (1.75, 0.175, 14.00),
    "gpt-5.2-chat-latest": (1.75, 0.175, 14.00),
    "gpt-5.2-codex": (1.75, 0.175, 14.00),
    "gpt-5.2-pro": (21.00, None, 168.00),
    "gpt-5.3-chat-latest": (1.75, 0.175, 14.00),
    "gpt-5.3-codex": (1.75, 0.175, 14.00),
    "gpt-5.4": (2.50, 0.25, 15.00),
    "gpt-5.4-mini": (0.75, 0.075, 4.50),
    "gpt-5.4-nano": (0.20, 0.02, 1.25),
    "gpt-5.4-pro": (30.00, None, 180.00),
}

EMBEDDING_MODELS = ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]
LONG_CONTEXT_MODELS = ["gpt-5.4", "gpt-5.4-pro"]


@pytest.fixture
def table() -> PricingTable:
    return PricingTable.published()


def price(input_usd: float, cached_usd: float | None, output_usd: float) -> ModelPrice:
    return ModelPrice(
        input_per_mtok_usd=input_usd,
        cached_input_per_mtok_usd=cached_usd,
        output_per_mtok_usd=output_usd,
    )


@pytest.mark.parametrize(("model", "prices"), LIST_PRICES.items())
def test_every_listed_model_is_priced_at_its_list_price(
    table: PricingTable, model: str, prices: tuple[float, float | None, float]
) -> None:
    input_rate, cached_rate, output_rate = prices
    # 200K prompt tokens: under the 272K long-context line, so list rates apply everywhere.
    cost = table.cost(
        model=model, prompt_tokens=200_000, cached_tokens=100_000, completion_tokens=100_000
    )
    assert cost.priced
    assert cost.input_usd == pytest.approx(0.1 * input_rate)
    assert cost.cached_input_usd == pytest.approx(
        0.1 * (input_rate if cached_rate is None else cached_rate)
    )
    assert cost.output_usd == pytest.approx(0.1 * output_rate)
    assert cost.usd == pytest.approx(cost.input_usd + cost.cached_input_usd + cost.output_usd)


def test_the_expected_list_covers_every_built_in_key(table: PricingTable) -> None:
    assert set(table.models()) <= set(LIST_PRICES)


def test_every_built_in_price_says_when_and_where_it_was_read(table: PricingTable) -> None:
    entries = table.entries()
    assert [entry.model for entry in entries] == table.models()
    for entry in entries:
        listed = entry.listed
        assert isinstance(listed, ListPrice), entry.model
        assert listed.price == entry.price
        # A real reading date: not before these models existed, not in the future.
        assert date(2024, 1, 1) <= listed.as_of <= date.today(), entry.model
        assert listed.source.startswith("https://"), entry.model


def test_pricing_command_prints_each_rows_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert pricing_main([]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert "as of" in header
    assert len(rows) == len(PricingTable.published().models())
    by_model = {row.split()[0]: row for row in rows}
    for entry in PricingTable.published().entries():
        assert entry.listed is not None
        assert entry.listed.as_of.isoformat() in by_model[entry.model]
    assert "prompts over 272,000 tokens: input x2, output x1.5" in by_model["gpt-5.4"]
    assert "prompts over" not in by_model["gpt-5.4-mini"]


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_embedding_models_price_input_tokens_only(table: PricingTable, model: str) -> None:
    input_rate = LIST_PRICES[model][0]
    # What an embeddings response reports: prompt tokens, no completion tokens.
    usage = Usage.from_payload({"prompt_tokens": 1_000_000, "total_tokens": 1_000_000})
    assert usage is not None
    cost = table.cost(
        model=model,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
    )
    assert cost.priced
    assert cost.usd == pytest.approx(input_rate)
    assert cost.output_usd == 0.0
    assert cost.cached_input_usd == 0.0
    # Output tokens, should an embedding ever report any, cost nothing.
    assert table.cost(model=model, prompt_tokens=0, completion_tokens=1_000_000).usd == 0.0
    # completion_tokens defaults to 0 for callers with input-only usage.
    assert table.cost(model=model, prompt_tokens=1_000_000).usd == pytest.approx(input_rate)


def test_reasoning_tokens_are_counted_once_inside_completion_tokens(table: PricingTable) -> None:
    # OpenAI reports reasoning tokens as a detail of completion_tokens, not on top of them.
    usage = Usage.from_payload(
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 5_000,
            "total_tokens": 6_000,
            "completion_tokens_details": {"reasoning_tokens": 4_000},
        }
    )
    assert usage is not None
    assert usage.reasoning_tokens == 4_000
    cost = table.cost(
        model="o3",
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
    )
    assert cost.output_usd == pytest.approx(5_000 * 8.00 / 1e6)
    assert cost.usd == pytest.approx((1_000 * 2.00 + 5_000 * 8.00) / 1e6)


def test_exact_formula_with_cached_tokens(table: PricingTable) -> None:
    cost = table.cost(
        model="gpt-4o-mini", prompt_tokens=1000, cached_tokens=400, completion_tokens=500
    )
    assert cost.usd == pytest.approx((600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6)
    assert cost.input_usd == pytest.approx(600 * 0.15 / 1e6)
    assert cost.cached_input_usd == pytest.approx(400 * 0.075 / 1e6)
    assert cost.output_usd == pytest.approx(500 * 0.60 / 1e6)
    assert (cost.model, cost.priced, cost.estimated) == ("gpt-4o-mini", True, False)


def test_models_without_cache_discount_charge_input_rate_for_cached(
    table: PricingTable,
) -> None:
    cost = table.cost(model="gpt-4", prompt_tokens=1000, cached_tokens=400, completion_tokens=0)
    assert cost.input_usd == pytest.approx(600 * 30 / 1e6)
    assert cost.cached_input_usd == pytest.approx(400 * 30 / 1e6)
    assert cost.usd == pytest.approx(1000 * 30 / 1e6)


def test_reasoning_tokens_are_just_completion_tokens(table: PricingTable) -> None:
    cost = table.cost(model="o3", prompt_tokens=0, completion_tokens=2000)
    assert cost.usd == pytest.approx(2000 * 8.00 / 1e6)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o1-mini-2024-09-12", "o1-mini"),
        ("o1-preview-2024-09-12", "o1-preview"),
        ("o1-2024-12-17", "o1"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
        ("gpt-5-pro-2025-10-06", "gpt-5-pro"),
        ("gpt-5.1-2025-11-13", "gpt-5.1"),
        ("gpt-5.2-2025-12-11", "gpt-5.2"),
        ("gpt-5.2-pro-2025-12-11", "gpt-5.2-pro"),
        ("gpt-5.4-2026-03-05", "gpt-5.4"),
        ("gpt-5.4-mini-2026-03-17", "gpt-5.4-mini"),
        ("gpt-5.4-nano-2026-03-17", "gpt-5.4-nano"),
        ("gpt-5.4-pro-2026-03-05", "gpt-5.4-pro"),
        ("o3-2025-04-16", "o3"),
        ("o3-pro-2025-06-10", "o3-pro"),
        ("o1-pro-2025-03-19", "o1-pro"),
        ("GPT-5.1-Codex-Mini", "gpt-5.1-codex-mini"),
        ("Text-Embedding-3-Small", "text-embedding-3-small"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-0314", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613"),
        ("gpt-35-turbo-1106", "gpt-3.5-turbo-1106"),
        ("gpt-4-turbo-preview", "gpt-4-turbo"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),
        ("gpt-4-0125-preview", "gpt-4-turbo"),
        ("gpt-35-turbo", "gpt-3.5-turbo"),
        ("gpt-35-turbo-0125", "gpt-3.5-turbo"),
        ("GPT-4o-Mini", "gpt-4o-mini"),
        ("  gpt-4o  ", "gpt-4o"),
        ("GPT-35-TURBO", "gpt-3.5-turbo"),
    ],
)
def test_lookup_resolves_snapshots_and_spellings(table: PricingTable, model: str, key: str) -> None:
    found = table.lookup(model)
    assert found is not None
    assert found[0] == key


def test_dated_snapshot_with_its_own_price_differs_from_alias(table: PricingTable) -> None:
    alias = table.cost(model="gpt-4o", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    may = table.cost(
        model="gpt-4o-2024-05-13", prompt_tokens=1_000_000, completion_tokens=1_000_000
    )
    assert alias.usd == pytest.approx(12.50)
    assert may.usd == pytest.approx(20.00)


@pytest.mark.parametrize(
    "model",
    [
        "my-llama",
        "",
        "   ",
        "gpt-4o-realtime-preview",  # its own product and price: no "-preview" stripping
        "gpt-4o-audio-preview-2024-12-17",
        "gpt-4-32k",  # never a loose prefix match onto gpt-4
        "gpt-4-32k-0613",
        "gpt-35-turbo-16k",
        "gpt-4o-minis",
        "gpt-5-8192",  # not a date: no stripping
        "ft:gpt-4o-mini-2024-07-18:org::abc",
        # Billed for more than usage shows (search calls, audio, cache writes) or
        # long-context terms not sourced: unpriced until an operator prices them.
        "gpt-4o-search-preview",
        "gpt-4o-mini-search-preview-2025-03-11",
        "o3-deep-research",
        "gpt-realtime",
        "gpt-4o-transcribe",
        "gpt-5.5",
        "gpt-5.5-pro-2026-04-23",
        "gpt-5.6-sol",
        "text-embedding-3",
        "text-embedding-3-small-v2",
    ],
)
def test_unknown_models_do_not_resolve(table: PricingTable, model: str) -> None:
    assert table.lookup(model) is None
    cost = table.cost(model=model, prompt_tokens=100, completion_tokens=100)
    assert cost == Cost(
        usd=0.0,
        input_usd=0.0,
        cached_input_usd=0.0,
        output_usd=0.0,
        model=None,
        priced=False,
        estimated=False,
    )


def test_falls_back_to_request_model(table: PricingTable) -> None:
    cost = table.cost(
        model="my-azure-deployment",
        fallback_model="gpt-4o-mini",
        prompt_tokens=1000,
        completion_tokens=1000,
    )
    assert cost.priced
    assert cost.model == "gpt-4o-mini"
    assert cost.usd == pytest.approx(1000 * (0.15 + 0.60) / 1e6)
    no_response_model = table.cost(
        model=None, fallback_model="gpt-4o", prompt_tokens=1, completion_tokens=1
    )
    assert no_response_model.model == "gpt-4o"


def test_response_model_wins_over_request_model(table: PricingTable) -> None:
    cost = table.cost(
        model="gpt-4o-2024-05-13", fallback_model="gpt-4o", prompt_tokens=1, completion_tokens=1
    )
    assert cost.model == "gpt-4o-2024-05-13"


def test_neither_model_resolves(table: PricingTable) -> None:
    cost = table.cost(
        model=None, fallback_model=None, prompt_tokens=1, completion_tokens=1, estimated=True
    )
    assert not cost.priced
    assert cost.model is None
    assert cost.usd == 0.0
    assert cost.estimated


def test_estimated_flag_is_carried(table: PricingTable) -> None:
    cost = table.cost(model="gpt-4o", prompt_tokens=1, completion_tokens=1, estimated=True)
    assert cost.estimated
    assert cost.priced


def test_cached_tokens_are_clamped_into_prompt(table: PricingTable) -> None:
    over = table.cost(model="gpt-4o", prompt_tokens=100, cached_tokens=500, completion_tokens=0)
    assert over.input_usd == 0.0
    assert over.cached_input_usd == pytest.approx(100 * 1.25 / 1e6)
    under = table.cost(model="gpt-4o", prompt_tokens=100, cached_tokens=-5, completion_tokens=0)
    assert under.cached_input_usd == 0.0
    assert under.input_usd == pytest.approx(100 * 2.50 / 1e6)


def test_negative_counts_never_cost_money(table: PricingTable) -> None:
    cost = table.cost(model="gpt-4o", prompt_tokens=-10, completion_tokens=-10)
    assert cost.usd == 0.0
    assert cost.priced


def test_override_wins_for_exact_name(table: PricingTable) -> None:
    custom = table.with_overrides({"gpt-4o": price(1.0, 0.5, 2.0)})
    cost = custom.cost(model="gpt-4o", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert cost.usd == pytest.approx(3.0)
    # The original table is untouched.
    assert table.cost(
        model="gpt-4o", prompt_tokens=1_000_000, completion_tokens=1_000_000
    ).usd == pytest.approx(12.5)


def test_override_of_alias_reaches_snapshots_priced_like_it(table: PricingTable) -> None:
    custom = table.with_overrides({"GPT-4o": price(1.0, None, 2.0)})
    assert custom.lookup("gpt-4o-2024-08-06") == ("gpt-4o", price(1.0, None, 2.0))
    assert custom.lookup("gpt-4o-2024-11-20") == ("gpt-4o", price(1.0, None, 2.0))
    # A snapshot with a list price of its own is more specific than the alias.
    assert custom.lookup("gpt-4o-2024-05-13") == ("gpt-4o-2024-05-13", price(5.0, None, 15.0))


def test_override_of_snapshot_beats_override_of_alias(table: PricingTable) -> None:
    custom = table.with_overrides(
        {"gpt-4o": price(1.0, None, 2.0), "gpt-4o-2024-08-06": price(3.0, None, 4.0)}
    )
    assert custom.lookup("gpt-4o-2024-08-06") == ("gpt-4o-2024-08-06", price(3.0, None, 4.0))
    assert custom.lookup("gpt-4o-2024-11-20") == ("gpt-4o", price(1.0, None, 2.0))
    snapshot = custom.with_overrides({"gpt-4o-2024-05-13": price(9.0, None, 9.0)})
    assert snapshot.lookup("gpt-4o-2024-05-13") == ("gpt-4o-2024-05-13", price(9.0, None, 9.0))


def test_override_prices_new_models_and_their_snapshots(table: PricingTable) -> None:
    custom = table.with_overrides({"my-llama": price(0.1, None, 0.2)})
    assert custom.lookup("my-llama-2025-01-01") == ("my-llama", price(0.1, None, 0.2))
    assert "my-llama" in custom.models()
    assert "my-llama" not in table.models()


def test_override_in_azure_spelling(table: PricingTable) -> None:
    custom = table.with_overrides({"GPT-35-Turbo": price(0.4, None, 1.2)})
    # One model, two spellings: the override replaces the built-in gpt-3.5-turbo.
    assert custom.lookup("gpt-35-turbo-0125") == ("gpt-3.5-turbo", price(0.4, None, 1.2))
    assert custom.lookup("gpt-3.5-turbo") == ("gpt-3.5-turbo", price(0.4, None, 1.2))


def test_later_overrides_win(table: PricingTable) -> None:
    custom = table.with_overrides({"gpt-4o": price(1.0, None, 1.0)}).with_overrides(
        {"gpt-4o": price(2.0, None, 2.0)}
    )
    assert custom.lookup("gpt-4o") == ("gpt-4o", price(2.0, None, 2.0))


@pytest.mark.parametrize("model", EMBEDDING_MODELS)
def test_override_of_an_embedding_model_wins(table: PricingTable, model: str) -> None:
    custom = table.with_overrides({model: price(0.01, None, 0.0)})
    assert custom.cost(model=model, prompt_tokens=1_000_000).usd == pytest.approx(0.01)
    assert custom.entries()[custom.models().index(model)].listed is None


def test_override_of_a_new_family_reaches_its_snapshots(table: PricingTable) -> None:
    custom = table.with_overrides({"gpt-5.2": price(1.0, 0.1, 2.0)})
    assert custom.lookup("gpt-5.2-2025-12-11") == ("gpt-5.2", price(1.0, 0.1, 2.0))
    # gpt-5.2-pro is a model of its own, not a snapshot of gpt-5.2.
    assert custom.lookup("gpt-5.2-pro") == ("gpt-5.2-pro", price(21.0, None, 168.0))


@pytest.mark.parametrize("model", LONG_CONTEXT_MODELS)
def test_long_prompts_pay_the_long_context_rate_for_the_whole_request(
    table: PricingTable, model: str
) -> None:
    input_rate, cached_rate, output_rate = LIST_PRICES[model]
    cached_rate = input_rate if cached_rate is None else cached_rate
    at_line = table.cost(
        model=model, prompt_tokens=272_000, cached_tokens=72_000, completion_tokens=1_000
    )
    assert at_line.usd == pytest.approx(
        (200_000 * input_rate + 72_000 * cached_rate + 1_000 * output_rate) / 1e6
    )
    past_line = table.cost(
        model=f"{model}-2026-03-05",  # a dated snapshot carries the surcharge too
        prompt_tokens=272_001,
        cached_tokens=72_000,
        completion_tokens=1_000,
    )
    assert past_line.model == model
    assert past_line.input_usd == pytest.approx(200_001 * input_rate * 2 / 1e6)
    assert past_line.cached_input_usd == pytest.approx(72_000 * cached_rate * 2 / 1e6)
    assert past_line.output_usd == pytest.approx(1_000 * output_rate * 1.5 / 1e6)


def test_only_the_1m_context_models_carry_the_surcharge(table: PricingTable) -> None:
    surcharged = {
        entry.model
        for entry in table.entries()
        if entry.listed is not None and entry.listed.long_context is not None
    }
    assert surcharged == set(LONG_CONTEXT_MODELS)
    entry = table.entries()[table.models().index("gpt-5.4")]
    assert entry.listed is not None
    assert entry.listed.long_context == LongContext(
        above_prompt_tokens=272_000, input_multiplier=2.0, output_multiplier=1.5
    )
    mini = table.cost(model="gpt-5.4-mini", prompt_tokens=300_000, completion_tokens=0)
    assert mini.usd == pytest.approx(300_000 * 0.75 / 1e6)


def test_override_replaces_the_long_context_surcharge_too(table: PricingTable) -> None:
    custom = table.with_overrides({"gpt-5.4": price(1.0, None, 2.0)})
    cost = custom.cost(model="gpt-5.4", prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert cost.usd == pytest.approx(3.0)


def test_override_with_blank_name_is_rejected(table: PricingTable) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        table.with_overrides({" ": price(1.0, None, 1.0)})


def test_models_lists_the_distinct_keys(table: PricingTable) -> None:
    models = table.models()
    assert models == sorted(models)
    assert {"gpt-4o", "gpt-4o-2024-05-13", "gpt-4o-mini", "gpt-5-nano"} <= set(models)
    for model in LIST_PRICES:
        assert table.lookup(model) is not None


def test_model_price_reads_camel_case_configs() -> None:
    parsed = ModelPrice.model_validate(
        {"inputPerMTokUsd": 1.5, "cachedInputPerMTokUsd": 0.5, "outputPerMTokUsd": 6}
    )
    assert parsed == price(1.5, 0.5, 6.0)
    assert parsed.model_dump(by_alias=True) == {
        "inputPerMTokUsd": 1.5,
        "cachedInputPerMTokUsd": 0.5,
        "outputPerMTokUsd": 6.0,
    }
    no_cache = ModelPrice.model_validate({"inputPerMTokUsd": 1, "outputPerMTokUsd": 2})
    assert no_cache.cached_input_per_mtok_usd is None
    assert no_cache.effective_cached_input_per_mtok_usd == 1.0


@pytest.mark.parametrize(
    "payload",
    [
        {"inputPerMTokUsd": -1, "outputPerMTokUsd": 2},
        {"inputPerMTokUsd": 1, "outputPerMTokUsd": float("inf")},
        {"inputPerMTokUsd": 1, "cachedInputPerMTokUsd": -0.1, "outputPerMTokUsd": 2},
        {"inputPerMTokUsd": 1},
        {"inputPerMtokUsd": 1, "outputPerMTokUsd": 2},  # a typo must not pass silently
    ],
)
def test_model_price_rejects_bad_configs(payload: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ModelPrice.model_validate(payload)


def test_model_price_and_cost_are_immutable(table: PricingTable) -> None:
    frozen = price(1.0, None, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.input_per_mtok_usd = 2.0  # type: ignore[misc]
    cost = table.cost(model="gpt-4o", prompt_tokens=1, completion_tokens=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cost.usd = 0.0  # type: ignore[misc]


@given(
    model=st.sampled_from([*LIST_PRICES, "my-llama"]),
    prompt=st.integers(min_value=-10, max_value=10_000_000),
    cached=st.integers(min_value=-10, max_value=10_000_000),
    completion=st.integers(min_value=-10, max_value=10_000_000),
    extra=st.integers(min_value=0, max_value=10_000_000),
)
def test_cost_is_monotone_in_completion_and_never_negative(
    model: str, prompt: int, cached: int, completion: int, extra: int
) -> None:
    table = PricingTable.published()

    def usd(completion_tokens: int) -> Cost:
        return table.cost(
            model=model,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion_tokens,
        )

    low, high = usd(completion), usd(completion + extra)
    assert low.usd >= 0.0
    assert min(low.input_usd, low.cached_input_usd, low.output_usd) >= 0.0
    assert high.usd >= low.usd
