"""Report generation from a result folder built from the real cores (no simulator): valid HTML
with every plot embedded as a PNG, model cards in Markdown and JSON, ``ai4hi report`` CLI."""

from __future__ import annotations

import base64
import functools
import json
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.reports.explanations import render_explanations
from ai4hi_sdk.reports.report import generate_reports
from ai4hi_sdk.validation.calibration import recalibrate_from_payloads
from ai4hi_sdk.validation.drift import DriftAlarm, numeric_drift
from ai4hi_sdk.validation.engine import evidence_from_validation, load_or_create_signing_key, make_decision
from ai4hi_sdk.validation.monitoring import drift_report
from ai4hi_sdk.validation.operating_point import operating_point_from_payloads, operating_point_payload, sum_histograms
from ai4hi_sdk.validation.robustness import Perturbation, robustness_panel
from ai4hi_sdk.validation.site_report import flatten_metrics, site_validation_report, unflatten_metrics
from ai4hi_sdk.validation.update_policy import UpdatePolicy


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.headings, self.stack, self._h = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag in ("h1", "h2"):
            self._h = True
            self.headings.append("")
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()
        if tag in ("h1", "h2"):
            self._h = False

    def handle_data(self, data):
        if self._h:
            self.headings[-1] += data


SITES = ("A", "B")
POLICY = UpdatePolicy()  # the default policy: every safety floor on
LOGIT_03 = float(np.log(0.3 / 0.7))


def _scores(rng, y, model):
    """P(positive) of the story's models: m0 calibrated, AUROC ~0.9; c1 the issue's
    model (ranks well, ~0.3 for everyone); c2 ranks as well as c1 and gets an operating point and Platt
    recalibration from the validation splits."""
    x = rng.normal(size=y.size)
    if model == "m0":
        return 1 / (1 + np.exp(-1.8 * (x + 0.9 * (2 * y - 1))))
    return 1 / (1 + np.exp(-(LOGIT_03 + 0.25 * (x + 1.5 * (2 * y - 1)))))


def _split(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    attrs = {"sex": rng.choice(["F", "M"], n).tolist(), "age_band": rng.choice(["40-59", "60-79"], n).tolist()}
    return rng, y, attrs


def _operating_point(model, seed):
    """The version's threshold and recalibration, from the sites' validation-split histograms."""
    payloads = {}
    for i, site in enumerate(SITES):
        rng, y, _ = _split(100 * seed + i, 250)
        payloads[site] = unflatten_metrics(flatten_metrics(
            operating_point_payload(_scores(rng, y, model), y, split="validation", min_count=10)))
    op = operating_point_from_payloads(payloads, POLICY.operating_point.target, POLICY.operating_point.value)
    return op, recalibrate_from_payloads(sum_histograms(payloads), "platt")


@functools.lru_cache(maxsize=1)
def _site_extras():
    """A robustness panel per model and an explanation summary, computed for real on small images."""
    from tests.reports.test_explanations import TOP_LEFT, Images as Quads, Quadrant
    from tests.validation.test_robustness import Images, Reader

    perturb = [Perturbation("noise", 0.1), Perturbation("blur", 1.0), Perturbation("resolution", 0.5)]
    panels = {"candidate": robustness_panel(Reader(12), Images(40), perturbations=perturb),
              "champion": robustness_panel(Reader(1), Images(40), perturbations=perturb)}
    with tempfile.TemporaryDirectory() as ws:  # the page stays in the site's workspace
        expl = render_explanations(Quadrant((0, 0)), Quadrant((16, 16)), Quads(6), ws, n_images=4, mask_size=4,
                                   masks=lambda i: TOP_LEFT, min_count=4)
    return panels, expl


def _site(seed, candidate, thresholds, calibration=None, extras=False, n=300):
    rng, y, attrs = _split(seed, n)
    champ, cand = _scores(rng, y, "m0"), _scores(rng, y, candidate)
    rep = site_validation_report(y, cand, champ, attrs, threshold=thresholds[0], champion_threshold=thresholds[1],
                                 candidate_calibration=calibration, net_benefit_thresholds=POLICY.decision_curve.thresholds())
    if extras:
        panels, expl = _site_extras()
        for role in ("candidate", "champion"):
            rep[role]["robustness"] = panels[role]
            rep[role]["explanations"] = expl[role]
    return unflatten_metrics(flatten_metrics(rep))


@pytest.fixture
def result_dir(tmp_path):
    """A loop's result folder: c1 (higher AUROC, below the sensitivity floor at threshold 0.5) is kept
    out; after drift monitoring, c2 with its operating point and recalibration replaces m0."""
    out = tmp_path / "report"
    out.mkdir()
    op_m0, _ = _operating_point("m0", 1)
    op_c2, cal_c2 = _operating_point("c2", 2)
    val1 = {"status": "completed", "refused": [], "rejected": [],
            "validation": {s: _site(i, "c1", (0.5, op_m0["threshold"])) for i, s in enumerate(SITES)}}
    val2 = {"status": "completed", "refused": [], "rejected": [],
            "validation": {s: _site(10 + i, "c2", (op_c2["threshold"], op_m0["threshold"]), cal_c2, extras=True)
                           for i, s in enumerate(SITES)}}
    (out / "validation-1.json").write_text(json.dumps(val1))
    (out / "validation-2.json").write_text(json.dumps(val2))
    rng = np.random.default_rng(0)
    drift = {}
    for site, shift in (("A", 0.0), ("B", 1.0)):
        alarm = DriftAlarm().add("intensity_mean", numeric_drift(rng.normal(size=80), rng.normal(shift, 1, 80)))
        drift[site] = unflatten_metrics(flatten_metrics({"drift": drift_report(alarm, 80, 80)}))["drift"]
    (out / "monitor-1.json").write_text(json.dumps({"status": "completed", "drift": drift}))
    key = load_or_create_signing_key(tmp_path / "key.pem")
    steps = [{"kind": "train", "model": "c1", "data_version": "v1", "record": None},
             {"kind": "validate", "candidate": "c1", "champion": "m0", "data_version": "v1",
              "record": "validation-1.json"}]
    deployed = "m0"
    for i, (model, val) in enumerate((("c1", val1), ("c2", val2))):
        ev, notes = evidence_from_validation(val)
        decision, entry = make_decision(ev, POLICY, out / "decisions.jsonl", key, parent_model_sha256="0" * 64,
                                        model_sha256=str(i + 1) * 64, job_id=f"demo/{model}", notes=notes)
        deployed = model if decision.decision == "replace" else deployed
        steps.append({"kind": "decision", "candidate": model, "decision": decision.decision,
                      "reasons": decision.reasons, "rules": [r.model_dump() for r in decision.rules],
                      "pooled": decision.pooled, "log_seq": entry["seq"], "deployed_after": deployed,
                      "stage": "after training" if i == 0 else "after retraining", "record": None})
        if i == 0:
            steps += [{"kind": "monitor", "model": "m0", "data_version": "v2", "record": "monitor-1.json",
                       "label": "monitor 1"},
                      {"kind": "train", "model": "c2", "data_version": "v2", "record": None},
                      {"kind": "validate", "candidate": "c2", "champion": "m0", "data_version": "v2",
                       "record": "validation-2.json"}]
    training = {"job": "demo", "rounds": 2, "sites": list(SITES), "data_version": "v1",
                "data": {"A": {"train_samples": 140}}, "privacy": {"A": {"epsilon": 7.9, "delta": 1e-5}}}
    history = {
        "name": "test loop", "intended_use": "testing", "limitations": ["synthetic"], "decision_log": "decisions.jsonl",
        "models": {"m0": {"sha256": "0" * 64, "training": {}, "operating_point": op_m0},
                   "c1": {"sha256": "1" * 64, "training": training},
                   "c2": {"sha256": "2" * 64, "training": {**training, "data_version": "v2"}, "operating_point": op_c2,
                          "calibration": cal_c2,
                          "leave_one_site_out": {"A": {"score": 0.93, "full_score": 0.97},
                                                 "B": {"score": 0.95, "full_score": 0.96}}}},
        "steps": steps,
    }
    (out / "history.json").write_text(json.dumps(history))
    return out


def test_html_is_valid_and_has_every_plot(result_dir):
    out = generate_reports(result_dir)
    page = (result_dir / "report.html").read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.tags[0] == "html" and not parser.stack
    alts = [img["alt"] for img in parser.imgs]
    for wanted in ("forest plot", "subgroup gaps", "calibration curves", "drift tests per site", "drift over time",
                   "net benefit curves", "robustness panel"):
        assert any(wanted in a for a in alts), alts
    for img in parser.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert any("Drift monitoring" in h for h in parser.headings)
    assert out["decision_log"]["ok"] and "2 signed entries, intact" in page


def test_model_cards(result_dir):
    generate_reports(result_dir)
    card = json.loads((result_dir / "model_cards" / "c1.json").read_text())
    assert card["intended_use"] == "testing" and card["privacy"]["A"]["epsilon"] == 7.9
    site = card["validations"][0]["sites"]["A"]
    assert {"auroc", "auroc_ci", "sensitivity", "specificity", "ece", "brier", "n", "subgroups"} <= set(site)
    assert card["decisions"][0]["decision"] == "keep" and "synthetic" in card["limitations"]
    assert json.loads((result_dir / "model_cards" / "c2.json").read_text())["decisions"][0]["decision"] == "replace"
    md = (result_dir / "model_cards" / "c1.md").read_text()
    for section in ("## Intended use", "## Training", "## Performance", "## Update decisions", "## Limitations"):
        assert section in md
    assert "| A | " in md


def test_tampered_log_shows_in_report_and_cli(result_dir, capsys):
    log = result_dir / "decisions.jsonl"
    log.write_text(log.read_text().replace('"demo/c1"', '"demo/cX"'))
    assert main(["report", str(result_dir)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "TAMPERED at line 1" in out
    assert "TAMPERED at line 1" in (result_dir / "report.html").read_text()


def test_report_cli_errors(tmp_path, result_dir, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "history.json" in " ".join(capsys.readouterr().err.split())
    (result_dir / "monitor-1.json").unlink()
    assert main(["report", str(result_dir)]) == 2


def test_acceptance_higher_auroc_below_the_sensitivity_floor_is_kept_out_and_named_everywhere(result_dir):
    """c1's AUROC is clearly above m0's at both sites, its sensitivity at its threshold is ~0: KEEP,
    with safety_floor.sensitivity named in the signed decision log, c1's model card and the report."""
    generate_reports(result_dir)
    val = json.loads((result_dir / "validation-1.json").read_text())["validation"]
    for rep in val.values():
        assert rep["candidate"]["auroc"] > rep["champion"]["auroc"] + 0.05 and rep["paired"]["ci"][0] > 0.02
        assert rep["candidate"]["sensitivity"] < 0.1
    first = json.loads((result_dir / "decisions.jsonl").read_text().splitlines()[0])["record"]["body"]
    assert first["decision"]["decision"] == "keep" and first["decision"]["format_version"] == 2
    failed = {r["rule"] for r in first["decision"]["rules"] if not r["passed"] and r["rule"].startswith("safety_floor")}
    assert "safety_floor.sensitivity" in failed
    assert first["evidence"]["sites"][0]["candidate_counts"]["tp"] < 10  # the counts it was decided on
    md = (result_dir / "model_cards" / "c1.md").read_text()
    assert "| `safety_floor.sensitivity` | **FAIL** |" in md
    assert any("safety_floor.sensitivity failed" in r for r in json.loads(
        (result_dir / "model_cards" / "c1.json").read_text())["decisions"][0]["reasons"])
    page = (result_dir / "report.html").read_text(encoding="utf-8")
    panel = page[page.index("<section id='safety'>"):page.index("</section>")]
    assert "after training: KEEP (candidate c1" in panel and "Failed: safety_floor.sensitivity" in panel
    assert "after retraining: REPLACE (candidate c2" in panel


def test_safety_panel_opens_the_report_in_colour(result_dir):
    generate_reports(result_dir)
    page = (result_dir / "report.html").read_text(encoding="utf-8")
    assert page.index("<section id='safety'>") < page.index("<h2 id='timeline'>")
    body = page[page.index("<body>"):]
    assert body.index("<section id='safety'>") < body.index("<h2")  # before any other section
    panel = page[page.index("<section id='safety'>"):page.index("</section>")]
    c1, c2 = panel.split("after retraining: ")
    assert "class='fail'>FAIL" in c1 and "class='pass'>PASS" in c1  # sensitivity fails, specificity passes
    assert "class='fail'" not in c2 and c2.count("class='pass'>PASS") >= 4
    for site in ("A", "B", "pooled"):
        assert f"<th>{site}</th>" in panel
    assert ".fail{background:#f8d7da" in page


def test_cards_carry_operating_point_floors_net_benefit_and_future_ai(result_dir):
    generate_reports(result_dir)
    history = json.loads((result_dir / "history.json").read_text())
    card = json.loads((result_dir / "model_cards" / "c2.json").read_text())
    assert card["operating_point"]["threshold"] == history["models"]["c2"]["operating_point"]["threshold"]
    assert card["operating_point"]["split"] == "validation" and card["recalibration"]["method"] == "platt"
    assert card["recalibration"]["after"]["ece"] < card["recalibration"]["before"]["ece"]
    assert [r["rule"] for r in card["safety_floors"][0]["rules"]] == [
        "safety_floor.sensitivity", "safety_floor.specificity", "safety_floor.max_subgroup_sensitivity_gap",
        "safety_floor.max_ece"]
    curves = card["net_benefit"][0]["curves"]
    assert set(curves) == {"A", "B", "pooled"} and curves["pooled"]["thresholds"] == POLICY.decision_curve.thresholds()
    rows = {(r["principle"], r["evidence"].split(" (")[0]): r["status"] for r in card["future_ai"]}
    assert rows[("usability", "operating point chosen on the validation splits")] == "passed"
    assert rows[("universality", "leave-one-site-out")] == "passed"
    assert rows[("robustness", "drift monitoring")] == "missing"  # c2 was never monitored
    assert rows[("explainability", "site-local saliency pages")] == "passed"
    assert card["future_ai_summary"]["robustness"] == "missing"
    c1 = json.loads((result_dir / "model_cards" / "c1.json").read_text())
    assert c1["future_ai_summary"]["universality"] == "failed"  # below the floors at every site
    md = (result_dir / "model_cards" / "c2.md").read_text()
    for section in ("## Operating point", "## Safety floors", "## Net benefit", "## Robustness",
                    "## Leave-one-site-out", "## FUTURE-AI evidence"):
        assert section in md, section
    assert f"Threshold **{card['operating_point']['threshold']:.3f}**" in md
    page = (result_dir / "report.html").read_text(encoding="utf-8")
    assert "<h2 id='future-ai'>FUTURE-AI evidence</h2>" in page and "<h2 id='operating-points'>" in page
