"""Bounded model names for metric labels and the spend map.

Apps choose the ``model`` they send, and upstream echoes what it serves: with
no allow-list, every distinct name would become a new time series and a new
``/status`` entry, so a careless or hostile app could grow ``/metrics`` (and
the time to render it) without end. :class:`ModelLabels` keeps a name only
when the runtime knows it, through its allow-list or its price table (dated
snapshots and overrides included); every other name is counted as ``other``.
Spans keep the real names: they are not aggregated.
"""

from __future__ import annotations

from collections.abc import Collection

from .runner.pricing import PricingTable

__all__ = ["OTHER", "ModelLabels"]

OTHER = "other"


class ModelLabels:
    """``label(name)``: the name itself when the runtime knows it, else ``other``."""

    def __init__(self, allow: Collection[str] = (), pricing: PricingTable | None = None) -> None:
        self._allow = frozenset(allow)
        self._pricing = pricing
        self._known: dict[str, str] = {}

    def __call__(self, name: str | None) -> str | None:
        if not name:
            return None
        label = self._known.get(name)
        if label is None:
            known = name in self._allow or (
                self._pricing is not None and self._pricing.lookup(name) is not None
            )
            label = name if known else OTHER
            if known or len(self._known) < 4096:
                # Remembered to skip the lookup next time; unknown names only up
                # to a bound, or the memo would be the unbounded map itself.
                self._known[name] = label
        return label
