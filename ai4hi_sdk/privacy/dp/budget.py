"""Site-enforced privacy budget per dataset (pure core, no NVFlare).

Each dataset's accountant history (every DP-SGD composition ever released from it, over all
rounds of all jobs) is kept in one JSON file under ``state_dir`` (``<site>/ai4hi/privacy_state``),
written atomically and updated under an exclusive file lock, so concurrent jobs at one site
cannot both spend the last of a budget. Epsilon is always re-computed from that history with
the policy's accountant and delta.

**The ledger is the truth.** Given the site's :class:`~ai4hi_sdk.privacy.dp.ledger.PrivacyLedger`,
the budget also replays the ledger's spends of the dataset, and:

* a missing state file is rebuilt from the ledger;
* where state and ledger disagree, the larger spend wins and the disagreement is reported
  (:attr:`PrivacyBudget.discrepancies`);
* the state anchors the ledger (entry count and head hash at its last commit): a ledger that is
  shorter, rewritten or damaged (e.g. a half-written last line after a crash) makes every check
  a refusal with the reason, and nothing is spent;
* :meth:`PrivacyBudget.commit_round` is **write-ahead**: under the dataset's lock it appends the
  ledger entry (with the description of the payload about to leave) *before* it updates the
  state; if the ledger cannot be written, nothing is spent and nothing may be sent.

Patients, not folders: a dataset may share patients with datasets it was recorded under before
(the same studies copied, re-mounted or grown). The caller passes those ``related`` dataset ids;
their spends count against this one too (a conservative bound: composition over every history a
shared patient took part in).

Use in a site's training loop (fail closed: if anything raises, send nothing)::

    budget = PrivacyBudget.for_site(workspace)                     # policy + ledger of the site
    decision = budget.check_round(dataset_id, sigma, q, steps)     # before training
    ...  # train (DP-SGD with exactly sigma, q, steps), build the payload
    decision = budget.commit_round(dataset_id, sigma, q, steps,    # re-checks under the lock,
                                   write_ahead=lambda d: ledger.record_decision(d, ..., egress=...))
    ...  # only now may the update leave the site

``commit_round`` raises :class:`BudgetExceeded` (carrying the refusal decision) when the round no
longer fits, e.g. because another job spent in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ai4hi_sdk.audit.files import file_lock, write_json_atomic  # noqa: F401 (file_lock re-exported)
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.privacy.dp.accountants.base import (
    AccountingError,
    InvalidPrivacyParameter,
    PrivacyAccountant,
    check_composition,
    check_steps,
)
from ai4hi_sdk.privacy.dp.accountants.registry import create_accountant
from ai4hi_sdk.privacy.dp.budget_decision import BudgetDecision
from ai4hi_sdk.config.site_policy import SITE_POLICY, SitePrivacyPolicy, load_site_policy

if TYPE_CHECKING:
    from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger

PRIVACY_STATE_DIR = Path("ai4hi") / "privacy_state"
"""Where per-dataset accountant state lives, relative to the site workspace."""

STATE_FORMAT = 2  # 2: anchors the ledger (entry count and head hash)
_READABLE_FORMATS = (1, 2)


class BudgetExceeded(UserError):
    """``commit_round`` refused the round; ``decision`` says why. Nothing was spent."""

    def __init__(self, decision: BudgetDecision):
        self.decision = decision
        super().__init__(f"privacy budget refused the round for dataset '{decision.dataset_id}': {decision.reason}")


def _check_dataset_id(dataset_id: Any) -> str:
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise InvalidPrivacyParameter(f"dataset id must be a non-empty string, got {dataset_id!r}")
    return dataset_id


class PrivacyBudget:
    """Per-dataset epsilon budget of one site.

    Args:
        state_dir: folder of the per-dataset state files (created on first commit).
        policy: the site's policy (limits, delta, minimum noise, accountant).
        ledger: the site's privacy ledger; when given it is the truth (see the module docstring).
    """

    def __init__(self, state_dir: str | Path, policy: SitePrivacyPolicy, ledger: "PrivacyLedger | None" = None):
        self.state_dir = Path(state_dir)
        self.policy = policy
        self.ledger = ledger
        #: dataset id -> what differed between its state file and the ledger at the last load
        self.discrepancies: dict[str, str] = {}

    @classmethod
    def for_site(cls, workspace: str | Path) -> "PrivacyBudget":
        """Budget of the site workspace: policy from ``<ws>/ai4hi/site_policy.yaml``, state in
        ``<ws>/ai4hi/privacy_state``, ledger ``<ws>/ai4hi/privacy_ledger.jsonl``. A missing or
        invalid policy raises ConfigError (fail closed)."""
        from ai4hi_sdk.privacy.dp.ledger import PrivacyLedger

        workspace = Path(workspace)
        return cls(workspace / PRIVACY_STATE_DIR, load_site_policy(workspace / SITE_POLICY),
                   PrivacyLedger.for_site(workspace))

    # -- state -------------------------------------------------------------------------------
    def state_path(self, dataset_id: str) -> Path:
        dataset_id = _check_dataset_id(dataset_id)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_id).strip("._")[:64] or "dataset"
        return self.state_dir / f"{slug}-{hashlib.sha256(dataset_id.encode()).hexdigest()[:12]}.json"

    def _lock_path(self, dataset_id: str) -> Path:
        return self.state_path(dataset_id).with_suffix(".lock")

    def _read_state(self, dataset_id: str) -> dict[str, Any] | None:
        path = self.state_path(dataset_id)
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("format") not in _READABLE_FORMATS or state.get("dataset_id") != dataset_id:
                raise ValueError("not the state of this dataset")
            if not isinstance(state["accountant"].get("history"), list):
                raise ValueError("no accountant history")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise AccountingError(
                f"privacy state of dataset '{dataset_id}' ({path}) is unreadable ({err}); refusing to account "
                f"on it (delete it to rebuild it from the privacy ledger)"
            ) from err
        return state

    def _ledger_history(self, dataset_id: str, anchor: dict[str, Any] | None) -> list | None:
        """The dataset's spends according to the ledger (None without a ledger). Raises
        AccountingError when the ledger is damaged or does not reach the state's anchor."""
        if self.ledger is None:
            return None
        from ai4hi_sdk.privacy.dp.ledger import LedgerDamaged

        try:
            return self.ledger.spends(dataset_id, anchor=anchor)
        except LedgerDamaged as err:
            raise AccountingError(str(err)) from None

    def _load(self, dataset_id: str, related: Iterable[str] = ()) -> tuple[PrivacyAccountant, dict[str, Any]]:
        """The accountant over this dataset's history and every related dataset's, and this
        dataset's state record (``{}`` if it has none)."""
        state = self._read_state(dataset_id) or {}
        own = self._history(dataset_id, state)
        history = list(own)
        for other in sorted(set(related) - {dataset_id}):
            history += self._history(other, self._read_state(other) or {})
        return create_accountant(self.policy.accountant, history=history), state

    def _history(self, dataset_id: str, state: dict[str, Any]) -> list:
        """One dataset's history: the ledger's or the state's, whichever spent more."""
        from_state = list(state.get("accountant", {}).get("history", [])) if state else []
        from_ledger = self._ledger_history(dataset_id, state.get("ledger") if state else None)
        if from_ledger is None:
            return from_state
        mechanism = self.policy.accountant
        eps_state = create_accountant(mechanism, history=from_state).get_epsilon(self.policy.delta)
        eps_ledger = create_accountant(mechanism, history=from_ledger).get_epsilon(self.policy.delta)
        if not state:
            if from_ledger:
                self.discrepancies[dataset_id] = (f"no state file: rebuilt from the ledger (epsilon {eps_ledger:.4g})")
            return from_ledger
        if abs(eps_state - eps_ledger) > 1e-9 * max(1.0, eps_state):
            self.discrepancies[dataset_id] = (
                f"state says epsilon {eps_state:.4g}, ledger {eps_ledger:.4g}: the larger is used")
        return from_state if eps_state >= eps_ledger else from_ledger

    def _save(self, dataset_id: str, accountant_history: list, state: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "format": STATE_FORMAT,
            "dataset_id": dataset_id,
            "accountant": create_accountant(self.policy.accountant, history=accountant_history).to_dict(),
            "rounds": int(state.get("rounds", 0)) + 1,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.ledger is not None:
            entries, head = self.ledger.head()
            record["ledger"] = {"entries": entries, "head": head}
        write_json_atomic(self.state_path(dataset_id), record)

    def accountant(self, dataset_id: str, related: Iterable[str] = ()) -> PrivacyAccountant:
        """A copy of the dataset's accountant (policy's mechanism, full history incl. related datasets)."""
        return self._load(dataset_id, related)[0]

    def datasets(self) -> list[str]:
        """Dataset ids with recorded spend (state files or ledger)."""
        ids = set()
        for path in sorted(self.state_dir.glob("*.json")) if self.state_dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, AttributeError, KeyError):
                ids.add(json.loads(path.read_text(encoding="utf-8"))["dataset_id"])
        if self.ledger is not None:
            with contextlib.suppress(Exception):
                ids.update(self.ledger.summary().keys())
        return sorted(ids)

    # -- budget ------------------------------------------------------------------------------
    def limit(self, dataset_id: str) -> float:
        return self.policy.limit_for(_check_dataset_id(dataset_id))

    def epsilon_spent(self, dataset_id: str, related: Iterable[str] = ()) -> float:
        return self.accountant(dataset_id, related).get_epsilon(self.policy.delta)

    def remaining(self, dataset_id: str, related: Iterable[str] = ()) -> float:
        return max(self.limit(dataset_id) - self.epsilon_spent(dataset_id, related), 0.0)

    def check_round(self, dataset_id: str, noise_multiplier: float, sample_rate: float, steps: int,
                    related: Iterable[str] = ()) -> BudgetDecision:
        """Would a round of ``steps`` DP-SGD steps at ``(noise_multiplier, sample_rate)`` fit?

        Refuses (``allowed=False``, with the reason) when the noise is below the policy minimum,
        when the projected epsilon exceeds the dataset's limit, or when accounting fails (fail
        closed: unreadable state, damaged or truncated ledger). Bad arguments raise
        :class:`InvalidPrivacyParameter`. Changes nothing.
        """
        sigma, q, steps = self._validate(dataset_id, noise_multiplier, sample_rate, steps)
        try:
            accountant, _ = self._load(dataset_id, related)
        except AccountingError as err:
            return self._refusal(dataset_id, sigma, q, steps, math.inf, math.inf, str(err))
        return self._decide(dataset_id, accountant, sigma, q, steps)

    def commit_round(self, dataset_id: str, noise_multiplier: float, sample_rate: float, steps: int,
                     related: Iterable[str] = (), write_ahead: Callable[[BudgetDecision], Any] | None = None
                     ) -> BudgetDecision:
        """Record the round's spend, after re-checking it under the dataset's lock.

        Call after training and **before** the update leaves the site. ``write_ahead(decision)``
        runs under the lock before the state changes (append the ledger entry there); if it
        raises, nothing is spent and the exception propagates. Raises :class:`BudgetExceeded`
        (nothing recorded) if the round does not fit (any more), and :class:`AccountingError` if
        the state or the ledger cannot be trusted.
        """
        sigma, q, steps = self._validate(dataset_id, noise_multiplier, sample_rate, steps)
        with file_lock(self._lock_path(dataset_id)):
            accountant, state = self._load(dataset_id, related)
            decision = self._decide(dataset_id, accountant, sigma, q, steps)
            if not decision.allowed:
                raise BudgetExceeded(decision)
            own = self._history(dataset_id, state)
            if write_ahead is not None:
                write_ahead(decision)
            self._save(dataset_id, [*own, (sigma, q, steps)], state)
        return decision

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _validate(dataset_id: str, sigma: Any, q: Any, steps: Any) -> tuple[float, float, int]:
        _check_dataset_id(dataset_id)
        sigma, q, steps = check_composition(sigma, q, steps)
        check_steps(steps, minimum=1)
        return sigma, q, steps

    def _refusal(self, dataset_id: str, sigma: float, q: float, steps: int, before: float, after: float,
                 reason: str) -> BudgetDecision:
        return BudgetDecision(False, before, after, self.limit(dataset_id), reason, dataset_id, self.policy.delta,
                        self.policy.accountant, sigma, q, steps)

    def _decide(self, dataset_id: str, accountant: PrivacyAccountant, sigma: float, q: float,
                steps: int) -> BudgetDecision:
        delta, limit = self.policy.delta, self.limit(dataset_id)
        try:
            before = accountant.get_epsilon(delta)
            after = accountant.projected_epsilon(delta, sigma, q, steps)
        except AccountingError as err:
            return self._refusal(dataset_id, sigma, q, steps, math.inf, math.inf, f"accounting failed: {err}")
        if sigma < self.policy.min_noise_multiplier:
            return self._refusal(
                dataset_id, sigma, q, steps, before, after,
                f"noise multiplier {sigma:g} is below the site minimum {self.policy.min_noise_multiplier:g}",
            )
        if not after <= limit:
            return self._refusal(
                dataset_id, sigma, q, steps, before, after,
                f"the round would take dataset '{dataset_id}' to epsilon {after:.4g} > its limit {limit:g} "
                f"(delta={delta:g}, {accountant.mechanism}; spent {before:.4g}, remaining {max(limit - before, 0):.4g})",
            )
        return BudgetDecision(True, before, after, limit, "within budget", dataset_id, delta, accountant.mechanism,
                        sigma, q, steps)
