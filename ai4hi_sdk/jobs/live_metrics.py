"""Round metrics streamed to TensorBoard on the server, while a training job runs (no NVFlare).

The training controller hands :class:`RoundMetricsWriter` its job record every time it writes it
(after each round and at the end); the writer appends, as TensorBoard scalars, what it has not
written yet. Only what already reached the server is written — aggregates, never more than the
controller holds:

* ``round/seconds``, ``round/sites`` (results accepted), ``round/rejected``, ``round/refused``;
* under secure aggregation: ``round/total_weight`` and ``consortium/<metric>`` (the sites' mean
  training statistics, unmasked only as a sum);
* the global model's validation, weighted over the sites (``global_validation/<metric>``, step =
  the round whose output it measures), and per site the metrics that leave in the clear
  (``site/<site>/<metric>``: privacy accounting and the received model's validation metrics when
  the split has at least k studies).

Event files go to ``<server run folder>/tensorboard/`` (:data:`TENSORBOARD_DIR`); the lead watches
them with ``tensorboard --logdir <that folder>`` during the job. A missing ``tensorboard`` package
or an unwritable folder turns the writer off with one warning: watching must never stop training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

TENSORBOARD_DIR = "tensorboard"


class RoundMetricsWriter:
    """Writes each round of a job record once (see the module docstring).

    Args:
        log_dir: the TensorBoard log folder (created on first write).
        warn: called once with the reason if writing is turned off.
    """

    def __init__(self, log_dir: str | Path, warn: Callable[[str], None] = print):
        self.log_dir = Path(log_dir)
        self.warn = warn
        self._writer: Any = None
        self._off = False
        self._rounds: set[int] = set()
        self._validations: set[int] = set()

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            return
        self._writer.add_scalar(tag, float(value), int(step))

    def update(self, record: Mapping[str, Any]) -> None:
        """Write every completed round (and global validation) of ``record`` not written yet."""
        if self._off:
            return
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=5)
            self._write(record)
            self._writer.flush()
        except Exception as err:  # noqa: BLE001 - watching must never stop training
            self._off = True
            self.warn(f"TensorBoard round metrics turned off: {type(err).__name__}: {err}")

    def _write(self, record: Mapping[str, Any]) -> None:
        refused, rejected = record.get("refused") or [], record.get("rejected") or []
        for rnd in record.get("rounds") or []:
            step = int(rnd.get("round", -1))
            if step < 0:
                continue
            if step not in self._rounds and rnd.get("status") in ("completed", "abandoned"):
                self._rounds.add(step)
                self._scalar("round/seconds", rnd.get("seconds"), step)
                self._scalar("round/sites", len(rnd.get("sites") or {}), step)
                self._scalar("round/completed", 1 if rnd.get("status") == "completed" else 0, step)
                self._scalar("round/refused", sum(1 for r in refused if r.get("round") == step), step)
                self._scalar("round/rejected", sum(1 for r in rejected if r.get("round") == step), step)
                self._scalar("round/total_weight", rnd.get("total_weight"), step)
                for name, value in sorted((rnd.get("consortium_metrics") or {}).items()):
                    self._scalar(f"consortium/{name}", value, step)
                for site, metrics in sorted((rnd.get("sites") or {}).items()):
                    for name, value in sorted((metrics or {}).items()):
                        self._scalar(f"site/{site}/{name}", value, step)
            validation = rnd.get("global_validation")
            if validation and step not in self._validations:
                self._validations.add(step)
                for name, value in sorted((validation.get("weighted_mean") or {}).items()):
                    self._scalar(f"global_validation/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
