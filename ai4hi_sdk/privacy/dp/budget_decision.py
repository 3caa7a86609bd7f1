"""What a site's budget decided about one round (pure data, shared by the budget and the ledger)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _finite_or_none(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass(frozen=True)
class BudgetDecision:
    """Outcome of checking one round against the budget.

    ``epsilon_after`` is the projected total after the round (``inf`` for zero noise); for a
    refused round nothing is spent, so the dataset stays at ``epsilon_before``.
    """

    allowed: bool
    epsilon_before: float
    epsilon_after: float
    limit: float
    reason: str
    dataset_id: str = ""
    delta: float = 0.0
    accountant: str = ""
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    steps: int = 0

    @property
    def remaining_after(self) -> float:
        spent = self.epsilon_after if self.allowed else self.epsilon_before
        return max(self.limit - spent, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite numbers become ``None``)."""
        return {
            "allowed": self.allowed,
            "epsilon_before": _finite_or_none(self.epsilon_before),
            "epsilon_after": _finite_or_none(self.epsilon_after),
            "limit": self.limit,
            "reason": self.reason,
            "dataset_id": self.dataset_id,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }
