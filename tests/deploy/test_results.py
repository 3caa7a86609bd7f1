"""A job download -> result/ in the layout simulate writes."""

from __future__ import annotations

import json

import torch

from ai4hi_sdk.deploy.results import (
    build_result,
    describe_site_privacy,
    no_site_trained,
    privacy_from_rounds,
    site_outcomes,
    trained_sites,
)


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
                                                               "delta": 1e-5, "epsilon_limit": None,
                                                               "epsilon_remaining": None}
    # b refused round 1 without stating its budget: what it reported in round 0, not 0
    b = metrics["privacy"]["b"]["datasets"]["reported"]
    assert b["refused"] == 1 and b["epsilon_spent"] == 2.0 and b["rounds"] == 1


def test_a_pretraining_jobs_backbone_comes_with_the_download(tmp_path):
    run = tmp_path / "dl" / "job2" / "workspace"
    (run / "backbone").mkdir(parents=True)
    (run / "ai4hi_metrics.json").write_text(json.dumps({**_record(), "backbone": {"folder": "backbone"}}))
    for name in ("backbone.safetensors", "provenance.json", "BACKBONE_CARD.md"):
        (run / "backbone" / name).write_text(name)
    build_result(tmp_path / "dl" / "job2", tmp_path / "out", "job2", {"status": "FINISHED:COMPLETED"})
    copied = tmp_path / "out" / "result" / "backbone"
    assert sorted(p.name for p in copied.iterdir()) == ["BACKBONE_CARD.md", "backbone.safetensors", "provenance.json"]
    assert (copied / "provenance.json").read_text() == "provenance.json"


def test_a_job_nvflare_ended_badly_is_not_reported_completed(tmp_path):
    run = tmp_path / "dl" / "workspace"
    run.mkdir(parents=True)
    (run / "ai4hi_metrics.json").write_text(json.dumps(_record("running")))
    metrics = build_result(tmp_path / "dl", tmp_path / "out", "j", {"status": "FINISHED:ABORTED"})
    assert metrics["status"] == "failed" and "FINISHED:ABORTED" in metrics["reason"]
    empty = tmp_path / "none"
    empty.mkdir()
    assert build_result(empty, tmp_path / "out2", "j", {"status": "FINISHED:EXECUTION_EXCEPTION"})["status"] == "failed"


def _all_refused(with_privacy: bool) -> dict:
    """Every site refused round 0 (the record the server writes; ``privacy`` as sites state it)."""
    refused = []
    for site, spent in (("a", 8.0), ("b", 9.5)):
        refusal = {"round": 0, "site": site, "reason": f"privacy budget: {spent} of 10 spent"}
        if with_privacy:
            refusal["privacy"] = {"dataset_id": f"ds-{site}", "epsilon_spent": spent, "epsilon_limit": 10.0,
                                  "delta": 1e-5}
        refused.append(refusal)
    return {"status": "stopped", "reason": "round 0: 0 good site results, 2 needed (a, b refused)",
            "sites": ["a", "b"], "rounds": [{"round": 0, "status": "abandoned", "sites": {}}],
            "refused": refused, "rejected": []}


def test_no_site_trained_when_every_site_refused():
    for with_privacy in (True, False):
        record = _all_refused(with_privacy)
        assert no_site_trained(record) and trained_sites(record) == []
    assert trained_sites(_record()) == ["a", "b"] and not no_site_trained(_record())
    # an accepted update in an abandoned round was not used
    record = _all_refused(False)
    record["rounds"][0]["sites"] = {"a": {"dp_epsilon": 1.0}}
    assert no_site_trained(record)


def test_refusals_carry_the_real_spent_and_remaining_epsilon():
    outcomes = site_outcomes(_all_refused(with_privacy=True))
    assert outcomes["a"]["privacy"] == {"dataset_id": "ds-a", "epsilon_spent": 8.0, "epsilon_limit": 10.0,
                                        "delta": 1e-5, "epsilon_remaining": 2.0,
                                        "source": "stated by the site with its refusal"}
    assert describe_site_privacy(outcomes["b"]["privacy"]) == \
        "epsilon 9.5 spent of 10 (0.5 remaining, delta 1e-05) on dataset ds-b"
    privacy = privacy_from_rounds(_all_refused(with_privacy=True))
    assert privacy["a"].datasets["ds-a"].epsilon_spent == 8.0
    # without the site's statement nothing is made up (the issue: "epsilon 0 spent ... (delta None)")
    unknown = site_outcomes(_all_refused(with_privacy=False))["a"]["privacy"]
    assert unknown["epsilon_spent"] is None and "not reported" in describe_site_privacy(unknown)
    assert privacy_from_rounds(_all_refused(with_privacy=False))["a"].datasets["reported"].epsilon_spent is None


def test_latest_round_metrics_prefer_the_consortium_means():
    from ai4hi_sdk.deploy.results import latest_round_metrics

    assert latest_round_metrics({"status": "running", "rounds": [{"round": 0, "status": "abandoned"}]}) is None
    plain = {"status": "running",
             "rounds": [{"round": 0, "status": "completed", "global_validation": {"weighted_mean": {"val_auroc": 0.7}}},
                        {"round": 1, "status": "completed", "global_validation": {"weighted_mean": {"val_auroc": 0.8}}},
                        {"round": 2, "status": "abandoned"}]}
    assert latest_round_metrics(plain) == (1, {"val_auroc": 0.8})
    secure = {"status": "running",
              "rounds": [{"round": 0, "status": "completed", "consortium_metrics": {"train_loss": 0.5},
                          "global_validation": {"weighted_mean": {"val_auroc": 0.6}}}]}
    assert latest_round_metrics(secure) == (0, {"train_loss": 0.5})
