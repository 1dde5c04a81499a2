"""Model labels: names the runtime knows are kept, anything else is ``other``."""

from __future__ import annotations

from openai_runtime_sidecar.labels import OTHER, ModelLabels
from openai_runtime_sidecar.runner.pricing import PricingTable


def test_known_names_are_kept_and_invented_ones_fold() -> None:
    label = ModelLabels(["my-finetune"], PricingTable.published())
    assert label("my-finetune") == "my-finetune"  # allowed, though unpriced
    assert label("gpt-4o-mini") == "gpt-4o-mini"  # priced
    assert label("gpt-4o-mini-2024-07-18") == "gpt-4o-mini-2024-07-18"  # a dated snapshot
    assert label("made-up") == OTHER
    assert label(None) is None and label("") is None


def test_without_prices_only_the_allow_list_counts() -> None:
    label = ModelLabels(["a"])
    assert (label("a"), label("gpt-4o")) == ("a", OTHER)


def test_the_memo_of_unknown_names_is_bounded() -> None:
    label = ModelLabels()
    for n in range(10_000):
        assert label(f"name-{n}") == OTHER
    assert len(label._known) <= 4096


def test_priced_names_past_the_bound_take_their_price_entry() -> None:
    """Every date and every spelling resolves to a price: the exact names are capped."""
    label = ModelLabels(["mine"], PricingTable.published(), max_priced=3)
    kept = ["gpt-4o-2030-01-01", "GPT-4o", "o3-2030-01-01"]
    assert [label(name) for name in kept] == kept
    assert label("gpt-4o-2030-01-02") == "gpt-4o"
    assert label("Gpt-4O") == "gpt-4o"
    assert label("o3-2031-12-31") == "o3"
    assert label("mine") == "mine", "the allow-list is never capped"
    assert label(kept[0]) == kept[0], "a name once kept stays kept"
    flood = {label(f"gpt-4o-mini-{2000 + n // 365}-0{1 + n % 9}-1{n % 9}") for n in range(5000)}
    assert flood == {"gpt-4o-mini"}
    assert len(label._known) <= 4096
