"""``ai4hi audit verify``: intact logs pass, a tampered line is named, mistakes exit 2."""

from __future__ import annotations

import json

import pytest

from ai4hi_sdk.audit.hash_chain import HashChainLog
from ai4hi_sdk.cli.main import main
from ai4hi_sdk.validation.decision import Evidence
from ai4hi_sdk.validation.engine import load_or_create_signing_key, make_decision
from ai4hi_sdk.validation.update_policy import UpdatePolicy

SITE = {"site": "A", "n": 100, "candidate_auroc": 0.85, "champion_auroc": 0.8, "auroc_delta": 0.05,
        "auroc_delta_ci": [0.01, 0.09], "auroc_delta_variance": 0.0004}


@pytest.fixture
def log(tmp_path):
    key = load_or_create_signing_key(tmp_path / "key.pem")
    path = tmp_path / "decisions.jsonl"
    for i in range(3):
        make_decision(Evidence.model_validate({"sites": [SITE]}), UpdatePolicy(), path, key,
                      parent_model_sha256=None, model_sha256=f"{i:064x}", job_id=f"j{i}")
    return path


def test_intact_log_verifies(log, capsys):
    assert main(["audit", "verify", str(log)]) == 0
    assert "3 entries" in capsys.readouterr().out
    assert main(["audit", "verify", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_tampered_line_is_named(log, capsys):
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"j1"', '"j9"')
    log.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(log)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "line 2" in out


def test_wrong_key_and_missing_key(log, tmp_path, capsys):
    other = load_or_create_signing_key(tmp_path / "other.pem").public_key().public_bytes_raw().hex()
    assert main(["audit", "verify", str(log), "--public-key", other]) == 1
    assert "line 1" in capsys.readouterr().out
    (tmp_path / "decisions.jsonl.pub").unlink()
    assert main(["audit", "verify", str(log)]) == 2
    assert "--public-key" in " ".join(capsys.readouterr().err.split())
    assert main(["audit", "verify", str(log), "--public-key", "zz"]) == 2


def test_unsigned_chain_and_missing_file(tmp_path, capsys):
    egress = tmp_path / "egress_log.jsonl"
    for i in range(2):
        HashChainLog(egress).append({"task": "train", "round": i})
    assert main(["audit", "verify", str(egress)]) == 0
    lines = egress.read_text().splitlines()
    egress.write_text(lines[1] + "\n")  # first line removed
    assert main(["audit", "verify", str(egress)]) == 1
    assert main(["audit", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "not found" in " ".join(capsys.readouterr().err.split())  # the error console wraps
