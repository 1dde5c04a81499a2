"""The budget gate: refuse spending calls once the runtime's budget is used up.

Where it sits in the flow::

    operator: spend of every pod -> status.spend -> ConfigMap budget.blockedUntil
    sidecar: config reload -> OpenAiRunner.reconfigure -> BudgetGate(settings)
    runner._admit(spends=True) -> BudgetGate.check() -> BudgetExceeded (429)
    runner._conclude -> BudgetGate.spent(usd)   (tight mode's local share)

Two ways to be refused: the operator judged the runtime's limit reached
(``blockedUntil``, the next period's start: the gate lifts itself then, even
before the operator rewrites the ConfigMap), or, in tight mode, this pod has
spent its share of what was left when the operator last looked
(``localLimitUsd``; a new share comes with the next look, every ``recheck``).
Pure: the time comes from the injected clock.
"""

from __future__ import annotations

from .clock import Clock
from .config import BudgetSettings
from .errors import BudgetExceeded

__all__ = ["BudgetGate"]


class BudgetGate:
    """One config's budget state and what this pod spent since it was applied."""

    def __init__(self, settings: BudgetSettings, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self._blocked_until = settings.blocked_until_epoch()
        self._local_limit = settings.local_limit_usd
        self.spent_usd = 0.0
        """USD spent by this pod since this gate was built (the local share's measure)."""

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` while spending calls are to be refused."""
        if self._blocked_until is not None:
            left = self._blocked_until - self._clock.time()
            if left > 0:
                raise BudgetExceeded(
                    f"The runtime's spend budget{self._per()} is used up; spending calls are "
                    f"refused until the next {self.settings.period} starts.",
                    retry_after=left,
                )
        if self._local_limit is not None and self.spent_usd >= self._local_limit:
            raise BudgetExceeded(
                f"This pod's share (${self._local_limit:.4f}) of what is left of the runtime's "
                f"spend budget{self._per()} is used up; a new share comes within "
                f"{self.settings.recheck:g}s.",
                retry_after=self.settings.recheck,
            )

    def spent(self, usd: float) -> None:
        self.spent_usd += usd

    def _per(self) -> str:
        limit = self.settings.limit_usd
        return f" (${limit:g} per {self.settings.period})" if limit is not None else ""
