"""Safety through the loop's own records: a candidate with the higher AUROC whose sensitivity at its
operating point is below the floor is kept out, and the failing rule is named in the signed decision
log, the model card and the report; a deployed model that falls below a floor is withdrawn or
rolled back, so the loop never reports a model below a floor as deployed.

The validation job is replaced by a stand-in that answers with what the real cores compute from
given per-study scores (the sites' report, :func:`site_validation_report`; the server's operating
point, :func:`operating_point_from_payloads`); everything after it — the loop's model versions,
decisions, decision log, model cards and report — is the real code. The simulator run of the same
path is ``tests/e2e/jobs/test_continuous_e2e.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ai4hi_sdk.config.continuous import load_continuous_spec
from ai4hi_sdk.jobs import continuous
from ai4hi_sdk.jobs.validate import ValidationRun
from ai4hi_sdk.privacy.egress import model_sha256
from ai4hi_sdk.reports.report import generate_reports
from ai4hi_sdk.validation.decision_log import load_public_key, read_entries, verify_log
from ai4hi_sdk.validation.engine import public_key_file
from ai4hi_sdk.validation.operating_point import operating_point_from_payloads, operating_point_payload
from ai4hi_sdk.validation.site_report import flatten_metrics, site_validation_report, unflatten_metrics

LOOP = Path(__file__).parents[2] / "jobs" / "continuous.yaml"
SITES = ("hospital-1", "hospital-2", "hospital-3")


def _scores(rng, n, pos_mean, neg_mean):
    """``n`` studies, half positive, scores sigmoid(N(mean, 1)) per class."""
    y = np.arange(n) % 2
    z = rng.normal(size=n) + np.where(y == 1, pos_mean, neg_mean)
    return 1 / (1 + np.exp(-z)), y


class Validation:
    """Stand-in for ``run_validation``: sites' reports and operating points from given score
    distributions (logit means per class; ``val`` for the validation splits, ``test`` for the test
    splits), computed with the real site and server cores and passed through the wire form."""

    def __init__(self, models: dict[str, dict[str, tuple[float, float]]], seed: int = 0):
        self.models, self.seed, self.calls = models, seed, []

    def __call__(self, job, config, data_root, workspace, *, champion, candidate=None, sites_root=None,
                 timeout_s=None, champion_operating_point=None, champion_calibration=None, **_):
        rng = np.random.default_rng(self.seed + len(self.calls))
        roles = {"candidate": Path(candidate).stem, "champion": Path(champion).stem}
        self.calls.append({"roles": roles, "champion_operating_point": champion_operating_point})
        ops = {}
        for role, model in roles.items():
            if role == "champion" and champion_operating_point:
                ops[role] = {"operating_point": champion_operating_point, "calibration": champion_calibration,
                             "source": "the model version's record"}
                continue
            payloads = {s: unflatten_metrics(flatten_metrics(operating_point_payload(
                *_scores(rng, 120, *self.models[model]["val"]), split="validation", min_count=config.min_count)))
                for s in SITES}
            op = operating_point_from_payloads(payloads, config.operating_point.target, config.operating_point.value)
            ops[role] = {"operating_point": op, "calibration": None, "source": "validation histograms of 3 site(s)"}
        validation = {}
        for site in SITES:
            pc, y = _scores(rng, 60, *self.models[roles["candidate"]]["test"])
            ph, _ = _scores(rng, 60, *self.models[roles["champion"]]["test"])
            attrs = {"sex": ["F", "M"] * 30}
            rep = site_validation_report(y, pc, ph, attrs, threshold=ops["candidate"]["operating_point"]["threshold"],
                                         champion_threshold=ops["champion"]["operating_point"]["threshold"],
                                         min_count=config.min_count, net_benefit_thresholds=config.net_benefit_thresholds)
            validation[site] = unflatten_metrics(flatten_metrics(rep))
        record = {"status": "completed", "sites": list(SITES), "validation": validation, "operating_points": ops,
                  "refused": [], "rejected": []}
        result = Path(workspace) / "result"
        result.mkdir(parents=True, exist_ok=True)
        (result / "validation.json").write_text(json.dumps(record))
        return ValidationRun(result, record, 0, 1.0)


@pytest.fixture
def loop(tmp_path):
    run = continuous.ContinuousLoop(load_continuous_spec(LOOP), tmp_path / "data", tmp_path / "ws", say=lambda _: None)
    run.setup()
    return run


def _add_model(loop, label: str, parent: str = "m0-initial") -> str:
    start = torch.load(loop._model_path(parent), weights_only=True)
    state = {k: v + 0.01 * (len(loop.history["models"])) for k, v in start.items()}
    torch.save(state, loop._model_path(label))
    loop.history["models"][label] = {"sha256": model_sha256(state), "parent": parent,
                                     "training": {"job": "test", "sites": list(SITES), "privacy": {}}}
    return label


def test_higher_auroc_but_sensitivity_below_the_floor_is_kept_out_and_the_rule_is_named(loop, monkeypatch):
    # the candidate ranks far better (test AUROC ~0.99 vs ~0.76), but its positives on the test splits
    # score lower than on the validation splits its threshold was chosen on: sensitivity ~0.4 there
    fake = Validation({"c1": {"val": (2.0, -2.0), "test": (0.3, -3.5)},
                       "m0-initial": {"val": (0.5, -0.5), "test": (0.5, -0.5)}})
    monkeypatch.setattr(continuous, "run_validation", fake)
    c1 = _add_model(loop, "c1")
    record = loop.validate(c1, "v1")
    for rep in record["validation"].values():
        assert rep["candidate"]["auroc"] > rep["champion"]["auroc"] + 0.1
        assert rep["candidate"]["sensitivity"] < 0.8  # below the policy's floor at its operating point
    op = loop.history["models"][c1]["operating_point"]
    assert op["target"] == "sensitivity" and op["value"] == 0.9 and op["split"] == "validation"
    assert record["validation"]["hospital-1"]["meta"]["threshold"] == op["threshold"]

    assert loop.decide("after training", c1, record) == "keep"
    step = loop.history["steps"][-1]
    rules = {r["rule"]: r for r in step["rules"]}
    assert not rules["safety_floor.sensitivity"]["passed"]
    # every replace rule passed: the safety floor alone keeps the better-ranking candidate out
    assert all(r["passed"] for name, r in rules.items() if name.startswith("replace_if."))
    assert step["deployed_after"] == "none" and loop.deployed is None and loop.champion == "m0-initial"
    assert any(reason.startswith("safety_floor.sensitivity failed: candidate below the floor") for reason in
               step["reasons"])

    # the signed decision log names the rule and the operating point the candidate was judged at
    log = loop.report / continuous.DECISION_LOG
    key = load_public_key(public_key_file(loop.ws / continuous.SIGNING_KEY), log=log)
    assert verify_log(log, key).ok
    body = list(read_entries(log))[-1]["record"]["body"]
    logged = {r["rule"]: r for r in body["decision"]["rules"]}
    assert body["decision"]["decision"] == "keep" and not logged["safety_floor.sensitivity"]["passed"]
    assert body["evidence"]["candidate_operating_point"]["threshold"] == op["threshold"]
    assert body["extra"]["operating_points"]["candidate"]["threshold"] == op["threshold"]
    assert body["lineage"]["data_stats"]["hospital-2"]["candidate_threshold"] == op["threshold"]

    loop._save_history()
    out = generate_reports(loop.report)
    card = json.loads(Path(out["model_cards"][c1]["json"]).read_text())
    floors = {r["rule"]: r for r in card["safety_floors"][0]["rules"]}
    assert not floors["safety_floor.sensitivity"]["passed"] and card["deployed"] is False
    assert card["operating_point"]["threshold"] == op["threshold"]
    md = Path(out["model_cards"][c1]["markdown"]).read_text()
    assert "| `safety_floor.sensitivity` | **FAIL** |" in md and "Status: not deployed." in md
    page = Path(out["report"]).read_text()
    panel = page[page.index("<section id='safety'>"):page.index("</section>")]
    assert "Failed: safety_floor.sensitivity" in panel
    row = re.search(r"<tr><td title='safety_floor.sensitivity'>.*?</tr>", panel, re.S).group(0)
    assert "<td class='fail'>FAIL</td>" in row


def test_a_model_version_keeps_its_operating_point_when_it_is_the_champion(loop, monkeypatch):
    fake = Validation({"c1": {"val": (2.0, -2.0), "test": (2.0, -2.0)},
                       "c2": {"val": (2.5, -2.5), "test": (2.5, -2.5)},
                       "m0-initial": {"val": (0.5, -0.5), "test": (0.5, -0.5)}})
    monkeypatch.setattr(continuous, "run_validation", fake)
    c1 = _add_model(loop, "c1")
    loop.validate(c1, "v1")
    first = dict(loop.history["models"][c1]["operating_point"])
    loop.champion = loop.deployed = c1  # as after a REPLACE
    c2 = _add_model(loop, "c2", parent=c1)
    record = loop.validate(c2, "v2")
    # the champion c1 is judged at the threshold its version got when it was chosen, not a new one
    assert fake.calls[-1]["champion_operating_point"] == first
    assert loop.history["models"][c1]["operating_point"] == first
    assert all(rep["meta"]["champion_threshold"] == first["threshold"] for rep in record["validation"].values())
    assert loop.history["models"][c2]["operating_point"]["threshold"] != first["threshold"]


class _Rule:
    def __init__(self, rule, passed):
        self.rule, self.passed = rule, passed


class _Decision:
    def __init__(self, decision, failed=()):
        self.decision = decision
        self.rules = [_Rule(r, False) for r in failed]


def test_a_deployed_model_below_a_floor_is_withdrawn_or_rolled_back(loop):
    c1, c2, c3 = (_add_model(loop, m) for m in ("c1", "c2", "c3"))
    assert "c1 deployed" in loop._apply(_Decision("replace"), c1)
    assert loop.deployed == loop.champion == c1
    assert "c2 deployed" in loop._apply(_Decision("replace"), c2)
    # rollback: c2 fell below the sensitivity floor on new data; the previously deployed c1 returns
    action = loop._apply(_Decision("rollback", ["deployed_safety_floor.sensitivity"]), c3)
    assert loop.deployed == loop.champion == c1 and "rolled back to c1" in action and "c2 withdrawn" in action
    # retrain: c1 falls below a floor too; it is withdrawn, nothing is deployed until a model passes
    action = loop._apply(_Decision("retrain", ["deployed_safety_floor.specificity"]), c3)
    assert loop.deployed is None and loop.champion == c1 and "c1 withdrawn" in action
    assert loop.summary()[0].startswith("deployed model: none")
    # a keep without a floor failure changes nothing
    assert loop._apply(_Decision("keep"), c3) == "" and loop.deployed is None
