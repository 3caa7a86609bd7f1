"""Differential privacy for ai4hi sites: accountants, calibration/planning, site policy, budget, ledger,
client-level DP.

Pure cores (no NVFlare). Names are imported lazily, so ``import ai4hi_sdk.privacy.dp`` stays cheap
(opacus's maths and torch load on first use).

* :mod:`.accountants` - ``PrivacyAccountant`` (``step``, ``get_epsilon``, ``projected_epsilon``,
  ``to_dict``/``from_dict``), ``RDPAccountant``, ``PRVAccountant``, ``create_accountant``.
* :mod:`.calibration` - ``noise_multiplier_for_target``, ``plan`` -> ``Plan``.
* the site's policy schema lives with the other schemas: :mod:`ai4hi_sdk.config.site_policy`.
* :mod:`.budget` - ``PrivacyBudget`` (``check_round``, ``commit_round``) -> ``BudgetDecision``,
  ``BudgetExceeded``, ``PRIVACY_STATE_DIR``.
* :mod:`.ledger` - ``PrivacyLedger`` (``record_round``, ``record_decision``, ``summary``, ``verify``),
  ``PRIVACY_LEDGER``.
* :mod:`.client_level` - ``clip_by_l2``, ``add_distributed_gaussian_noise``, ``secure_generator``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "accountants": [
        "AccountingError", "InvalidPrivacyParameter", "PRVAccountant", "PrivacyAccountant", "RDPAccountant",
        "available_accountants", "create_accountant",
    ],
    "calibration": ["Plan", "noise_multiplier_for_target", "plan"],
    "budget": ["PRIVACY_STATE_DIR", "BudgetExceeded", "PrivacyBudget"],
    "budget_decision": ["BudgetDecision"],
    "ledger": ["PRIVACY_LEDGER", "DatasetSummary", "PrivacyLedger"],
    "client_level": [
        "add_distributed_gaussian_noise", "clip_by_l2", "effective_noise_multiplier", "noise_share_std",
        "noise_shortfall", "privatize_delta", "secure_generator", "surviving_noise_multiplier",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
