"""`ai4hi continuous run` ends by verifying its decision log with the key kept beside the signing
key (outside the report folder) and prints the anchor to record."""

from __future__ import annotations

from rich.console import Console

from ai4hi_sdk.cli.continuous import _print_decision_log
from ai4hi_sdk.jobs.continuous import DECISION_LOG, SIGNING_KEY
from ai4hi_sdk.validation.decision import Evidence
from ai4hi_sdk.validation.engine import load_or_create_signing_key, make_decision
from ai4hi_sdk.validation.update_policy import UpdatePolicy

EVIDENCE = Evidence.model_validate({"sites": [{
    "site": "A", "n": 100, "candidate_auroc": 0.85, "champion_auroc": 0.8, "auroc_delta": 0.05,
    "auroc_delta_ci": [0.01, 0.09], "auroc_delta_variance": 0.0004}]})


def test_loop_end_verifies_the_log_with_the_pinned_key(tmp_path, capsys):
    ws, report = tmp_path / "ws", tmp_path / "ws" / "report"
    report.mkdir(parents=True)
    key = load_or_create_signing_key(ws / SIGNING_KEY)
    for i in range(2):
        _, entry = make_decision(EVIDENCE, UpdatePolicy(), report / DECISION_LOG, key, parent_model_sha256=None,
                                 model_sha256=None, job_id=f"j{i}")
    console = Console(soft_wrap=True)
    assert _print_decision_log(console, report, ws)
    out = capsys.readouterr().out
    assert "2 signed entries, verified" in out and f"head {entry['hash']}" in out and "--card" in out
    log = report / DECISION_LOG
    log.write_text(log.read_text().replace('"j1"', '"jX"'))
    assert not _print_decision_log(console, report, ws)
    assert "NOT verified" in capsys.readouterr().out
