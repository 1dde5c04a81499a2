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
