"""Nothing is lost by a mistake: every `job simulate` option is checked before the workspace is
touched (a bad one leaves the previous results byte for byte), a run replaces WS/result only when it
completed, and a failed `job export` keeps the earlier export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.config.job_spec import load_job_spec
from ai4hi_sdk.jobs import simulate as sim
from ai4hi_sdk.jobs.wire import METRICS_FILE

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "cxr_classification.yaml"  # secure aggregation: needs 3 sites


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sites(root: Path, n: int) -> Path:
    for i in range(n):
        site = root / "data" / f"hospital-{i + 1}"
        site.mkdir(parents=True)
        (site / "labels.csv").write_text("StudyInstanceUID,label\n")
    return root / "data"


@pytest.fixture
def ws(tmp_path):
    """A workspace holding a previous run's results (the files a real run leaves)."""
    ws = tmp_path / "ws"
    (ws / "result" / "egress").mkdir(parents=True)
    torch.save({"w": torch.arange(4.0)}, ws / "result" / "global_model.pt")
    (ws / "result" / "metrics.json").write_text(json.dumps({"status": "completed", "rounds": [1, 2]}))
    (ws / "result" / "egress" / "hospital-1.jsonl").write_text('{"seq": 0}\n')
    (ws / "job" / "old" / "app").mkdir(parents=True)
    (ws / "job" / "old" / "meta.json").write_text("{}")
    (ws / "simulate" / "server").mkdir(parents=True)
    (ws / "simulate" / "server" / "log.txt").write_text("previous run\n")
    (ws / "sites" / "hospital-1" / "ai4hi").mkdir(parents=True)
    (ws / "sites" / "hospital-1" / "ai4hi" / "privacy_ledger.jsonl").write_text('{"seq": 0}\n')
    (ws / "simulate.log").write_text("previous log\n")
    return ws


BAD_OPTIONS = {  # case -> options; "{tmp}" is the test's tmp_path (bad files are written there)
    "site-policy invalid": ["--site-policy", "{tmp}/policy.yaml"],
    "site-policy missing": ["--site-policy", "{tmp}/absent.yaml"],
    "drop unknown site": ["--drop", "hospital-9:after-shares"],
    "drop bad stage": ["--drop", "hospital-1:after-lunch"],
    "initial-model wrong architecture": ["--initial-model", "{tmp}/wrong.pt"],
    "initial-model missing": ["--initial-model", "{tmp}/absent.pt"],
    "sites -1": ["--sites", "-1"],
    "sites 0": ["--sites", "0"],
    "timeout nan": ["--timeout", "nan"],
    "timeout inf": ["--timeout", "inf"],
    "timeout negative": ["--timeout", "-5"],
    "rounds 0": ["--rounds", "0"],
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_a_bad_option_leaves_the_previous_results_byte_for_byte(tmp_path, ws, capsys, case):
    (tmp_path / "policy.yaml").write_text("max_epsilon_per_dataset: -3\n")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    data = _sites(tmp_path, 3)
    before = _snapshot(ws)
    argv = ["job", "simulate", str(JOB), "--data-root", str(data), "--workspace", str(ws),
            *[a.format(tmp=tmp_path) for a in BAD_OPTIONS[case]]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(ws) == before
    assert sorted(p.name for p in ws.iterdir()) == ["job", "result", "simulate", "simulate.log", "sites"]


def test_secure_aggregation_with_two_sites_is_refused_up_front(tmp_path, ws, capsys):
    data = _sites(tmp_path, 2)
    before = _snapshot(ws)
    assert main(["job", "simulate", str(JOB), "--data-root", str(data), "--workspace", str(ws)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "secure aggregation, which cannot run on 2 sites" in err and "at least 3 sites" in err
    assert _snapshot(ws) == before


class StandIn:
    """Replaces only the simulator process: writes the server record a run would (or none)."""

    def __init__(self, status: str | None):
        self.status = status

    def __call__(self, job_dir, sim_workspace, sites, log_path, env, timeout_s, on_poll=None):
        assert (Path(job_dir) / "meta.json").is_file() and Path(job_dir).parent == sim_workspace.parent / "job"
        Path(log_path).write_text("stand-in\n")
        if self.status is None:
            return 1  # died before the job wrote anything
        run = sim_workspace / "server" / sim.SIM_JOB_ID
        run.mkdir(parents=True)
        (run / METRICS_FILE).write_text(json.dumps({"status": self.status, "rounds": [], "sites": sites}))
        return 0


@pytest.mark.parametrize("status", [None, "failed"])
def test_a_failed_run_keeps_the_previous_results(tmp_path, ws, monkeypatch, status):
    monkeypatch.setattr(sim, "run_simulator", StandIn(status))
    previous = {k: v for k, v in _snapshot(ws).items() if k.startswith("result/")}
    result = sim.simulate(load_job_spec(JOB), _sites(tmp_path, 3), ws, timeout_s=60)
    assert not result.ok and result.result_dir == ws / "result.failed"
    assert {k: v for k, v in _snapshot(ws).items() if k.startswith("result/")} == previous
    failed = json.loads((ws / "result.failed" / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["previous_results_kept"] == str(ws / "result")
    assert not [p for p in ws.iterdir() if p.name.startswith(".ai4hi")]  # no staging left behind


def test_a_completed_run_replaces_the_previous_results(tmp_path, ws, monkeypatch):
    monkeypatch.setattr(sim, "run_simulator", StandIn("completed"))
    result = sim.simulate(load_job_spec(JOB), _sites(tmp_path, 3), ws, timeout_s=60)
    assert result.ok and result.result_dir == ws / "result"
    metrics = json.loads((ws / "result" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["sites"] == ["hospital-1", "hospital-2", "hospital-3"]
    assert not (ws / "result" / "global_model.pt").exists()  # the old run's model went with its results
    assert not [p for p in ws.iterdir() if p.name.startswith(".ai4hi")]


def test_a_failed_run_in_a_fresh_workspace_writes_result(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "run_simulator", StandIn(None))
    result = sim.simulate(load_job_spec(JOB), _sites(tmp_path, 3), tmp_path / "fresh", timeout_s=60)
    assert result.result_dir == tmp_path / "fresh" / "result" and result.metrics["status"] == "failed"


# ------------------------------------------------------------------ job export


def _export(tmp_path, out, *extra):
    return main(["job", "export", str(JOB), "--out", str(out), *extra])


def test_a_failed_export_keeps_the_earlier_one(tmp_path, capsys):
    spec = load_job_spec(JOB)
    from ai4hi_sdk.trainers.loading import trainer_class_for

    state = trainer_class_for(spec)(spec, site_dir=None, site_name="server", device="cpu").initial_state()
    champion = tmp_path / "champion.pt"
    torch.save({k: v + 1 for k, v in state.items()}, champion)
    out = tmp_path / "out"
    assert _export(tmp_path, out, "--initial-model", str(champion)) == 0
    before = _snapshot(out)
    assert any(k.endswith("ai4hi_initial_model.pt") for k in before)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    capsys.readouterr()
    assert _export(tmp_path, out, "--initial-model", str(wrong)) == 2
    assert "wrong.pt" in capsys.readouterr().err
    assert _snapshot(out) == before
    # re-exporting the same job replaces it (here: without a warm start)
    assert _export(tmp_path, out) == 0
    assert not any(k.endswith("ai4hi_initial_model.pt") for k in _snapshot(out))
    assert sorted(p.name for p in out.iterdir()) == [spec.name]


def test_export_onto_a_file_or_a_foreign_folder_is_refused(tmp_path, capsys):
    spec = load_job_spec(JOB)
    a_file = tmp_path / "out.txt"
    a_file.write_text("keep me")
    assert _export(tmp_path, a_file) == 2
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    foreign = tmp_path / "out" / spec.name
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("someone else's")
    assert _export(tmp_path, tmp_path / "out") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is not an ai4hi job export" in err and len(err.splitlines()) == 1
    assert _export(tmp_path, tmp_path / "out", "--overwrite") == 2  # never replaces what is not an export
    assert (foreign / "notes.txt").read_text() == "someone else's"


def test_export_over_another_job_of_the_same_name_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert _export(tmp_path, out) == 0
    other = tmp_path / "other.yaml"  # same name, different job
    other.write_text(JOB.read_text().replace("rounds: 5", "rounds: 7"))
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["job", "export", str(other), "--out", str(out)]) == 2
    assert "another job named" in " ".join(capsys.readouterr().err.split())
    assert _snapshot(out) == before
    assert main(["job", "export", str(other), "--out", str(out), "--overwrite"]) == 0
    client = json.loads(next(out.rglob("config_fed_client.json")).read_text())
    assert client["executors"][0]["executor"]["args"]["job"]["train"]["rounds"] == 7
