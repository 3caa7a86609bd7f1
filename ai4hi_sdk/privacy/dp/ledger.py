"""Append-only, hash-chained privacy ledger of a site (``<site workspace>/ai4hi/privacy_ledger.jsonl``).

One entry per round a site was asked to train: job id, dataset id, q, sigma, steps, epsilon
before/after, delta, accountant, the site's limit, status (``spent`` / ``refused``, with the
reason) and the egress record (:func:`ai4hi_sdk.privacy.egress.describe_payload`) of what was
sent. Built on :class:`ai4hi_sdk.audit.hash_chain.HashChainLog`: anyone holding the file can
verify it, and an edited, removed or reordered line is named by its line number.

Besides DP-SGD rounds (``dp_round``), the site runtime writes one ``egress`` entry for every
training payload it lets leave without a DP spend (e.g. plain FedAvg where the site's policy
allows it), so the site's egress guard can check every training payload against an entry
committed before it left.

The ledger is the truth for the budget (:mod:`ai4hi_sdk.privacy.dp.budget`): :meth:`spends`
replays a dataset's spends and checks the budget state's anchor (entry count and head hash), so a
truncated or rewritten ledger is detected.

No overspend by construction: a ``spent`` round whose epsilon_after exceeds its limit is
rejected (raises) instead of written, and a ``refused`` round is written with
``epsilon_after == epsilon_before`` (the projection that was refused is kept as
``epsilon_projected``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ai4hi_sdk.audit.hash_chain import ChainCheck, ChainDamaged, HashChainLog, read_entries, verify_chain
from ai4hi_sdk.audit.files import file_lock
from ai4hi_sdk.privacy.dp.budget_decision import BudgetDecision

if TYPE_CHECKING:
    from ai4hi_sdk.config.site_policy import SitePrivacyPolicy

PRIVACY_LEDGER = Path("ai4hi") / "privacy_ledger.jsonl"
"""Where the ledger lives, relative to the site workspace."""

RECORD_TYPE = "dp_round"
EGRESS_TYPE = "egress"


class LedgerDamaged(Exception):
    """The ledger cannot be trusted (damaged line, truncated or rewritten below the budget's
    anchor); ``str(err)`` says where and what the site admin can do."""


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class DatasetSummary:
    """What one dataset has spent according to the (verified part of the) ledger."""

    dataset_id: str
    spent: float = 0.0
    limit: float | None = None
    remaining: float | None = None
    rounds: int = 0
    refused: int = 0
    jobs: list[str] = field(default_factory=list)
    delta: float | None = None
    accountant: str | None = None
    violations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PrivacyLedger:
    """The privacy ledger file at ``path``. Appends are serialised by a lock file next to it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._log = HashChainLog(self.path)

    @classmethod
    def for_site(cls, workspace: str | Path) -> "PrivacyLedger":
        return cls(Path(workspace) / PRIVACY_LEDGER)

    def record_round(
        self,
        *,
        job_id: str,
        dataset_id: str,
        round_index: int,
        sample_rate: float,
        noise_multiplier: float,
        steps: int,
        epsilon_before: float | None,
        epsilon_after: float | None,
        delta: float,
        accountant: str,
        egress: dict | None = None,
        status: Literal["spent", "refused"] = "spent",
        reason: str = "",
        limit: float | None = None,
        mechanism: str = "dp_sgd",
        client_dp: dict | None = None,
    ) -> dict[str, Any]:
        """Append one round and return the chain entry written (``mechanism``: ``dp_sgd`` for a
        DP-SGD round, ``client_dp`` for a client-level Gaussian release of the whole delta).

        Raises:
            ValueError: unknown status, or a ``spent`` round with epsilon_after missing, below
                epsilon_before or above ``limit`` (such a round must have been refused).
        """
        if status not in ("spent", "refused"):
            raise ValueError(f"status must be 'spent' or 'refused', got {status!r}")
        before, after = _num(epsilon_before), _num(epsilon_after)
        projected = None
        if status == "spent":
            if after is None:
                raise ValueError("a spent round needs a finite epsilon_after")
            if before is not None and after < before:
                raise ValueError(f"epsilon_after {after} < epsilon_before {before}: spending cannot reduce epsilon")
            if limit is not None and after > limit:
                raise ValueError(
                    f"refusing to record a spent round at epsilon {after:.6g} over the limit {limit:g}: "
                    "the budget must refuse such a round"
                )
        else:
            projected, after = after, before
        record = {
            "type": RECORD_TYPE,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "job_id": str(job_id),
            "dataset_id": str(dataset_id),
            "round": int(round_index),
            "sample_rate": float(sample_rate),
            "noise_multiplier": float(noise_multiplier),
            "steps": int(steps),
            "epsilon_before": before,
            "epsilon_after": after,
            "epsilon_projected": projected,
            "delta": float(delta),
            "accountant": str(accountant),
            "limit": _num(limit),
            "status": status,
            "reason": str(reason),
            "egress": egress,
            "mechanism": mechanism,
        }
        if client_dp is not None:  # the round's client-level release, recorded with it
            record["client_dp"] = client_dp
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            return self._log.append(record)

    def record_decision(
        self, decision: BudgetDecision, *, job_id: str, round_index: int, egress: dict | None = None
    ) -> dict[str, Any]:
        """Append a budget :class:`~ai4hi_sdk.privacy.dp.budget_decision.BudgetDecision`: ``spent`` if allowed
        (after ``commit_round``), else ``refused`` with its reason."""
        return self.record_round(
            job_id=job_id,
            dataset_id=decision.dataset_id,
            round_index=round_index,
            sample_rate=decision.sample_rate,
            noise_multiplier=decision.noise_multiplier,
            steps=decision.steps,
            epsilon_before=decision.epsilon_before,
            epsilon_after=decision.epsilon_after,
            delta=decision.delta,
            accountant=decision.accountant,
            egress=egress,
            status="spent" if decision.allowed else "refused",
            reason="" if decision.allowed else decision.reason,
            limit=decision.limit,
        )

    def record_egress(self, *, job_id: str, round_index: int, egress: dict, task: str = "train",
                      protection: str = "") -> dict[str, Any]:
        """Append the commitment of a training payload that leaves without a DP spend (written
        before it leaves; the egress guard lets only committed payloads out)."""
        record = {"type": EGRESS_TYPE, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "job_id": str(job_id), "round": int(round_index), "task": task, "protection": protection,
                  "status": "committed", "egress": egress}
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            return self._log.append(record)

    def head(self) -> tuple[int, str]:
        """``(entries, head hash)``; :class:`LedgerDamaged` if the chain does not verify."""
        try:
            return self._log.tail()
        except ChainDamaged as err:
            raise LedgerDamaged(_damage_advice(str(err))) from None

    def spends(self, dataset_id: str, anchor: dict[str, Any] | None = None) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sample_rate, steps)`` of every spent DP round of ``dataset_id``, in order.

        ``anchor`` (``{"entries": n, "head": h}``, from the budget state) must still hold: the
        ledger has at least ``n`` entries and its ``n``-th has hash ``h``. Raises
        :class:`LedgerDamaged` when the chain does not verify or the anchor does not hold."""
        check = self.verify()
        if not check.ok:
            raise LedgerDamaged(_damage_advice(f"{self.path}: line {check.bad_line}: {check.reason}"))
        entries = list(read_entries(self.path)) if self.path.exists() else []
        if anchor:
            n, head = int(anchor.get("entries", 0)), anchor.get("head")
            if len(entries) < n:
                raise LedgerDamaged(f"privacy ledger {self.path} has {len(entries)} entries but the budget state "
                                    f"recorded {n}: the ledger was truncated or replaced; refusing to account on it "
                                    "(restore the ledger from backup)")
            if n and entries[n - 1].get("hash") != head:
                raise LedgerDamaged(f"privacy ledger {self.path}: entry {n} is not the one the budget state "
                                    "recorded: the ledger was rewritten; refusing to account on it")
        out = []
        for entry in entries:
            record = entry.get("record") or {}
            if record.get("type") == RECORD_TYPE and record.get("status") == "spent" \
                    and record.get("dataset_id") == dataset_id:
                out.append((float(record["noise_multiplier"]), float(record["sample_rate"]), int(record["steps"])))
        return out

    def committed_payload(self, job_id: str, round_index: int, sha256: str) -> dict[str, Any] | None:
        """The verified ``spent`` DP round or ``egress`` commitment of this job and round whose payload
        has ``sha256`` (None if there is none)."""
        if not self.path.exists() or not self.verify().ok:
            return None
        for entry in read_entries(self.path):
            record = entry.get("record") or {}
            if (record.get("job_id") == str(job_id) and record.get("round") == int(round_index)
                    and (record.get("egress") or {}).get("sha256") == sha256
                    and record.get("status") in ("spent", "committed")):
                return record
        return None

    def verify(self) -> ChainCheck:
        """Re-compute the chain; ``bad_line`` names the first edited/removed/reordered line."""
        return verify_chain(self.path)

    def records(self, verified_only: bool = True) -> list[dict[str, Any]]:
        """Round records in order; with ``verified_only`` only those before the first bad line."""
        if not self.path.exists():
            return []
        limit = self.verify().entries if verified_only else None
        out: list[dict[str, Any]] = []
        count = 0
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                if limit is not None and count >= limit:
                    break
                count += 1
                try:
                    record = json.loads(line).get("record")
                except (ValueError, AttributeError):
                    continue
                if isinstance(record, dict) and record.get("type") == RECORD_TYPE:
                    out.append(record)
        return out

    def summary(self, policy: "SitePrivacyPolicy | None" = None) -> dict[str, DatasetSummary]:
        """Per dataset: spent (epsilon after its latest spent round), limit (from ``policy``),
        remaining, spent rounds, refused rounds, jobs, and any violations found (e.g. a spent
        round over its recorded limit). Only verified entries count. Datasets named in the
        policy but never trained on are listed with zero spend."""
        out: dict[str, DatasetSummary] = {}
        for record in self.records(verified_only=True):
            ds = str(record.get("dataset_id"))
            item = out.setdefault(ds, DatasetSummary(ds))
            if record.get("status") == "spent":
                after = _num(record.get("epsilon_after")) or 0.0
                item.spent = after
                item.rounds += 1
                item.delta, item.accountant = record.get("delta"), record.get("accountant")
                job_id = record.get("job_id")
                if job_id is not None and str(job_id) not in item.jobs:
                    item.jobs.append(str(job_id))
                rec_limit = _num(record.get("limit"))
                if rec_limit is not None and after > rec_limit:
                    item.violations.append(
                        f"job {record.get('job_id')} round {record.get('round')}: epsilon {after:.4g} "
                        f"over its recorded limit {rec_limit:g}"
                    )
            else:
                item.refused += 1
        if policy is not None:
            for ds in policy.datasets:
                out.setdefault(ds, DatasetSummary(ds))
            for ds, item in out.items():
                item.limit = policy.limit_for(ds)
                item.remaining = max(item.limit - item.spent, 0.0)
        return dict(sorted(out.items()))


def _damage_advice(detail: str) -> str:
    return (f"privacy ledger damaged ({detail}); no privacy is spent and nothing is sent until the site "
            "admin repairs it: `ai4hi privacy report --site <workspace>` shows the damage, "
            "`ai4hi privacy repair --site <workspace>` sets aside a half-written last line")


def set_aside_torn_tail(path: str | Path) -> Path | None:
    """Move a half-written last line of the ledger at ``path`` (a crash or a full disk mid-append:
    not valid JSON, no newline at its end) into ``<ledger>.torn-<time>``; returns that file, or None
    when there is nothing to set aside. Refuses (UserError) when any other line is damaged: such a
    ledger was edited and is for the site admin to restore from backup, not to repair."""
    from ai4hi_sdk.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no privacy ledger at {path}")
    data = path.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    head, tail = data[:cut], data[cut:]
    try:
        json.loads(tail)
        torn = False
    except ValueError:
        torn = bool(tail.strip()) and not tail.endswith(b"\n")
    if not torn:
        check = verify_chain(path)
        if not check.ok:
            raise UserError(f"{path}: line {check.bad_line}: {check.reason}; this is not a half-written last line "
                            "(the ledger was edited): restore it from backup")
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.torn-{stamp}")
    aside.write_bytes(tail)
    tmp = path.with_name(f".{path.name}.repair")
    tmp.write_bytes(head)
    tmp.replace(path)
    check = verify_chain(path)
    if not check.ok:  # put everything back: the damage was not only the last line
        path.write_bytes(data)
        aside.unlink()
        raise UserError(f"{path}: line {check.bad_line}: {check.reason}; restore the ledger from backup")
    return aside
