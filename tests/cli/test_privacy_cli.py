"""``ai4hi privacy epsilon | plan | report``."""

import json

import pytest

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.privacy.dp.budget import PRIVACY_STATE_DIR, PrivacyBudget
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.config.site_policy import SITE_POLICY, load_site_policy

MNIST = ["--q", str(256 / 60000), "--sigma", "1.1", "--steps", "14063", "--delta", "1e-5"]


def _run(capsys, *argv):
    code = main(["privacy", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _flat(text):
    """Rich wraps long lines (even inside paths): compare without whitespace."""
    return "".join(text.split())


def test_epsilon_text_and_json(capsys):
    code, out, _ = _run(capsys, "epsilon", *MNIST)
    assert code == 0 and "epsilon = 2.5967" in out and "rdp" in out
    code, out, _ = _run(capsys, "epsilon", *MNIST, "--json")
    result = json.loads(out)
    assert code == 0 and result["epsilon"] == pytest.approx(2.597, rel=0.01) and result["optimal_order"] == 8.1
    assert result["accountant"] == "rdp" and result["steps"] == 14063


def test_epsilon_prv_and_no_noise(capsys):
    code, out, _ = _run(capsys, "epsilon", "--q", "0.08192", "--sigma", "10", "--steps", "875", "--delta", "1e-5",
                        "--accountant", "prv", "--json")
    assert code == 0 and json.loads(out)["epsilon"] == pytest.approx(0.91, rel=0.01)
    code, out, _ = _run(capsys, "epsilon", "--q", "0.1", "--sigma", "0", "--steps", "3", "--delta", "1e-5", "--json")
    assert code == 0 and json.loads(out)["epsilon"] is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"--q": "0"}, "sample rate (q) must be in (0, 1]"),
        ({"--q": "1.5"}, "sample rate (q) must be in (0, 1]"),
        ({"--sigma": "-1"}, "noise multiplier (sigma) must be finite and >= 0"),
        ({"--steps": "0"}, "steps must be >= 1"),
        ({"--delta": "0"}, "delta must be in (0, 1)"),
        ({"--delta": "2"}, "delta must be in (0, 1)"),
        ({"--accountant": "gdp"}, "unknown accountant 'gdp'"),
    ],
)
def test_epsilon_bad_inputs(capsys, changes, message):
    args = dict(zip(MNIST[::2], MNIST[1::2]), **changes)
    code, out, err = _run(capsys, "epsilon", *[x for kv in args.items() for x in kv])
    assert code == 2 and _flat(message) in _flat(err)


def test_epsilon_non_number_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["privacy", "epsilon", "--q", "abc", "--sigma", "1", "--steps", "1", "--delta", "1e-5"])
    assert info.value.code == 2 and "invalid float value: 'abc'" in capsys.readouterr().err


PLAN = ["--dataset-size", "60000", "--batch-size", "256", "--epochs-per-round", "2", "--rounds", "5",
        "--target-epsilon", "3", "--delta", "1e-5"]


def test_plan_json_and_table(capsys):
    code, out, _ = _run(capsys, "plan", *PLAN, "--json")
    plan = json.loads(out)
    assert code == 0 and plan["steps_per_round"] == 470 and plan["sample_rate"] == 256 / 60000
    eps = plan["epsilon_after_each_round"]
    assert len(eps) == 5 and 2.99 <= eps[-1] <= 3.0 and plan["noise_multiplier"] > 0.5
    code, out, _ = _run(capsys, "plan", *PLAN)
    assert code == 0 and f"noise multiplier {plan['noise_multiplier']:.4f}" in out
    assert "470 steps per round" in out and "epsilon after each round" in out
    for r, e in enumerate(eps, start=1):
        assert f"{e:.4f}" in out and f"{r * 470}" in out


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"--batch-size": "100000"}, "must not exceed the dataset size"),
        ({"--rounds": "0"}, "steps must be >= 1"),
        ({"--target-epsilon": "-1"}, "target epsilon must be a finite number > 0"),
        ({"--target-epsilon": "1e-9", "--delta": "1e-10"}, "privacy budget is too small"),
    ],
)
def test_plan_bad_inputs(capsys, changes, message):
    args = dict(zip(PLAN[::2], PLAN[1::2]), **changes)
    code, _, err = _run(capsys, "plan", *[x for kv in args.items() for x in kv])
    assert code == 2 and _flat(message) in _flat(err)


def _site(tmp_path, rounds=3):
    ws = tmp_path / "site-a"
    (ws / "ai4hi").mkdir(parents=True)
    (ws / SITE_POLICY).write_text("max_epsilon_per_dataset: 4.0\ndatasets:\n  small: {max_epsilon: 0.1}\n")
    policy = load_site_policy(ws / SITE_POLICY)
    budget, ledger = PrivacyBudget(ws / PRIVACY_STATE_DIR, policy), PrivacyLedger(ws / PRIVACY_LEDGER)
    for i in range(rounds):
        decision = budget.commit_round("cxr", 1.0, 0.02, 50)
        ledger.record_decision(decision, job_id=f"job{i // 2}", round_index=i, egress={"sha256": "0" * 64})
    ledger.record_decision(budget.check_round("small", 1.0, 0.02, 50), job_id="job9", round_index=0)
    return ws, budget


def test_report_json_and_table(tmp_path, capsys):
    ws, budget = _site(tmp_path)
    code, out, _ = _run(capsys, "report", "--site", str(ws), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["chain"] == {"ok": True, "entries": 4, "bad_line": None, "reason": ""}
    cxr = report["datasets"]["cxr"]
    assert cxr["spent"] == pytest.approx(budget.epsilon_spent("cxr")) and cxr["limit"] == 4.0
    assert cxr["remaining"] == pytest.approx(4.0 - cxr["spent"]) and cxr["rounds"] == 3 and cxr["jobs"] == ["job0", "job1"]
    small = report["datasets"]["small"]
    assert small["spent"] == 0.0 and small["refused"] == 1 and small["limit"] == 0.1
    code, out, _ = _run(capsys, "report", "--site", str(ws))
    assert code == 0 and "ledger verified" in out and "4 entries" in out
    assert "cxr" in out and f"{cxr['spent']:.4f}" in out and "job0, job1" in out


def test_report_names_a_tampered_line(tmp_path, capsys):
    ws, _ = _site(tmp_path)
    path = ws / PRIVACY_LEDGER
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"steps": 50', '"steps": 5')
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = _run(capsys, "report", "--site", str(ws))
    assert code == 1 and _flat("ledger verification FAILED at line 3") in _flat(out)
    code, out, _ = _run(capsys, "report", "--site", str(ws), "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and report["chain"]["bad_line"] == 3
    assert report["datasets"]["cxr"]["rounds"] == 2  # only the verified prefix counts
    # a removed line is caught too
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = _run(capsys, "report", "--site", str(ws), "--json")
    assert code == 1 and json.loads(out)["chain"]["bad_line"] == 2


def test_report_empty_site_missing_site_and_bad_policy(tmp_path, capsys):
    ws = tmp_path / "empty"
    ws.mkdir()
    code, out, _ = _run(capsys, "report", "--site", str(ws))
    assert code == 0 and "no site policy" in out and "no privacy spent" in out
    code, _, err = _run(capsys, "report", "--site", str(tmp_path / "missing"))
    assert code == 2 and _flat("site workspace not found") in _flat(err)
    (ws / "ai4hi").mkdir()
    (ws / SITE_POLICY).write_text("max_epsilon_per_dataset: 2\ndelta: 0.5\n")
    code, _, err = _run(capsys, "report", "--site", str(ws))
    assert code == 2 and "ai4hi/site_policy.yaml" in _flat(err) and "delta:" in err
