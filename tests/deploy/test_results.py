"""A job download -> result/ in the layout simulate writes."""

from __future__ import annotations

import json

import torch

from ai4hi_sdk.deploy.results import build_result


def _record(status="completed"):
    return {"status": status, "reason": "2 rounds", "sites": ["a", "b"], "num_rounds": 2,
            "rounds": [{"round": 0, "status": "completed", "sites": {"a": {"dp_epsilon": 1.5, "dp_delta": 1e-5},
                                                                     "b": {"dp_epsilon": 2.0, "dp_delta": 1e-5}}},
                       {"round": 1, "status": "completed", "sites": {"a": {"dp_epsilon": 2.5, "dp_delta": 1e-5}}}],
            "refused": [{"round": 1, "site": "b", "reason": "privacy budget"}], "rejected": []}


def test_download_becomes_result_layout(tmp_path):
    run = tmp_path / "dl" / "job1" / "workspace"
    run.mkdir(parents=True)
    (run / "ai4hi_metrics.json").write_text(json.dumps(_record()))
    torch.save({"w": torch.zeros(2)}, run / "global_model.pt")
    (run / "ai4hi_receipts.jsonl").write_text("{}\n")
    metrics = build_result(tmp_path / "dl" / "job1", tmp_path / "out", "job1", {"status": "FINISHED:COMPLETED"})
    result = tmp_path / "out" / "result"
    assert {p.name for p in result.iterdir()} == {"global_model.pt", "metrics.json", "receipts.jsonl"}
    assert json.loads((result / "metrics.json").read_text()) == metrics
    assert metrics["status"] == "completed" and metrics["job_id"] == "job1"
    assert metrics["privacy"]["a"]["datasets"]["reported"] == {"epsilon_spent": 2.5, "rounds": 2, "refused": 0,
                                                               "delta": 1e-5}
    assert metrics["privacy"]["b"]["datasets"]["reported"]["refused"] == 1


def test_a_job_nvflare_ended_badly_is_not_reported_completed(tmp_path):
    run = tmp_path / "dl" / "workspace"
    run.mkdir(parents=True)
    (run / "ai4hi_metrics.json").write_text(json.dumps(_record("running")))
    metrics = build_result(tmp_path / "dl", tmp_path / "out", "j", {"status": "FINISHED:ABORTED"})
    assert metrics["status"] == "failed" and "FINISHED:ABORTED" in metrics["reason"]
    empty = tmp_path / "none"
    empty.mkdir()
    assert build_result(empty, tmp_path / "out2", "j", {"status": "FINISHED:EXECUTION_EXCEPTION"})["status"] == "failed"
