"""The continuous loop's training step is warm-started from the deployed champion.

The simulator is replaced by a stand-in that records what it was given and answers like the real
one (``tests/e2e/jobs/test_warm_start_e2e.py`` checks the real simulator honours ``initial_model``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.config.continuous import load_continuous_spec
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.jobs import continuous
from ai4hi_sdk.jobs.simulate import SimulationResult
from ai4hi_sdk.privacy.egress import model_sha256

LOOP = Path(__file__).parents[2] / "jobs" / "continuous.yaml"


class FakeSimulator:
    """Trains nothing: the "trained" model is the initial model plus a constant; the record's
    round-0 hash is that of the file it was given (or ``lie`` when set)."""

    def __init__(self, lie: str | None = None):
        self.calls: list[dict] = []
        self.lie = lie

    def __call__(self, spec, data_root, workspace, *, timeout_s, initial_model=None, **_):
        start = torch.load(initial_model, weights_only=True)
        self.calls.append({"initial_model": Path(initial_model), "sha256": model_sha256(start)})
        result = Path(workspace) / "result"
        result.mkdir(parents=True, exist_ok=True)
        torch.save({k: v + 0.01 * len(self.calls) for k, v in start.items()}, result / "global_model.pt")
        metrics = {"status": "completed", "sites": ["hospital-1"],
                   "rounds": [{"round": 0, "status": "completed", "sites": {"hospital-1": {}}}],
                   "initial_model": {"source": "ai4hi_initial_model.pt (shipped with the job)",
                                     "sha256": self.lie or model_sha256(start)}}
        (result / "metrics.json").write_text(json.dumps(metrics))
        return SimulationResult(result, metrics, 0, 1.0)


@pytest.fixture
def loop(tmp_path):
    run = continuous.ContinuousLoop(load_continuous_spec(LOOP), tmp_path / "data", tmp_path / "ws", say=lambda _: None)
    run.setup()
    return run


def test_every_training_starts_from_the_deployed_champion(loop, monkeypatch):
    fake = FakeSimulator()
    monkeypatch.setattr(continuous, "simulate", fake)
    models = loop.history["models"]
    c1 = loop.train("v1")
    assert fake.calls[0]["initial_model"] == loop._model_path("m0-initial")
    assert fake.calls[0]["sha256"] == models["m0-initial"]["sha256"]
    loop.champion = c1  # as after a REPLACE decision
    c2 = loop.train("v2")
    assert fake.calls[1]["initial_model"] == loop._model_path(c1)
    assert fake.calls[1]["sha256"] == models[c1]["sha256"] != models["m0-initial"]["sha256"]
    training = models[c2]["training"]
    assert training["job"].endswith(f"warm-started from {c1}")
    assert training["initial_model"]["sha256"] == models[c1]["sha256"] and models[c2]["parent"] == c1
    steps = [s for s in loop.history["steps"] if s["kind"] == "train"]
    assert [s["warm_start"] for s in steps] == ["m0-initial", c1]


def test_a_job_that_did_not_start_from_the_champion_stops_the_loop(loop, monkeypatch):
    monkeypatch.setattr(continuous, "simulate", FakeSimulator(lie="0" * 64))
    with pytest.raises(UserError, match="round-0 global model sha256 0+ is not the champion m0-initial's"):
        loop.train("v1")
