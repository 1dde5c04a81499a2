from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from openai_runtime_sidecar.runner.pricing import Cost, ModelPrice, PricingTable

# The list prices this release must charge: input / cached input / output per 1M tokens.
LIST_PRICES: dict[str, tuple[float, float | None, float]] = {
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": (5.00, None, 15.00),
    "gpt-4o-2024-08-06": (2.50, 1.25, 10.00),
    "gpt-4o-2024-11-20": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4-turbo": (10.00, None, 30.00),
    "gpt-4": (30.00, None, 60.00),
    "gpt-3.5-turbo": (0.50, None, 1.50),
    "o1": (15.00, 7.50, 60.00),
    "o1-preview": (15.00, 7.50, 60.00),
    "o1-mini": (1.10, 0.55, 4.40),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o4-mini": (1.10, 0.275, 4.40),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
}


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
    cost = table.cost(
        model=model, prompt_tokens=3_000_000, cached_tokens=1_000_000, completion_tokens=1_000_000
    )
    assert cost.priced
    assert cost.input_usd == pytest.approx(2 * input_rate)
    assert cost.cached_input_usd == pytest.approx(
        input_rate if cached_rate is None else cached_rate
    )
    assert cost.output_usd == pytest.approx(output_rate)
    assert cost.usd == pytest.approx(cost.input_usd + cost.cached_input_usd + cost.output_usd)


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
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-0314", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
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
    with pytest.raises(ValidationError):
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
