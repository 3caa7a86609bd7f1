from pathlib import Path

import pytest

from ai4hi_sdk.errors import ConfigError
from ai4hi_sdk.jobs.spec import load_checked_job_spec as load_job_spec

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_job_specs_are_valid():
    from ai4hi_sdk.config.continuous import load_continuous_spec
    from ai4hi_sdk.validation.update_policy import load_update_policy

    other = {"continuous.yaml": load_continuous_spec, "update_policy.yaml": load_update_policy}
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        if path.name in other:  # loop file and update policy: their own schemas
            other[path.name](path)
            continue
        spec = load_job_spec(path)
        assert spec.train.rounds >= 1


def test_defaults_fill_in(tmp_path):
    spec = load_job_spec(_write(tmp_path, "name: tiny\n"))
    assert spec.trainer.endswith(":ClassificationTrainer") and spec.min_sites == 2


@pytest.mark.parametrize(
    "text,field,words",
    [
        ("name: x\ntrain: {rounds: 0}\n", "train.rounds", "greater than or equal to 1"),
        ("name: x\ntrain: {rouds: 3}\n", "train.rouds", "Extra inputs"),
        ("name: Bad Name\n", "name", "lowercase"),
        ("name: x\ntrain: {lr: -1}\n", "train.lr", "greater than 0"),
        ("name: x\ntrainer: nonexistent.module:Trainer\n", "trainer", "neither part of the SDK"),
        ("name: x\ntrainer: ai4hi_sdk.nonexistent:Trainer\n", "trainer", "cannot import"),
        ("name: x\ntrainer: ai4hi_sdk.trainers.classification:Nope\n", "trainer", "cannot import"),
        ("name: x\ntrainer: builtins:dict\n", "trainer", "neither part of the SDK nor one of the job's code files"),
        ("name: x\ntrainer: ai4hi_sdk.errors:UserError\n", "trainer", "not a subclass"),
        ("name: x\ncode: [/etc/passwd.py]\n", "code", "relative"),
        ("name: x\ncode: [missing.py]\n", "code.0", "file not found"),
        ("train: {rounds: 2}\n", "name", "Field required"),
        ("- just\n- a list\n", "<file>", "mapping"),
        ("name: [unclosed\n", "line", "not valid YAML"),
    ],
)
def test_errors_name_file_field_and_reason(tmp_path, text, field, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job_spec(path)
    message = str(info.value)
    assert str(path) in message
    assert any(f.startswith(field) for f, _ in info.value.problems), info.value.problems
    assert words in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_job_spec(tmp_path / "nope.yaml")


def test_overrides():
    spec = load_job_spec(REPO / "jobs" / "cxr_classification.yaml")
    assert spec.with_overrides(rounds=1, lr=None).train.rounds == 1
    assert spec.with_overrides(rounds=1).train.lr == spec.train.lr


def test_secure_aggregation_needs_two_surviving_sites():
    from pydantic import ValidationError

    from ai4hi_sdk.config.job_spec import JobSpec

    with pytest.raises(ValidationError, match="min_sites >= 2"):
        JobSpec(name="x", min_sites=1, privacy={"secure_aggregation": {}})
    spec = JobSpec(name="x", min_sites=2, privacy={"secure_aggregation": {"neighbours": 4, "threshold": 3}})
    assert (spec.privacy.secure_aggregation.neighbours, spec.privacy.secure_aggregation.threshold) == (4, 3)
    # its translation into the protocol's configuration: tests/privacy/secagg/test_settings.py


def test_a_secure_aggregation_key_the_spec_does_not_have_is_named(tmp_path):
    """The protocol's old internal fields (advertise_timeout_s, ...) were never job spec keys: a YAML
    that has one is refused with the file, the field and the reason, like any unknown key."""
    path = _write(tmp_path, "name: x\nprivacy:\n  secure_aggregation:\n    advertise_timeout_s: 30\n")
    with pytest.raises(ConfigError) as info:
        load_job_spec(path)
    assert info.value.problems == [("privacy.secure_aggregation.advertise_timeout_s", "Extra inputs are not permitted")]


def test_a_code_symlink_leaving_the_jobs_folder_is_refused(tmp_path):
    """A symlink listed in code: would ship its target (e.g. /etc/passwd or a private key) to every site."""
    secret = tmp_path / "outside" / "client.key"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN PRIVATE KEY-----")
    job = tmp_path / "job"
    job.mkdir()
    (job / "trainer.py").symlink_to(secret)
    path = _write(job, "name: x\ncode: [trainer.py]\n")
    with pytest.raises(ConfigError) as info:
        load_job_spec(path)
    assert info.value.problems[0][0] == "code.0" and "outside the job's folder" in str(info.value)
    from ai4hi_sdk.errors import UserError
    from ai4hi_sdk.site.code_bundle import pack_code

    with pytest.raises(UserError, match="outside the job's folder"):
        pack_code(job, ["trainer.py"])
    # a symlink that stays inside the folder is read through
    (job / "real.py").write_text("x = 1\n")
    (job / "alias.py").symlink_to(job / "real.py")
    assert list(pack_code(job, ["alias.py"])) == ["alias.py"]


def test_labels_from_reports_needs_finding_and_version(tmp_path):
    good = _write(tmp_path, "name: weak\ndata:\n  labels_from: reports\n  report_finding: opacity\n"
                            "  labeler_version: ai4hi-negex-1\n  uncertain: positive\n")
    spec = load_job_spec(good)
    assert (spec.data.labels_from, spec.data.report_finding, spec.data.uncertain) == ("reports", "opacity", "positive")
    assert load_job_spec(_write(tmp_path, "name: plain\n", "plain.yaml")).data.labels_from == "labels"
    for text, words in [
        ("data:\n  labels_from: reports\n  report_finding: opacity\n", "labeler_version"),
        ("data:\n  labels_from: reports\n  labeler_version: ai4hi-negex-1\n", "report_finding"),
        ("data:\n  report_finding: opacity\n", "only with labels_from: reports"),
        ("data:\n  labels_from: reports\n  report_finding: Opacity!\n  labeler_version: v1\n", "lowercase"),
        ("data:\n  labels_from: reports\n  report_finding: opacity\n  labeler_version: v1\n  uncertain: maybe\n",
         "data.uncertain"),
        ("task: segmentation\ndata:\n  labels_from: reports\n  report_finding: opacity\n  labeler_version: v1\n",
         "task must be classification"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_job_spec(_write(tmp_path, "name: bad\n" + text, "bad.yaml"))


def test_image_report_method_takes_client_level_dp_never_dp_sgd():
    from pydantic import ValidationError

    from ai4hi_sdk.config.job_spec import JobSpec

    secure = {"secure_aggregation": {}, "client_dp": {"clip": 1.0, "noise_multiplier": 1.0}}
    assert JobSpec(name="x", method="image_report", privacy=secure).method == "image_report"
    assert JobSpec(name="x").method == "supervised"
    with pytest.raises(ValidationError, match="does not bound one patient's influence"):
        JobSpec(name="x", method="image_report",
                privacy={**secure, "dp_sgd": {"noise_multiplier": 1.0}})
    with pytest.raises(ValidationError, match="needs privacy.client_dp"):
        JobSpec(name="x", method="image_report", privacy={"secure_aggregation": {}})
