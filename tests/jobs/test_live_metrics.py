"""RoundMetricsWriter: each round of a job record becomes TensorBoard scalars once (read back with
TensorBoard's own reader), as the record grows; a writer that cannot write turns itself off with one
warning instead of failing the job."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai4hi_sdk.jobs.live_metrics import RoundMetricsWriter


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _round(i: int, **extra) -> dict:
    return {"round": i, "status": "completed", "seconds": 2.0 + i, "sites": {"a": {"dp_epsilon": 1.0 + i}}, **extra}


def test_each_round_is_written_once_as_the_record_grows(tmp_path):
    writer = RoundMetricsWriter(tmp_path / "tb")
    record = {"rounds": [_round(0)], "refused": [{"site": "b", "round": 0}], "rejected": []}
    writer.update(record)
    # round 1 completes; round 0 now has the global validation of its output
    record["rounds"][0]["global_validation"] = {"weighted_mean": {"val_auroc": 0.7, "val_samples": 20.0}}
    record["rounds"].append(_round(1, total_weight=120, consortium_metrics={"train_loss": 0.5}))
    writer.update(record)
    writer.update(record)  # nothing new: nothing written twice
    writer.close()
    got = _scalars(tmp_path / "tb")
    assert got["round/seconds"] == [(0, 2.0), (1, 3.0)]
    assert got["round/refused"] == [(0, 1.0), (1, 0.0)]
    assert got["site/a/dp_epsilon"] == [(0, 1.0), (1, 2.0)]
    assert got["global_validation/val_auroc"] == [(0, pytest.approx(0.7))]
    assert got["round/total_weight"] == [(1, 120.0)] and got["consortium/train_loss"] == [(1, 0.5)]


def test_a_round_still_running_or_a_non_number_is_not_written(tmp_path):
    writer = RoundMetricsWriter(tmp_path / "tb")
    writer.update({"rounds": [{"round": 0, "status": "running", "seconds": 1.0},
                              _round(1, consortium_metrics={"note": "text", "nan": float("nan")})]})
    writer.close()
    got = _scalars(tmp_path / "tb")
    assert got["round/seconds"] == [(1, 3.0)] and not any(t.startswith("consortium/") for t in got)


def test_a_writer_that_cannot_write_turns_off_with_one_warning(tmp_path):
    blocker = tmp_path / "tb"
    blocker.write_text("a file where the log folder should be")
    warnings: list[str] = []
    writer = RoundMetricsWriter(blocker, warn=warnings.append)
    writer.update({"rounds": [_round(0)]})
    writer.update({"rounds": [_round(0), _round(1)]})
    assert len(warnings) == 1 and "TensorBoard round metrics turned off" in warnings[0]
