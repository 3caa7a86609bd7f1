"""The worked example of docs/developer.md ("A new task kind"): a regression kind written as one module
(docs/examples/regression_task.py) and registered is enough for the site report, the site runtime's
validation task, the decision engine (which must follow MAE's direction: lower is better), the signed
log, model cards, the HTML report, the job spec and the training summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score
from torch import nn
from torch.utils.data import Dataset

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.validation_spec import ValidationSpec
from ai4hi_sdk.tasks.base import ReportSettings, SitePredictions
from ai4hi_sdk.trainers.site_trainer import SiteTrainer
from ai4hi_sdk.validation.decision import decide
from ai4hi_sdk.validation.engine import evidence_from_validation
from ai4hi_sdk.validation.site_report import REPORT_ROOTS, check_aggregate_payload, flatten_metrics, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "regression_task.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("regression_task_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(monkeypatch):
    """The example module with its kind registered (the registry and the score table are restored after)."""
    from ai4hi_sdk.tasks import registry
    from ai4hi_sdk.validation import scores

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    monkeypatch.setattr(scores, "_METRICS", dict(scores._METRICS))
    module = _load_example()
    registry.register_task(module.RegressionTask())
    return module


def _predictions(seed: int, n: int = 60, candidate_sd: float = 1.0, champion_sd: float = 3.0):
    """Lesion sizes in mm and two models' predictions; a rare scanner (4 cases) to suppress."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(5.0, 30.0, n)
    cand = truth + rng.normal(0.0, candidate_sd, n)
    champ = truth + rng.normal(1.0, champion_sd, n)
    attrs = {"sex": ["F", "M"] * (n // 2),
             "manufacturer": ["GE"] * (n // 2) + ["Siemens"] * (n // 2 - 4) + ["Rare"] * 4}
    return truth, cand, champ, attrs


def _site_report(task, seed: int, n: int = 60, k: int = 10, **kw) -> dict:
    truth, cand, champ, attrs = _predictions(seed, n, **kw)
    rep = task.site_report(SitePredictions(truth, cand, champ, attrs), ReportSettings(ValidationSpec(), k))
    return unflatten_metrics(flatten_metrics(rep))  # as the server receives it


def test_the_site_report_is_aggregates_checked_against_independent_references(example):
    from ai4hi_sdk.tasks.registry import task_strategy

    task = task_strategy("regression")
    truth, cand, champ, attrs = _predictions(0)
    rep = task.site_report(SitePredictions(truth, cand, champ, attrs), ReportSettings(ValidationSpec(), 10))
    assert rep["candidate"]["mae"] == pytest.approx(mean_absolute_error(truth, cand))
    assert rep["champion"]["r2"] == pytest.approx(r2_score(truth, champ))
    # the paired interval is scipy's paired t interval of the absolute errors
    reference = stats.ttest_rel(np.abs(cand - truth), np.abs(champ - truth)).confidence_interval(0.95)
    assert rep["paired"]["ci"] == pytest.approx([reference.low, reference.high])
    assert rep["paired"]["ci"][1] < 0  # the candidate clearly lowers the error
    # the rare scanner (4 < k) is not named, and the next smallest cell goes with it
    cells = rep["candidate"]["subgroups"]["manufacturer"]
    assert set(cells["cells"]) == {"GE"} and cells["suppressed_cells"] == 2
    # what leaves is a fixed set of numbers: it passes the server's guard and does not grow with n
    flat = flatten_metrics(rep)
    assert check_aggregate_payload(flat, REPORT_ROOTS) is None
    assert set(flatten_metrics(_site_report(task, 1, n=120))) == set(flat)
    assert task.owns_report(unflatten_metrics(flat))


def test_the_site_runtime_validates_a_regression_job(example, tmp_path):
    """ValidationSite (the site's validation task) with a real SiteTrainer of the new kind: the report
    is the kind's own, and no robustness panel, explanations or drift references are made for it."""
    from ai4hi_sdk.site.validation import ValidationSite

    spec = JobSpec(name="lesion-size", task="regression", trainer="tests.tasks.test_regression_example:LinearTrainer")
    trainer = LinearTrainer(spec, site_dir=tmp_path, site_name="hospital-1", device="cpu", site_workspace=tmp_path)
    good = {"weight": torch.tensor([[1.0, 2.0, -1.0, 0.5]]), "bias": torch.tensor([10.0])}
    poor = {"weight": torch.zeros(1, 4), "bias": torch.tensor([10.0])}
    report = ValidationSite(trainer, ValidationSpec(attributes=["sex"])).cross_validate(good, poor)
    assert report["meta"]["regression"] == 1 and "robustness" not in report["candidate"]
    assert report["candidate"]["mae"] < 0.3 < report["champion"]["mae"]
    assert report["paired"]["ci"][1] < 0
    assert not (tmp_path / "ai4hi" / "explanations").exists()
    with pytest.raises(Exception, match="operating points apply to classification scores"):
        ValidationSite(trainer, ValidationSpec()).cross_validate(good, poor, {"candidate": {"threshold": 0.5}})


def test_the_decision_engine_follows_maes_direction(example):
    """A lower MAE is the better model: the candidate that lowers it is deployed; the one that raises
    it (a larger score, which a direction-blind engine would take for an improvement) is not."""
    from ai4hi_sdk.tasks.registry import task_strategy

    task = task_strategy("regression")
    record = {"validation": {"A": _site_report(task, 0), "B": _site_report(task, 1)}}
    evidence, notes = evidence_from_validation(record, task="regression")
    assert notes == [] and {s.metric for s in evidence.sites} == {"mae"}
    assert evidence_from_validation(record)[0] == evidence  # the report's marker names its kind
    # the policy's thresholds are in the score's unit: the default retrain floor (0.75, for AUROC) is off
    policy = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 20}, "retrain_if": {"auroc_below": None}})
    better = decide(evidence, policy)
    assert better.decision == "replace", better.reasons
    assert any("MAE: lower is better" in r for r in better.reasons)
    assert "not applicable: regression evidence (MAE) at A, B" in \
        next(r for r in better.rules if r.rule == "safety_floor.sensitivity").detail

    worse = {"validation": {s: _site_report(task, i, candidate_sd=3.0, champion_sd=1.0) for i, s in enumerate("AB")}}
    ev_worse, _ = evidence_from_validation(worse, task="regression")
    assert all(s.candidate_score > s.champion_score and s.score_delta > 0 for s in ev_worse.sites)
    kept = decide(ev_worse, policy)
    rule = next(r for r in kept.rules if r.rule == "replace_if.auroc_delta_lower_bound_gt")
    assert kept.decision == "keep" and not rule.passed and "upper bound" in rule.detail

    # retrain_if.auroc_below is a ceiling for MAE: the model to deploy (candidate, ~0.8 mm) is above 0.5 mm
    ceiling = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 20}, "retrain_if": {"auroc_below": 0.5}})
    fired = next(r for r in decide(evidence, ceiling).rules if r.rule == "retrain_if.auroc_below")
    assert fired.passed and "ceiling 0.5" in fired.detail


def test_signed_log_model_card_and_report(example, tmp_path):
    from ai4hi_sdk.reports.report import generate_reports
    from ai4hi_sdk.tasks.registry import task_strategy
    from ai4hi_sdk.validation.decision_log import verify_log
    from ai4hi_sdk.validation.engine import load_or_create_signing_key, make_decision

    task = task_strategy("regression")
    out = tmp_path / "report"
    out.mkdir()
    validation = {"status": "completed", "validation": {"A": _site_report(task, 0), "B": _site_report(task, 1)},
                  "refused": [], "rejected": []}
    (out / "validation-1.json").write_text(json.dumps(validation))
    evidence, _ = evidence_from_validation(validation, task="regression")
    key = load_or_create_signing_key(tmp_path / "k.pem")
    policy = UpdatePolicy.model_validate({"replace_if": {"min_site_support": 20}, "retrain_if": {"auroc_below": None}})
    decision, entry = make_decision(evidence, policy,
                                    out / "decisions.jsonl", key, parent_model_sha256="0" * 64,
                                    model_sha256="1" * 64, job_id="lesion-size/c1")
    assert verify_log(out / "decisions.jsonl", key.public_key()).ok
    logged = json.loads((out / "decisions.jsonl").read_text().splitlines()[0])["record"]["body"]["evidence"]
    assert logged["sites"][0]["metric"] == "mae"
    history = {"name": "lesion size", "intended_use": "testing", "decision_log": "decisions.jsonl",
               "models": {"m0": {"sha256": "0" * 64, "training": {}},
                          "c1": {"sha256": "1" * 64, "training": {"job": "lesion-size", "rounds": 2, "sites": ["A", "B"]}}},
               "steps": [{"kind": "validate", "candidate": "c1", "champion": "m0", "data_version": "v1",
                          "task": "regression", "record": "validation-1.json"},
                         {"kind": "decision", "candidate": "c1", "decision": decision.decision,
                          "reasons": decision.reasons, "rules": [r.model_dump() for r in decision.rules],
                          "pooled": decision.pooled, "log_seq": entry["seq"], "stage": "after training", "record": None}]}
    (out / "history.json").write_text(json.dumps(history))
    generate_reports(out, public_key=key.public_key())
    card = json.loads((out / "model_cards" / "c1.json").read_text())
    site_a = card["validations"][0]["sites"]["A"]
    assert card["validations"][0]["task"] == "regression"
    assert site_a["mae"] == validation["validation"]["A"]["candidate"]["mae"]
    assert site_a["mae_change_vs_champion"] == validation["validation"]["A"]["paired"]["delta"]
    markdown = (out / "model_cards" / "c1.md").read_text()
    assert "| site | n | MAE | R² | change in MAE vs champion (95 % CI) |" in markdown and "| A | sex | F |" in markdown
    assert "AUROC (95 % CI)" not in markdown
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "forest plot: per-site MAE change" in page and "AUROC (95 % CI)" not in page


def test_a_job_spec_names_the_registered_kind_and_the_summary_shows_its_columns(example, tmp_path):
    from io import StringIO

    from rich.console import Console

    from ai4hi_sdk.cli.job import print_summary
    from ai4hi_sdk.jobs.spec import load_checked_job_spec

    job = tmp_path / "lesion.yaml"
    job.write_text("name: lesion-size\ntask: regression\n")
    assert load_checked_job_spec(job).task == "regression"
    metrics = {"status": "completed", "rounds": [], "final_validation": {
        "sites": {"hospital-1": {"val_mae": 1.25, "val_loss": 2.5, "val_samples": 40}}, "weighted_mean": {}}}
    out = StringIO()
    print_summary(Console(file=out, width=200), metrics, Path("WS/result"), 1.0, task="regression")
    assert "val_mae" in out.getvalue() and "1.25" in out.getvalue() and "val_auroc" not in out.getvalue()


# ---------------------------------------------------------------------------------- a regression trainer


class _Sizes(Dataset):
    """Four image-derived features per lesion and its size in mm (``size = 10 + x @ [1, 2, -1, 0.5]``)."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.x = torch.tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
        noise = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(seed))
        self.y = 10.0 + self.x @ torch.tensor([1.0, 2.0, -1.0, 0.5]) + noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def attributes(self, i: int) -> dict[str, str]:
        return {"sex": "F" if i % 2 else "M"}


class LinearTrainer(SiteTrainer):
    """A regression trainer: a linear model on lesion features, ``predict_test`` returns sizes."""

    metric_names = ("loss", "mae")

    def build_model(self) -> nn.Module:
        return nn.Linear(4, 1)

    def build_datasets(self):
        from types import SimpleNamespace

        return SimpleNamespace(train=_Sizes(40, 1), val=_Sizes(20, 2), test=_Sizes(40, 3))

    def build_loss(self) -> nn.Module:
        return nn.L1Loss()

    def predict_test(self, global_state):
        from ai4hi_sdk.trainers.state import load_exchanged_state

        load_exchanged_state(self.model, global_state, self.exchanged_names())
        test = self.datasets.test
        with torch.no_grad():
            pred = self.model(test.x)[:, 0].numpy().astype(np.float64)
        return pred, test.y.numpy().astype(np.float64), {"sex": [test.attributes(i)["sex"] for i in range(len(test))]}
