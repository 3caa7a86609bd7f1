"""Report generation from a result folder built from the real cores (no simulator): valid HTML
with every plot embedded as a PNG, model cards in Markdown and JSON, ``ai4hi report`` CLI."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.reports.report import generate_reports
from ai4hi_sdk.validation.drift import DriftAlarm, numeric_drift
from ai4hi_sdk.validation.engine import evidence_from_validation, load_or_create_signing_key, make_decision
from ai4hi_sdk.validation.monitoring import drift_report
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


def _site(seed, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    attrs = {"sex": rng.choice(["F", "M"], n).tolist(), "age_band": rng.choice(["40-59", "60-79"], n).tolist()}
    champ = 1 / (1 + np.exp(-(rng.normal(size=n) + (2 * y - 1) * 0.5)))
    cand = 1 / (1 + np.exp(-(rng.normal(size=n) + (2 * y - 1) * 1.0)))
    return unflatten_metrics(flatten_metrics(site_validation_report(y, cand, champ, attrs)))


@pytest.fixture
def result_dir(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    validation = {"status": "completed", "validation": {"A": _site(0), "B": _site(1)}, "refused": [], "rejected": []}
    (out / "validation-1.json").write_text(json.dumps(validation))
    rng = np.random.default_rng(0)
    drift = {}
    for site, shift in (("A", 0.0), ("B", 1.0)):
        alarm = DriftAlarm().add("intensity_mean", numeric_drift(rng.normal(size=80), rng.normal(shift, 1, 80)))
        drift[site] = unflatten_metrics(flatten_metrics({"drift": drift_report(alarm, 80, 80)}))["drift"]
    (out / "monitor-1.json").write_text(json.dumps({"status": "completed", "drift": drift}))
    key = load_or_create_signing_key(tmp_path / "key.pem")
    ev, notes = evidence_from_validation(validation)
    decision, entry = make_decision(ev, UpdatePolicy(), out / "decisions.jsonl", key, parent_model_sha256="0" * 64,
                                    model_sha256="1" * 64, job_id="demo/c1")
    history = {
        "name": "test loop", "intended_use": "testing", "limitations": ["synthetic"], "decision_log": "decisions.jsonl",
        "models": {"m0": {"sha256": "0" * 64, "training": {}},
                   "c1": {"sha256": "1" * 64, "training": {"job": "demo", "rounds": 2, "sites": ["A", "B"],
                                                           "data_version": "v1",
                                                           "data": {"A": {"train_samples": 140}},
                                                           "privacy": {"A": {"epsilon": 7.9, "delta": 1e-5}}}}},
        "steps": [{"kind": "train", "model": "c1", "data_version": "v1", "record": None},
                  {"kind": "validate", "candidate": "c1", "champion": "m0", "data_version": "v1",
                   "record": "validation-1.json"},
                  {"kind": "decision", "candidate": "c1", "decision": decision.decision, "reasons": decision.reasons,
                   "pooled": decision.pooled, "log_seq": entry["seq"], "stage": "after training", "record": None},
                  {"kind": "monitor", "model": "c1", "data_version": "v2", "record": "monitor-1.json",
                   "label": "monitor 1"}],
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
    for wanted in ("forest plot", "subgroup gaps", "calibration curves", "drift tests per site", "drift over time"):
        assert any(wanted in a for a in alts), alts
    for img in parser.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert any("Drift monitoring" in h for h in parser.headings)
    assert out["decision_log"]["ok"] and "1 signed entries, intact" in page


def test_model_cards(result_dir):
    generate_reports(result_dir)
    card = json.loads((result_dir / "model_cards" / "c1.json").read_text())
    assert card["intended_use"] == "testing" and card["privacy"]["A"]["epsilon"] == 7.9
    site = card["validations"][0]["sites"]["A"]
    assert {"auroc", "auroc_ci", "sensitivity", "specificity", "ece", "brier", "n", "subgroups"} <= set(site)
    assert card["decisions"][0]["decision"] in ("replace", "keep", "retrain") and "synthetic" in card["limitations"]
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
