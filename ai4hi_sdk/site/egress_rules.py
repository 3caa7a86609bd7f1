"""What may leave a site, decided from a payload's description alone (pure core, no NVFlare).

The site's egress guard (:mod:`ai4hi_sdk.site.egress_guard`) describes every outgoing task result
(:func:`ai4hi_sdk.privacy.egress.describe_payload` plus task, round and kind) and asks
:func:`egress_violation` whether it may leave. Rules, whatever job is running:

* a refusal carries its reason and privacy position only: no tensors, no metrics;
* a training result leaves only if the site's ledger holds the commitment the site runtime wrote
  for exactly this payload (same job, round and SHA-256) before building the reply; where the
  site's policy requires DP-SGD that commitment must be a DP-SGD spend; where it requires secure
  aggregation the payload must be one masked uint32 vector with its uint8 header (and, optionally,
  next round's signed keys as uint8) and committed as such;
* validation, cross-validation, operating-point and monitoring results are flat numeric metrics,
  no tensors;
* protocol steps are 1-D uint8 byte strings under exactly the keys their step sends
  (:data:`~ai4hi_sdk.jobs.wire.PROTOCOL_RESULT_PARAMS`: keys, shares, the consistency signature, the
  unmask shares and next round's shares), no metrics;
* anything else (unknown task, a task result of an unknown shape) does not leave.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ai4hi_sdk.jobs.wire import (CROSS_VALIDATE_TASK, MASKED, MASKED_HEADER, MONITOR_TASK, OPERATING_POINT_TASK,
                                 PROTOCOL_RESULT_PARAMS, SECURE_TRAIN_PARAMS, TRAIN_TASK, VALIDATE_TASK)

#: ``lookup(job_id, round, sha256) -> ledger record or None``
CommitmentLookup = Callable[[str, int, str], Mapping[str, Any] | None]


def egress_violation(record: Mapping[str, Any], *, refused: bool, require_dp: bool, require_secure_aggregation: bool,
                     lookup: CommitmentLookup | None) -> str | None:
    """Why the described result must not leave (None: it may).

    Args:
        record: the payload's description: ``task``, ``job_id``, ``round``, ``payload_kind``,
            ``tensors`` (name, dtype, shape), ``metric_names``, ``sha256``.
        refused: the result is a refusal (carries the refusal key).
        require_dp, require_secure_aggregation: the site policy's requirements.
        lookup: finds the ledger commitment of a training payload (None: no ledger at this site).
    """
    task = str(record.get("task") or "")
    tensors = list(record.get("tensors") or [])
    metric_names = list(record.get("metric_names") or [])
    if record.get("payload_kind") == "none":
        return None  # an error reply without data carries nothing
    if refused:
        if tensors or metric_names:
            return "a refusal may carry only its reason"
        return None
    if task == TRAIN_TASK:
        if not tensors:
            return "a training result without a model update"
        if require_secure_aggregation:
            names = {t["name"] for t in tensors}
            if not {MASKED, MASKED_HEADER} <= names or not names <= set(SECURE_TRAIN_PARAMS):
                return "the site policy requires secure aggregation: only a masked vector and its header may leave"
            for t in tensors:
                want = "uint32" if t["name"] == MASKED else "uint8"
                if t["dtype"] != want or len(t["shape"]) != 1:
                    return f"the site policy requires secure aggregation: '{t['name']}' must be 1-D {want}"
        if lookup is None:
            return "no privacy ledger at this site: a training payload cannot be checked"
        commitment = lookup(str(record.get("job_id")), _round(record.get("round")), str(record.get("sha256")))
        if commitment is None:
            return "no ledger commitment for this training payload (it was not built by the site runtime)"
        if require_dp and not (commitment.get("type") == "dp_round" and commitment.get("status") == "spent"):
            return "the site policy requires DP-SGD: the payload was not committed as a DP-SGD spend"
        return None
    if task in (VALIDATE_TASK, CROSS_VALIDATE_TASK, MONITOR_TASK, OPERATING_POINT_TASK):
        if tensors:
            return f"a {task} result may carry only aggregate metrics"
        return None
    if task in PROTOCOL_RESULT_PARAMS:
        if metric_names:
            return "a protocol message carries no metrics"
        for t in tensors:
            if t["name"] not in PROTOCOL_RESULT_PARAMS[task] or t["dtype"] != "uint8" or len(t["shape"]) != 1:
                return (f"protocol message entry '{t['name']}' is not a byte string under a key of the {task} step "
                        f"({', '.join(PROTOCOL_RESULT_PARAMS[task])})")
        return None
    return f"unknown task {task!r}: nothing leaves for it"


def _round(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
