"""Site-enforced privacy budget per dataset (pure core, no NVFlare).

Each dataset's accountant history (every DP-SGD composition ever released from it, over all
rounds of all jobs) is kept in one JSON file under ``state_dir`` (``<site>/ai4hi/privacy_state``),
written atomically and updated under an exclusive file lock, so concurrent jobs at one site
cannot both spend the last of a budget. Epsilon is always re-computed from that history with
the policy's accountant and delta.

Use in a site's training loop (fail closed: if anything raises, send nothing)::

    budget = PrivacyBudget.for_site(workspace)          # policy from <ws>/ai4hi/site_policy.yaml
    decision = budget.check_round(dataset_id, sigma, q, steps)     # before training
    if not decision.allowed:
        ledger.record_decision(decision, job_id=..., round_index=...)  # status "refused"
        ...  # send nothing for this round, report decision.reason in the result
    ...  # train (DP-SGD with exactly sigma, q, steps)
    decision = budget.commit_round(dataset_id, sigma, q, steps)    # re-checks under the lock;
    ledger.record_decision(decision, job_id=..., round_index=..., egress=describe_payload(...))
    ...  # only now may the update leave the site

``commit_round`` raises :class:`BudgetExceeded` (carrying the refusal decision) when the round no
longer fits, e.g. because another job spent in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ai4hi_sdk.errors import UserError
from ai4hi_sdk.privacy.dp.accountants.base import (
    AccountingError,
    InvalidPrivacyParameter,
    PrivacyAccountant,
    check_composition,
    check_steps,
)
from ai4hi_sdk.privacy.dp.accountants.registry import create_accountant
from ai4hi_sdk.privacy.dp.policy import SITE_POLICY, SitePrivacyPolicy, load_site_policy

try:  # POSIX sites (NVFlare runs on Linux); elsewhere only one writer process is safe
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

PRIVACY_STATE_DIR = Path("ai4hi") / "privacy_state"
"""Where per-dataset accountant state lives, relative to the site workspace."""

STATE_FORMAT = 1


def _finite_or_none(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass(frozen=True)
class Decision:
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


class BudgetExceeded(UserError):
    """``commit_round`` refused the round; ``decision`` says why. Nothing was spent."""

    def __init__(self, decision: Decision):
        self.decision = decision
        super().__init__(f"privacy budget refused the round for dataset '{decision.dataset_id}': {decision.reason}")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename, fsync folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # directory fsync is not supported everywhere
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_dataset_id(dataset_id: Any) -> str:
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise InvalidPrivacyParameter(f"dataset id must be a non-empty string, got {dataset_id!r}")
    return dataset_id


class PrivacyBudget:
    """Per-dataset epsilon budget of one site.

    Args:
        state_dir: folder of the per-dataset state files (created on first commit).
        policy: the site's policy (limits, delta, minimum noise, accountant).
    """

    def __init__(self, state_dir: str | Path, policy: SitePrivacyPolicy):
        self.state_dir = Path(state_dir)
        self.policy = policy

    @classmethod
    def for_site(cls, workspace: str | Path) -> "PrivacyBudget":
        """Budget of the site workspace: policy from ``<ws>/ai4hi/site_policy.yaml``, state in
        ``<ws>/ai4hi/privacy_state``. A missing or invalid policy raises ConfigError (fail closed)."""
        workspace = Path(workspace)
        return cls(workspace / PRIVACY_STATE_DIR, load_site_policy(workspace / SITE_POLICY))

    # -- state -------------------------------------------------------------------------------
    def state_path(self, dataset_id: str) -> Path:
        dataset_id = _check_dataset_id(dataset_id)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_id).strip("._")[:64] or "dataset"
        return self.state_dir / f"{slug}-{hashlib.sha256(dataset_id.encode()).hexdigest()[:12]}.json"

    def _lock_path(self, dataset_id: str) -> Path:
        return self.state_path(dataset_id).with_suffix(".lock")

    def _load(self, dataset_id: str) -> tuple[PrivacyAccountant, dict[str, Any]]:
        path = self.state_path(dataset_id)
        if not path.exists():
            return create_accountant(self.policy.accountant), {"rounds": 0}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("format") != STATE_FORMAT or state.get("dataset_id") != dataset_id:
                raise ValueError("not the state of this dataset")
            stored = state["accountant"]
            if stored.get("mechanism") == self.policy.accountant:
                accountant = PrivacyAccountant.from_dict(stored)
            else:  # the policy changed accountant: re-account the same history
                accountant = create_accountant(self.policy.accountant, history=stored["history"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise AccountingError(
                f"privacy state of dataset '{dataset_id}' ({path}) is unreadable ({err}); "
                "refusing to account on it (restore it from backup or the ledger)"
            ) from err
        return accountant, state

    def _save(self, dataset_id: str, accountant: PrivacyAccountant, state: dict[str, Any]) -> None:
        write_json_atomic(
            self.state_path(dataset_id),
            {
                "format": STATE_FORMAT,
                "dataset_id": dataset_id,
                "accountant": accountant.to_dict(),
                "rounds": int(state.get("rounds", 0)) + 1,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )

    def accountant(self, dataset_id: str) -> PrivacyAccountant:
        """A copy of the dataset's accountant (policy's mechanism, full history)."""
        return self._load(dataset_id)[0]

    def datasets(self) -> list[str]:
        """Dataset ids with recorded spend."""
        ids = []
        for path in sorted(self.state_dir.glob("*.json")) if self.state_dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                ids.append(json.loads(path.read_text(encoding="utf-8"))["dataset_id"])
        return sorted(ids)

    # -- budget ------------------------------------------------------------------------------
    def limit(self, dataset_id: str) -> float:
        return self.policy.limit_for(_check_dataset_id(dataset_id))

    def epsilon_spent(self, dataset_id: str) -> float:
        return self.accountant(dataset_id).get_epsilon(self.policy.delta)

    def remaining(self, dataset_id: str) -> float:
        return max(self.limit(dataset_id) - self.epsilon_spent(dataset_id), 0.0)

    def check_round(self, dataset_id: str, noise_multiplier: float, sample_rate: float, steps: int) -> Decision:
        """Would a round of ``steps`` DP-SGD steps at ``(noise_multiplier, sample_rate)`` fit?

        Refuses (``allowed=False``, with the reason) when the noise is below the policy minimum,
        when the projected epsilon exceeds the dataset's limit, or when accounting fails (fail
        closed). Bad arguments raise :class:`InvalidPrivacyParameter`. Changes nothing.
        """
        sigma, q, steps = self._validate(dataset_id, noise_multiplier, sample_rate, steps)
        try:
            accountant, _ = self._load(dataset_id)
        except AccountingError as err:
            return self._refusal(dataset_id, sigma, q, steps, math.inf, math.inf, str(err))
        return self._decide(dataset_id, accountant, sigma, q, steps)

    def commit_round(self, dataset_id: str, noise_multiplier: float, sample_rate: float, steps: int) -> Decision:
        """Record the round's spend, after re-checking it under the dataset's lock.

        Call after training and **before** the update leaves the site. Raises
        :class:`BudgetExceeded` (nothing recorded) if the round does not fit (any more), and
        :class:`AccountingError` if the state cannot be read.
        """
        sigma, q, steps = self._validate(dataset_id, noise_multiplier, sample_rate, steps)
        with file_lock(self._lock_path(dataset_id)):
            accountant, state = self._load(dataset_id)
            decision = self._decide(dataset_id, accountant, sigma, q, steps)
            if not decision.allowed:
                raise BudgetExceeded(decision)
            accountant.step(sigma, q, steps)
            self._save(dataset_id, accountant, state)
        return decision

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _validate(dataset_id: str, sigma: Any, q: Any, steps: Any) -> tuple[float, float, int]:
        _check_dataset_id(dataset_id)
        sigma, q, steps = check_composition(sigma, q, steps)
        check_steps(steps, minimum=1)
        return sigma, q, steps

    def _refusal(self, dataset_id: str, sigma: float, q: float, steps: int, before: float, after: float,
                 reason: str) -> Decision:
        return Decision(False, before, after, self.limit(dataset_id), reason, dataset_id, self.policy.delta,
                        self.policy.accountant, sigma, q, steps)

    def _decide(self, dataset_id: str, accountant: PrivacyAccountant, sigma: float, q: float, steps: int) -> Decision:
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
        return Decision(True, before, after, limit, "within budget", dataset_id, delta, accountant.mechanism,
                        sigma, q, steps)
