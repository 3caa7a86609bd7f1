"""`ai4hi job` command-line behaviour: clear errors for user mistakes, export layout."""

import base64
import json
from pathlib import Path

from ai4hi_sdk.cli.main import main
from ai4hi_sdk.site.code_bundle import bundle_sha256

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "cxr_classification.yaml"


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_simulate_missing_data_root_is_a_clear_error(tmp_path, capsys):
    rc = main(["job", "simulate", str(JOB), "--data-root", str(tmp_path / "nope"), "--workspace", str(tmp_path / "ws")])
    assert rc == 2
    assert "is not a folder" in _err(capsys)


def test_simulate_with_no_sites_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc = main(["job", "simulate", str(JOB), "--data-root", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws")])
    assert rc == 2
    err = _err(capsys)
    assert "no site folders" in err and "ai4hi data synth" in err


def test_simulate_too_few_sites_for_the_job(tmp_path, capsys):
    (tmp_path / "data" / "hospital-1").mkdir(parents=True)
    (tmp_path / "data" / "hospital-1" / "labels.csv").write_text("StudyInstanceUID,label\n")
    rc = main(["job", "simulate", str(JOB), "--data-root", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws")])
    assert rc == 2
    assert "needs at least 2 sites" in _err(capsys)


def test_bad_spec_names_file_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {rounds: -1, colour: blue}\n")
    rc = main(["job", "export", str(bad), "--out", str(tmp_path / "out")])
    err = _err(capsys)
    assert rc == 2
    assert "bad.yaml" in err and "train.rounds" in err and "train.colour" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_rounds_override_must_be_positive(tmp_path, capsys):
    rc = main(["job", "simulate", str(JOB), "--data-root", str(tmp_path), "--workspace", str(tmp_path / "ws"),
               "--rounds", "0"])
    assert rc == 2 and "--rounds" in _err(capsys)


def test_export_writes_a_submittable_job(tmp_path, capsys):
    rc = main(["job", "export", str(REPO / "jobs" / "cxr_custom_trainer.yaml"), "--out", str(tmp_path / "out")])
    assert rc == 0
    job = tmp_path / "out" / "cxr-custom-trainer"
    assert (job / "meta.json").is_file()
    # no NVFlare custom code at all: the trainer's file travels as a hashed bundle in the executor's args
    assert not list(job.rglob("custom"))
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    assert server["workflows"][0]["path"] == "ai4hi_sdk.jobs.components.controller.Ai4hiFedAvg"
    executor = client["executors"][0]["executor"]
    assert executor["path"] == "ai4hi_sdk.site.executor.Ai4hiSiteExecutor"
    spec = executor["args"]["job"]
    assert spec["trainer"] == "small_cnn_trainer:SmallCNNTrainer" and spec["train"]["rounds"] == 3
    source = (REPO / "jobs" / "custom_trainer" / "small_cnn_trainer.py").read_bytes()
    assert base64.b64decode(executor["args"]["code"]["custom_trainer/small_cnn_trainer.py"]) == source
    filters = [f["path"] for group in client["task_result_filters"] for f in group["filters"]]
    assert filters == ["ai4hi_sdk.site.egress_guard.Ai4hiEgressGuard"]
    # the SDK is installed at sites: none of its code is copied into the job
    assert not list(job.rglob("ai4hi_sdk"))
    assert not (tmp_path / "out" / ".ai4hi_staging").exists()
    # the hash a site admin must allow is printed, and is the bundle's
    digest = bundle_sha256(executor["args"]["code"])
    assert digest in capsys.readouterr().out


def _three_site_folders(root):
    for i in range(3):
        site = root / "data" / f"hospital-{i + 1}"
        site.mkdir(parents=True)
        (site / "labels.csv").write_text("StudyInstanceUID,label\n")
    return root / "data"


def test_drop_needs_secure_aggregation(tmp_path, capsys):
    data = _three_site_folders(tmp_path)
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: plain\nmin_sites: 2\n")
    rc = main(["job", "simulate", str(plain), "--data-root", str(data), "--workspace", str(tmp_path / "ws"),
               "--drop", "hospital-2:after-shares"])
    assert rc == 2
    assert "does not use" in _err(capsys)


def test_bad_drop_names_the_problem(tmp_path, capsys):
    data = _three_site_folders(tmp_path)
    spec = tmp_path / "secure.yaml"
    spec.write_text("name: secure\nmin_sites: 2\nprivacy: {secure_aggregation: {clip: 1.0}}\n")
    for drop, message in [("hospital-2:after-lunch", "STAGE one of"), ("hospital-9:after-shares", "unknown sites")]:
        rc = main(["job", "simulate", str(spec), "--data-root", str(data), "--workspace", str(tmp_path / "ws"),
                   "--drop", drop])
        assert rc == 2
        assert message in _err(capsys)


def test_secure_aggregation_spec_errors_name_the_field(tmp_path, capsys):
    spec = tmp_path / "secure.yaml"
    spec.write_text("name: secure\nmin_sites: 1\nprivacy: {secure_aggregation: {clip: -1, neighbours: 1}}\n")
    rc = main(["job", "export", str(spec), "--out", str(tmp_path / "out")])
    assert rc == 2
    err = _err(capsys)
    assert "privacy.secure_aggregation.clip" in err and "privacy.secure_aggregation.neighbours" in err


def test_export_with_initial_model_ships_it_and_refuses_a_wrong_one(tmp_path, capsys):
    import torch

    from ai4hi_sdk.config.job_spec import load_job_spec
    from ai4hi_sdk.jobs.wire import INITIAL_MODEL_FILE
    from ai4hi_sdk.trainers.loading import trainer_class_for

    spec = load_job_spec(JOB)
    state = trainer_class_for(spec)(spec, site_dir=None, site_name="server", device="cpu").initial_state()
    state = {k: v + 0.5 for k, v in state.items()}  # a "champion" different from the seeded start
    good = tmp_path / "champion.pt"
    torch.save(state, good)
    rc = main(["job", "export", str(JOB), "--out", str(tmp_path / "out"), "--initial-model", str(good)])
    assert rc == 0
    shipped = list((tmp_path / "out").rglob(INITIAL_MODEL_FILE))
    assert len(shipped) == 1
    loaded = torch.load(shipped[0], weights_only=True)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k].float()) for k in state)

    bad = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    capsys.readouterr()
    rc = main(["job", "export", str(JOB), "--out", str(tmp_path / "out2"), "--initial-model", str(bad)])
    assert rc == 2
    assert "other.pt" in _err(capsys)


def test_simulate_with_a_missing_initial_model_is_a_clear_error(tmp_path, capsys):
    data = _three_site_folders(tmp_path)
    rc = main(["job", "simulate", str(JOB), "--data-root", str(data), "--workspace", str(tmp_path / "ws"),
               "--initial-model", str(tmp_path / "champion.pt")])
    assert rc == 2
    err = _err(capsys)
    assert "champion.pt" in err and "not found" in err


def test_summary_shows_weak_label_agreement_when_sites_sent_it():
    from io import StringIO
    from pathlib import Path

    from rich.console import Console

    from ai4hi_sdk.cli.job import print_summary

    metrics = {"status": "completed", "rounds": [], "final_validation": {"sites": {}, "weighted_mean": {}},
               "label_agreement": {"sites": {"hospital-1": {"weak_label_agreement": 0.9, "weak_label_studies": 40.0}},
                                   "studies": 40.0, "pooled_agreement": 0.9}}
    out = StringIO()
    print_summary(Console(file=out, width=200), metrics, Path("WS/result"), 1.0)
    assert "weak labels agree with hand labels: hospital-1 0.9 (40 studies); pooled 0.9" in out.getvalue()
    out = StringIO()
    no_agreement = {k: v for k, v in metrics.items() if k != "label_agreement"}  # no site sent it: not written
    print_summary(Console(file=out, width=200), no_agreement, Path("WS/result"), 1.0)
    assert "weak labels" not in out.getvalue()
