"""Model cards carry the decision log's anchor, which `ai4hi audit verify --card` then uses to
detect a truncated log; a corrupt history.json is a one-line error that changes nothing."""

from __future__ import annotations

import json

import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.reports.report import generate_reports
from ai4hi_sdk.validation.decision import Evidence
from ai4hi_sdk.validation.engine import load_or_create_signing_key, make_decision, public_key_file
from ai4hi_sdk.validation.update_policy import UpdatePolicy

EVIDENCE = Evidence.model_validate({"sites": [{
    "site": "A", "n": 100, "candidate_auroc": 0.85, "champion_auroc": 0.8, "auroc_delta": 0.05,
    "auroc_delta_ci": [0.01, 0.09], "auroc_delta_variance": 0.0004}]})


@pytest.fixture
def ws(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    key_path = tmp_path / "keys" / "decision_signing_key.pem"
    key = load_or_create_signing_key(key_path)
    steps = []
    for i, model in enumerate(("c1", "c2")):
        decision, entry = make_decision(EVIDENCE, UpdatePolicy(), report / "decisions.jsonl", key,
                                        parent_model_sha256="0" * 64, model_sha256=f"{i + 1:064x}", job_id=model)
        steps.append({"kind": "decision", "candidate": model, "decision": decision.decision, "reasons": [],
                      "log_seq": entry["seq"], "stage": "after training", "record": None})
    history = {"name": "t", "decision_log": "decisions.jsonl", "steps": steps,
               "models": {m: {"sha256": f"{i + 1:064x}", "training": {}} for i, m in enumerate(("c1", "c2"))}}
    (report / "history.json").write_text(json.dumps(history))
    return tmp_path, public_key_file(key_path)


def test_cards_record_the_anchor_and_audit_uses_it(ws, capsys):
    root, pub = ws
    report = root / "report"
    assert main(["report", str(report), "--public-key", str(pub)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "signatures verified with the pinned key" in out and "anchor: 2 entries" in out
    card = json.loads((report / "model_cards" / "c2.json").read_text())
    lines = (report / "decisions.jsonl").read_text().splitlines()
    assert card["decision_log"]["entries"] == 2 and card["decision_log"]["head"] == json.loads(lines[-1])["hash"]
    assert card["decision_log"]["format"] == 2
    assert "Decision log anchor: 2 entries" in (report / "model_cards" / "c2.md").read_text()
    published = root / "published_c2.json"  # the card as distributed before the forgery
    published.write_text(json.dumps(card))
    (report / "decisions.jsonl").write_text(lines[0] + "\n")  # the newest decision removed
    assert main(["audit", "verify", str(report / "decisions.jsonl"), "--public-key", str(pub),
                 "--card", str(published)]) == 1
    assert "truncated" in capsys.readouterr().out


def test_report_without_a_pinned_key_says_so(ws):
    root, _ = ws
    out = generate_reports(root / "report")
    assert out["decision_log"]["intact"] and out["decision_log"]["pinned_key"] is False
    assert "not a trust anchor" in (root / "report" / "report.html").read_text()


def test_report_refuses_a_key_beside_the_log(ws, capsys):
    root, pub = ws
    beside = root / "report" / "decisions.jsonl.pub"
    beside.write_text(pub.read_text())
    assert main(["report", str(root / "report"), "--public-key", str(beside)]) == 2
    assert not (root / "report" / "report.html").exists()


@pytest.mark.parametrize("content", ["{\"steps\": [", "[1, 2]", "\xff\xfe not utf-8"])
def test_corrupt_history_is_one_line_and_changes_nothing(ws, capsys, content):
    root, _ = ws
    history = root / "report" / "history.json"
    history.write_bytes(content.encode("latin-1"))
    before = {p.name: p.read_bytes() for p in (root / "report").iterdir()}
    assert main(["report", str(root / "report")]) == 2
    err = capsys.readouterr().err
    assert "history.json" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (root / "report").iterdir()} == before
