"""The site runtime on foundation jobs, on real synthetic DICOM sites (no NVFlare):

* a job on a backbone carries only its sha256; the site trains on its own store copy, hashed before
  round 0, and refuses (nothing trained, nothing booked) when the copy differs by one byte or is
  missing; a path in the job is never read;
* only the trainer's exchanged tensors are loaded and sent (adapters and head), checked by the
  runtime; a server model carrying backbone tensors is refused;
* ``pretrain`` is a job kind of its own, not in the policy's default kinds;
* pretraining and fine-tuning epsilon compose in one ledger per dataset (checked against an
  accountant fed the rounds independently).
"""

from __future__ import annotations

import pytest
import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.data.synth import synth_consortium
from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.foundation.checkpoint import load_backbone, sha256_file
from ai4hi_sdk.foundation.provenance import export_pretrained_backbone
from ai4hi_sdk.foundation.trainers import MAEPretrainTrainer
from ai4hi_sdk.jobs.builder import spec_payload
from ai4hi_sdk.privacy.dp.accountants import create_accountant
from ai4hi_sdk.audit.hash_chain import read_entries
from ai4hi_sdk.privacy.dp.ledger import EGRESS_TYPE, PrivacyLedger
from ai4hi_sdk.site.backbones import install_backbone
from ai4hi_sdk.site.code_bundle import pack_code
from ai4hi_sdk.site.runtime import SiteRuntime
from ai4hi_sdk.trainers.state import exchanged_state
from tests.site.conftest import FIXTURES, SMALL_MODEL, write_policy

TRAIN = {"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.002, "optimizer": "adam", "threads": 1,
         "augment": False}
DP = {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}
SITE = "hospital-1"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm_runtime")
    synth_consortium(root, sites=1, studies_per_site=30, seed=4, labelled_fraction=0.5, finding="subtle")
    return root


@pytest.fixture(scope="module")
def backbone(data, tmp_path_factory):
    spec = JobSpec(name="pre", task="pretrain", data={"image_size": 32}, train=TRAIN)
    trainer = MAEPretrainTrainer(spec, site_dir=data / SITE, site_name=SITE, device="cpu")
    out = tmp_path_factory.mktemp("backbone")
    export_pretrained_backbone(trainer.mae_state(), "vit-micro-2d", out, site_images={SITE: 1}, rounds=0,
                               local_epochs=0)
    return out


def ffa_spec(backbone, **privacy) -> JobSpec:
    return JobSpec(name="ffa", trainer="ai4hi_sdk.foundation.trainers:BackboneClassificationTrainer",
                   model={"checkpoint": str(backbone), "adaptation": {"mode": "ffa_lora", "rank": 2}},
                   data={"image_size": 32}, train=TRAIN, privacy=privacy)


def runtime(payload, workspace, data, job_id="job-1") -> SiteRuntime:
    return SiteRuntime(payload, site_name=SITE, job_id=job_id, workspace=workspace, data_root=str(data),
                       device="cpu")


def start_state(payload, backbone) -> dict[str, torch.Tensor]:
    """The round-0 exchanged state as the lead computes it (the job's shipped initial model)."""
    from ai4hi_sdk.jobs.builder import lead_initial_state

    return lead_initial_state(JobSpec.model_validate({**payload, "model": {**payload["model"],
                                                                          "checkpoint": str(backbone)}}))


def test_the_job_carries_only_the_sha256(backbone):
    payload = spec_payload(ffa_spec(backbone))
    assert "checkpoint" not in payload["model"]
    assert payload["model"]["checkpoint_sha256"] == sha256_file(backbone / "backbone.safetensors")


def test_the_site_trains_its_own_copy_and_sends_only_adapters_and_head(backbone, data, tmp_path):
    write_policy(tmp_path, require_dp=False)
    installed = install_backbone(backbone, tmp_path)
    payload = spec_payload(ffa_spec(backbone))
    site = runtime(payload, tmp_path, data)
    out = site.train(start_state(payload, backbone), 0, 1)
    assert site.base_checkpoint == installed.folder
    assert site.trainer.spec.model["checkpoint"] == str(installed.folder)
    full = site.model.state_dict()
    weights, _ = load_backbone(backbone)
    assert all(torch.equal(full[f"encoder.{k}"], v) for k, v in weights.items())  # the backbone was loaded
    adapters = {n for n in full if ".lora_B." in n}
    assert adapters and set(out.params) == adapters | {"head.weight", "head.bias"}
    # what the ledger committed (the egress record) lists the same names: nothing of the backbone
    (record,) = [e["record"] for e in read_entries(tmp_path / "ai4hi" / "privacy_ledger.jsonl")
                 if e["record"].get("type") == EGRESS_TYPE]
    assert {t["name"] for t in record["egress"]["tensors"]} == set(out.params)


def test_a_copy_that_differs_by_one_byte_is_refused_before_round_0(backbone, data, tmp_path):
    write_policy(tmp_path, require_dp=False)
    installed = install_backbone(backbone, tmp_path)
    weights = installed.folder / "backbone.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    weights.write_bytes(bytes(raw))
    payload = spec_payload(ffa_spec(backbone))
    site = runtime(payload, tmp_path, data)
    with pytest.raises(RoundRefused) as refused:
        site.train(start_state(payload, backbone), 0, 1)
    reason = site.refusal_reason(refused.value)
    assert f"but the job expects {payload['model']['checkpoint_sha256']}" in reason
    assert "<site workspace>" in reason and str(tmp_path) not in reason  # the site's paths do not leave
    assert site._model is None  # nothing was built, let alone trained
    assert not (tmp_path / "ai4hi" / "privacy_ledger.jsonl").exists()


def test_a_site_without_the_backbone_refuses_and_a_job_path_is_never_read(backbone, data, tmp_path):
    write_policy(tmp_path, require_dp=False)
    payload = spec_payload(ffa_spec(backbone))
    with pytest.raises(RoundRefused, match="does not hold the backbone .* add-backbone"):
        runtime(payload, tmp_path, data).train(start_state(payload, backbone), 0, 1)
    # the job's own path (even to the right file) is ignored: only the site's store counts
    with_path = {**payload, "model": {**payload["model"], "checkpoint": str(backbone)}}
    with pytest.raises(RoundRefused, match="does not hold the backbone"):
        runtime(with_path, tmp_path, data).train(start_state(payload, backbone), 0, 1)
    no_sha = {**payload, "model": {k: v for k, v in with_path["model"].items() if k != "checkpoint_sha256"}}
    with pytest.raises(RoundRefused, match="without its sha256"):
        runtime(no_sha, tmp_path, data).train(start_state(payload, backbone), 0, 1)


def test_a_server_model_carrying_backbone_tensors_is_refused(backbone, data, tmp_path):
    write_policy(tmp_path, require_dp=False)
    install_backbone(backbone, tmp_path)
    payload = spec_payload(ffa_spec(backbone))
    site = runtime(payload, tmp_path, data)
    everything = exchanged_state(site.model)  # every float tensor, backbone included
    with pytest.raises(RoundRefused, match="not this job's exchanged state: missing \\[\\], unexpected \\['encoder"):
        site.train(everything, 0, 1)


@pytest.mark.parametrize("trainer,problem", [("UnknownNameTrainer", "not in the model \\['not.in.the.model'\\]"),
                                             ("CounterNameTrainer", "not floating point \\['.*num_batches_tracked'\\]")])
def test_the_runtime_checks_the_trainers_exchanged_names(tmp_path, trainer, problem):
    code = ["memory_trainer.py", "bad_names_trainer.py"]
    bundle = pack_code(FIXTURES, code)
    from ai4hi_sdk.site.code_bundle import bundle_sha256

    write_policy(tmp_path / "ws", require_dp=False, allowed_code_sha256=[bundle_sha256(bundle)])
    (tmp_path / "data" / SITE).mkdir(parents=True)
    spec = JobSpec(name="unit", trainer=f"bad_names_trainer:{trainer}", code=code, base_dir=str(FIXTURES),
                   model=SMALL_MODEL, train={"rounds": 1, "batch_size": 4, "threads": 1})
    site = SiteRuntime(spec.model_dump(mode="json"), site_name=SITE, job_id="j", workspace=tmp_path / "ws",
                       code=bundle, data_root=str(tmp_path / "data"))
    with pytest.raises(RoundRefused, match=f"trainer: exchanged_names\\(\\) must name .*{problem}"):
        site.train({}, 0, 1)


def test_a_valid_subset_is_all_that_travels(tmp_path):
    code = ["memory_trainer.py", "bad_names_trainer.py"]
    bundle = pack_code(FIXTURES, code)
    from ai4hi_sdk.site.code_bundle import bundle_sha256

    write_policy(tmp_path / "ws", require_dp=False, allowed_code_sha256=[bundle_sha256(bundle)])
    (tmp_path / "data" / SITE).mkdir(parents=True)
    spec = JobSpec(name="unit", trainer="bad_names_trainer:HeadOnlyTrainer", code=code, base_dir=str(FIXTURES),
                   model=SMALL_MODEL, train={"rounds": 1, "batch_size": 4, "threads": 1})
    site = SiteRuntime(spec.model_dump(mode="json"), site_name=SITE, job_id="j", workspace=tmp_path / "ws",
                       code=bundle, data_root=str(tmp_path / "data"))
    start = exchanged_state(site.model, site.exchanged_names)
    out = site.train(start, 0, 1)
    assert set(out.params) == {"class_layers.out.weight", "class_layers.out.bias"} == set(start)
    assert any(abs(v).sum() > 0 for v in out.params.values())


def pretrain_payload(**privacy) -> dict:
    return spec_payload(JobSpec(name="pre", task="pretrain", data={"image_size": 32}, train=TRAIN, privacy=privacy))


def test_pretraining_is_a_job_kind_a_site_opts_into(data, tmp_path):
    write_policy(tmp_path)  # the policy's default kinds: train and validate
    payload = pretrain_payload(**DP)
    assert payload["trainer"] == "ai4hi_sdk.foundation.trainers:MAEPretrainTrainer"  # task pretrain's default
    site = runtime(payload, tmp_path, data)
    with pytest.raises(RoundRefused, match="job kind 'pretrain' is not allowed by the site policy"):
        site.train({}, 0, 1)
    write_policy(tmp_path / "dp", allowed_job_kinds=["pretrain"])
    with pytest.raises(RoundRefused, match="requires differential privacy"):  # DP rules apply to pretraining
        runtime(pretrain_payload(), tmp_path / "dp", data).train({}, 0, 1)


def test_pretraining_and_fine_tuning_epsilon_compose_in_one_ledger_per_dataset(backbone, data, tmp_path):
    write_policy(tmp_path, allowed_job_kinds=["train", "pretrain", "validate"], max_epsilon_per_dataset=50.0)
    install_backbone(backbone, tmp_path)
    pre = runtime(pretrain_payload(**DP), tmp_path, data, job_id="pretrain-1")
    state = exchanged_state(pre.model, pre.exchanged_names)
    for round_index in range(2):
        out = pre.train(state, round_index, 2)
        state = {k: state[k] + torch.as_tensor(out.params[k]) for k in state}
    payload = spec_payload(ffa_spec(backbone, **DP))
    fine = runtime(payload, tmp_path, data, job_id="finetune-1")
    state = start_state(payload, backbone)
    for round_index in range(2):
        out = fine.train(state, round_index, 2)
        state = {k: state[k] + torch.as_tensor(out.params[k]) for k in state}
    records = PrivacyLedger(tmp_path / "ai4hi" / "privacy_ledger.jsonl").records()
    assert [r["job_id"] for r in records] == ["pretrain-1"] * 2 + ["finetune-1"] * 2
    assert all(r["status"] == "spent" for r in records)
    assert len({r["dataset_id"] for r in records}) == 1  # one dataset: both jobs read the same studies
    # the fine-tuning starts where pretraining left the dataset's budget
    assert records[2]["epsilon_before"] == pytest.approx(records[1]["epsilon_after"])
    # independent reference: one accountant composing every round of both jobs
    accountant = create_accountant("rdp")
    for r in records:
        accountant.step(r["noise_multiplier"], r["sample_rate"], r["steps"])
    assert records[-1]["epsilon_after"] == pytest.approx(accountant.get_epsilon(records[-1]["delta"]), rel=1e-6)
    assert out.metrics["dp_epsilon"] == pytest.approx(records[-1]["epsilon_after"])
    # and more than either job alone
    alone = create_accountant("rdp")
    for r in records[2:]:
        alone.step(r["noise_multiplier"], r["sample_rate"], r["steps"])
    assert records[-1]["epsilon_after"] > alone.get_epsilon(records[-1]["delta"]) + 0.1


def test_a_backbone_jobs_validation_builds_its_robustness_and_explanation_models(backbone, data, tmp_path):
    # candidate and champion carry adapters and head only: the site's validation loads them onto its
    # backbone for every panel (a load expecting the whole model raised here before)
    from ai4hi_sdk.config.validation_spec import ValidationSpec
    from ai4hi_sdk.foundation.trainers import BackboneClassificationTrainer
    from ai4hi_sdk.site.validation import ValidationSite

    trainer = BackboneClassificationTrainer(ffa_spec(backbone), site_dir=data / SITE, site_name=SITE, device="cpu",
                                            site_workspace=tmp_path)
    names = trainer.exchanged_names()
    champion = exchanged_state(trainer.model, names)
    candidate = {k: v + 0.01 for k, v in champion.items()}
    assert len(candidate) < len(trainer.model.state_dict())
    report = ValidationSite(trainer, ValidationSpec(min_count=2, explanation_images=2)).cross_validate(
        candidate, champion)
    for role in ("candidate", "champion"):
        assert "robustness" in report[role] and "explanations" in report[role], sorted(report[role])
