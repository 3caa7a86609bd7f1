"""The lead watches training live: during a real simulated job (two sites, DP-SGD, three rounds) the
server writes TensorBoard event files into its run folder round by round — read back with
TensorBoard's own reader while the job is still running — and at the end they hold exactly the
round metrics of the job's record, and nothing the server did not receive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_site
from ai4hi_sdk.jobs.live_metrics import TENSORBOARD_DIR
from ai4hi_sdk.jobs.simulate import simulate

pytestmark = pytest.mark.e2e
SITES = ("hospital-1", "hospital-2")


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    for i, site in enumerate(SITES):
        synth_site(root / "data" / site, site_index=i, n_studies=60, seed=3)
    spec = JobSpec(name="tb-e2e", model={"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1},
                   train={"rounds": 3, "local_epochs": 1, "batch_size": 16, "threads": 1},
                   data={"image_size": 32}, privacy={"dp_sgd": {"target_epsilon": 8.0, "max_grad_norm": 1.0}})
    seen: list[dict] = []

    def poll(run_dir: Path) -> None:
        record_file, events = run_dir / "ai4hi_metrics.json", run_dir / TENSORBOARD_DIR
        if not record_file.exists() or not events.is_dir():
            return
        try:
            record = json.loads(record_file.read_text())
        except ValueError:  # being replaced
            return
        if record.get("status") == "running" and len(seen) < 3:
            scalars = _scalars(events)
            if "round/seconds" in scalars:
                seen.append({"completed_rounds": len(record["rounds"]), "logged_rounds": sorted(scalars["round/seconds"])})

    result = simulate(spec, root / "data", root / "ws", timeout_s=300, on_poll=poll)
    assert result.ok, result.metrics
    return {"result": result, "seen": seen, "root": root}


def test_event_files_are_written_on_the_server_while_the_job_runs(run):
    seen = run["seen"]
    assert seen, "no TensorBoard scalars were readable while the job was running"
    assert any(s["completed_rounds"] < 3 and s["logged_rounds"] for s in seen), seen
    server_run = run["root"] / "ws" / "simulate" / "server" / "simulate_job" / TENSORBOARD_DIR
    assert list(server_run.glob("events.out.tfevents.*"))
    for site in SITES:  # written by the server, nowhere at a site
        assert not list((run["root"] / "ws" / "simulate" / site).rglob("events.out.tfevents.*"))


def test_the_events_are_the_job_records_round_metrics(run):
    metrics, result_dir = run["result"].metrics, run["result"].result_dir
    assert metrics["tensorboard"] == TENSORBOARD_DIR
    scalars = _scalars(result_dir / TENSORBOARD_DIR)
    rounds = metrics["rounds"]
    assert scalars["round/seconds"] == pytest.approx({r["round"]: r["seconds"] for r in rounds})
    assert scalars["round/sites"] == {r["round"]: len(r["sites"]) for r in rounds}
    for r in rounds:
        for site, values in r["sites"].items():
            for name, value in values.items():
                assert scalars[f"site/{site}/{name}"][r["round"]] == pytest.approx(value, rel=1e-6)
        for name, value in (r.get("global_validation") or {}).get("weighted_mean", {}).items():
            assert scalars[f"global_validation/{name}"][r["round"]] == pytest.approx(value, rel=1e-6)
    # what a plain (not secure-aggregated) site sends: accounting and the received model's metrics only
    site_tags = {tag.split("/", 2)[2] for tag in scalars if tag.startswith("site/")}
    assert "dp_epsilon" in site_tags and not site_tags & {"train_loss", "val_loss", "train_samples"}
