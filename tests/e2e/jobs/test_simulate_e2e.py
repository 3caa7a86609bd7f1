"""End-to-end: a real NVFlare simulator run of a 2-site job on synthetic DICOM.

Checks that the global model equals FedAvg computed independently in plain torch from the same
seeds and data, and that only model deltas and declared metrics crossed from sites to server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.audit.hash_chain import read_entries, verify_chain
from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.simulate import simulate
from ai4hi_sdk.trainers.classification import ClassificationTrainer

pytestmark = pytest.mark.e2e

ROUNDS = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    # unequal site sizes, so a wrong weighting cannot pass for FedAvg
    synth_site(root / "data" / "hospital-1", site_index=0, n_studies=24, seed=3)
    synth_site(root / "data" / "hospital-2", site_index=1, n_studies=40, seed=3)
    spec = JobSpec(
        name="e2e",
        model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
        train={"rounds": ROUNDS, "local_epochs": 1, "batch_size": 8, "lr": 0.05, "threads": 1, "seed": 7},
        data={"image_size": 32},
    )
    before = _stray_paths()
    result = simulate(spec, root / "data", root / "ws", timeout_s=240,
                      site_policy=Path(__file__).resolve().parents[2] / "jobs" / "fixtures" / "policy_without_dp.yaml")
    return {"root": root, "spec": spec, "result": result, "new_stray_paths": _stray_paths() - before}


def _stray_paths() -> set[str]:
    """Places NVFlare and torch write to by default, which our runner must redirect."""
    tmp = {f"/tmp/{n}" for n in os.listdir("/tmp") if n.startswith(("nvflare", "torchinductor"))}
    home = {str(p) for p in [Path.home() / ".nvflare"] if p.exists()}
    return tmp | home


def fedavg_reference(spec: JobSpec, data_root: Path, sites: list[str]) -> dict[str, torch.Tensor]:
    """FedAvg by hand: same trainers, same seeds and data, averaging written out in plain torch."""
    trainers = {s: ClassificationTrainer(spec, site_dir=data_root / s, site_name=s, device="cpu") for s in sites}
    global_state = ClassificationTrainer(spec, device="cpu").initial_state()
    for round_index in range(spec.train.rounds):
        updates = {s: trainers[s].fit(global_state, round_index) for s in sites}
        total = sum(u.num_samples for u in updates.values())
        global_state = {
            name: value + sum(u.num_samples * u.delta[name] for u in updates.values()) / total
            for name, value in global_state.items()
        }
    return global_state


def test_job_completes_and_writes_results(run):
    result = run["result"]
    assert result.ok, (result.metrics, (run["root"] / "ws" / "simulate.log").read_text()[-3000:])
    metrics = result.metrics
    assert [r["status"] for r in metrics["rounds"]] == ["completed"] * ROUNDS
    for record in metrics["rounds"]:
        assert set(record["sites"]) == {"hospital-1", "hospital-2"}
        for site_metrics in record["sites"].values():
            # statistics of the local training never leave a site without secure aggregation
            assert not {"train_loss", "val_loss", "train_steps", "train_seconds"} & set(site_metrics), site_metrics
        assert "weighted_mean" in record["global_validation"]
    assert set(metrics["final_validation"]["sites"]) == {"hospital-1", "hospital-2"}
    assert (result.result_dir / "global_model.pt").is_file()
    assert (result.result_dir / "metrics.json").is_file()


def test_global_model_equals_independent_fedavg(run):
    result, spec = run["result"], run["spec"]
    simulated = torch.load(result.result_dir / "global_model.pt")
    reference = fedavg_reference(spec, run["root"] / "data", ["hospital-1", "hospital-2"])
    initial = ClassificationTrainer(spec, device="cpu").initial_state()
    assert set(simulated) == set(reference)
    weights = run["result"].metrics["rounds"][0]["weights"]
    assert weights["hospital-1"] != weights["hospital-2"]
    for name in reference:
        assert torch.allclose(simulated[name], reference[name], rtol=1e-5, atol=1e-6), name
    moved = sum(float((simulated[n] - initial[n]).abs().sum()) for n in initial)
    assert moved > 1e-3, "the global model did not change: nothing was learned"


def test_only_deltas_and_declared_metrics_left_the_sites(run):
    result, spec = run["result"], run["spec"]
    declared = ClassificationTrainer.declared_metrics()
    names = set(ClassificationTrainer(spec, device="cpu").initial_state())
    receipts = list(read_entries(result.result_dir / "receipts.jsonl"))
    for site, pointers in result.metrics["egress_logs"].items():
        log = Path(pointers["site_log"])
        assert verify_chain(log).ok
        sent = [e["record"] for e in read_entries(log)]
        assert [r["task"] for r in sent] == ["train"] * ROUNDS + ["validate"]
        for record in sent:
            assert set(record["metric_names"]) <= declared, record["metric_names"]
            assert set(record["meta_keys"]) <= {"ai4hi_num_samples", "ai4hi_round"}, record["meta_keys"]
            if record["task"] == "train":
                assert record["payload_kind"] == "WEIGHT_DIFF"
                assert {t["name"] for t in record["tensors"]} == names
                assert {t["dtype"] for t in record["tensors"]} == {"float32"}
            else:
                assert record["payload_kind"] == "METRICS" and record["tensors"] == []
        # what the server received from this site is exactly what the site logged as sent
        got = [e["record"] for e in receipts if e["record"]["site"] == site]
        assert [r["sha256"] for r in got] == [r["sha256"] for r in sent]


def test_nothing_written_outside_the_workspace(run):
    assert not run["new_stray_paths"], f"written outside the workspace: {run['new_stray_paths']}"
    site_logs = [Path(p["site_log"]) for p in run["result"].metrics["egress_logs"].values()]
    assert all(run["root"] in log.parents for log in site_logs)
