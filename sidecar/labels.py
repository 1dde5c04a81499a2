"""Bounded model names for metric labels and the spend map.

Apps choose the ``model`` they send, and upstream echoes what it serves: with
no allow-list, every distinct name would become a new time series and a new
``/status`` entry, so a careless or hostile app could grow ``/metrics`` (and
the time to render it) without end. :class:`ModelLabels` keeps a name only
when the runtime knows it, through its allow-list or its price table;
every other name is counted as ``other``.

The price table resolves any dated snapshot (``gpt-4o-2031-01-01``) and any
spelling of a case, so what it vouches for is bounded too: the first
``max_priced`` distinct names keep their own label (the snapshots a runtime
really serves), later ones take the name of their price-table entry
(``gpt-4o``), of which there are a few dozen. Spans keep the real names: they
are not aggregated.
"""

from __future__ import annotations

from collections.abc import Collection

from .runner.pricing import PricingTable

__all__ = ["OTHER", "ModelLabels"]

OTHER = "other"


class ModelLabels:
    """``label(name)``: the name when the runtime knows it, its price entry, or ``other``."""

    def __init__(
        self,
        allow: Collection[str] = (),
        pricing: PricingTable | None = None,
        *,
        max_priced: int = 32,
    ) -> None:
        self._allow = frozenset(allow)
        self._pricing = pricing
        self._max_priced = max_priced
        self._priced = 0
        self._known: dict[str, str] = {}

    def __call__(self, name: str | None) -> str | None:
        if not name:
            return None
        label = self._known.get(name)
        if label is None:
            label = self._label(name)
            if label == name or len(self._known) < 4096:
                # Remembered to skip the lookup next time; folded names only up
                # to a bound, or the memo would be the unbounded map itself.
                self._known[name] = label
        return label

    def _label(self, name: str) -> str:
        if name in self._allow:
            return name
        found = self._pricing.lookup(name) if self._pricing is not None else None
        if found is None:
            return OTHER
        if self._priced < self._max_priced:
            self._priced += 1
            return name
        return found[0]
