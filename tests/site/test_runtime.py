"""The site-owned runtime decides, in code the site installed: policy before job code, custom code by
hash, the budget before training, write-ahead booking, what statistics leave, k, and refusal reasons
that carry no site data. No NVFlare: the runtime is called directly, as the site executor does."""

from __future__ import annotations

import sys

import pytest
import torch

from ai4hi_sdk.errors import RoundRefused
from ai4hi_sdk.jobs.wire import ACCOUNTING_METRICS, NUM_SAMPLES_KEY
from ai4hi_sdk.privacy.dp.ledger import PRIVACY_LEDGER, PrivacyLedger
from ai4hi_sdk.privacy.egress import describe_payload
from ai4hi_sdk.site.code_bundle import bundle_sha256, pack_code
from tests.site.conftest import FIXTURES

DP = {"dp_sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}


def _start(runtime):
    """The server's round-0 model: the same seeded architecture the site runtime builds."""
    from ai4hi_sdk.trainers.state import exchanged_state

    return exchanged_state(runtime.model)


def _ledger(site) -> list[dict]:
    return PrivacyLedger(site.workspace / PRIVACY_LEDGER).records()


def _jobs_dir(site):
    return site.workspace / "ai4hi" / "jobs"


def test_site_without_policy_refuses_before_any_job_code(site):
    runtime = site.runtime(privacy=DP)
    with pytest.raises(RoundRefused, match="no site privacy policy") as err:
        runtime.train({}, 0, 2)
    assert not _jobs_dir(site).exists(), "job code was installed before the policy allowed the job"
    reason = runtime.refusal_reason(err.value)
    assert str(site.workspace) not in reason and "<site workspace>" in reason


def test_policy_requiring_dp_refuses_a_non_private_job(site):
    site.policy()
    runtime = site.runtime()
    with pytest.raises(RoundRefused, match="requires differential privacy"):
        runtime.train({}, 0, 2)
    assert not _jobs_dir(site).exists()


def test_custom_code_runs_only_once_the_site_allows_its_hash(site):
    site.policy(allow=(), require_dp=False)
    digest = bundle_sha256(pack_code(FIXTURES, ["memory_trainer.py"]))
    with pytest.raises(RoundRefused) as err:
        site.runtime().train({}, 0, 2)
    assert digest in str(err.value) and "does not allow" in str(err.value)
    assert not _jobs_dir(site).exists()

    site.policy(allow=(), require_dp=False, allowed_code_sha256=[digest])
    runtime = site.runtime()
    out = runtime.train(_start(runtime), 0, 2)
    assert out.diff and set(out.params) == set(_start(runtime))


def test_an_edited_code_file_changes_the_hash_and_is_refused(site, tmp_path):
    site.policy(require_dp=False)  # allows the original memory_trainer.py
    runtime = site.runtime()
    runtime.code = {**runtime.code, "memory_trainer.py": runtime.code["memory_trainer.py"][:-8] + "IyB4Cg=="}
    runtime.code_sha256 = bundle_sha256(runtime.code)
    with pytest.raises(RoundRefused, match="does not allow"):
        runtime.train({}, 0, 2)


def test_dp_round_is_booked_before_it_leaves_and_local_statistics_stay(site):
    site.policy()
    runtime = site.runtime(privacy=DP)
    start = _start(runtime)
    out = runtime.train(start, 0, 2)
    records = _ledger(site)
    assert [(r["status"], r["mechanism"]) for r in records] == [("spent", "dp_sgd")]
    # the ledger holds the description of exactly what leaves
    assert records[0]["egress"]["sha256"] == describe_payload(out.params, out.metrics)["sha256"]
    assert out.meta[NUM_SAMPLES_KEY] == 16
    # accounting and the received model's validation (12 >= k = 10 studies) leave; training statistics do not
    assert set(ACCOUNTING_METRICS) <= set(out.metrics)
    assert {"global_val_auroc", "global_val_samples"} <= set(out.metrics)
    assert not {"train_loss", "train_steps", "val_loss", "val_auroc", "local_seconds"} & set(out.metrics)
    assert out.metrics["dp_epsilon"] == pytest.approx(records[0]["epsilon_after"])


def test_received_model_metrics_need_k_validation_studies(site):
    site.policy()
    runtime = site.runtime(privacy=DP, model={"n_val": 9})
    out = runtime.train(_start(runtime), 0, 2)
    assert not any(k.startswith("global_val_") for k in out.metrics)
    with pytest.raises(RoundRefused, match="fewer than k = 10"):
        runtime.validate(_start(runtime))
    site.policy(min_count=9)
    ok = site.runtime(privacy=DP, model={"n_val": 9}, job_id="job-2")
    assert ok.validate(_start(ok)).metrics["val_samples"] == 9


def test_budget_refuses_before_training(site):
    site.policy(max_epsilon_per_dataset=0.01)
    runtime = site.runtime(privacy=DP)
    start = _start(runtime)
    with pytest.raises(RoundRefused, match="privacy budget") as err:
        runtime.train(start, 0, 2)
    after = {k: v for k, v in runtime.trainer.model.state_dict().items() if v.is_floating_point()}
    assert all(torch.equal(after[k], start[k]) for k in start), "a refused round trained"
    assert [r["status"] for r in _ledger(site)] == ["refused"]
    assert err.value.privacy["epsilon_spent"] == 0 and err.value.privacy["epsilon_limit"] == 0.01


def test_noise_below_site_minimum_is_refused(site):
    site.policy(min_noise_multiplier=0.5)
    runtime = site.runtime(privacy={"dp_sgd": {"noise_multiplier": 0.3, "max_grad_norm": 1.0}})
    with pytest.raises(RoundRefused, match="noise multiplier 0.3 is below"):
        runtime.train(_start(runtime), 0, 2)


def test_client_level_dp_is_booked_with_the_sites_own_noise(site):
    """Without secure aggregation the site adds all the noise itself (participants = 1) and books
    the release (sigma, q = 1, one step) in its ledger, whatever the server says the site count is."""
    site.policy(require_dp=False)
    runtime = site.runtime(privacy={"client_dp": {"clip": 0.05, "noise_multiplier": 1.5}})
    out = runtime.train(_start(runtime), 0, 2)
    (record,) = _ledger(site)
    assert (record["mechanism"], record["noise_multiplier"], record["sample_rate"], record["steps"]) == \
        ("client_dp", 1.5, 1.0, 1)
    from ai4hi_sdk.privacy.dp.accountants import RDPAccountant

    assert out.metrics["dp_epsilon"] == pytest.approx(RDPAccountant(history=[(1.5, 1.0, 1)]).get_epsilon(1e-5))


def test_client_level_dp_alone_is_refused_where_dp_sgd_is_required(site):
    site.policy()
    with pytest.raises(RoundRefused, match="patient-level DP"):
        site.runtime(privacy={"client_dp": {"clip": 1.0, "noise_multiplier": 1.0}}).admit("train")
    site.runtime(privacy={"client_dp": {"clip": 1.0, "noise_multiplier": 1.0}, **DP}, job_id="job-2").admit("train")


def test_a_failing_trainer_leaves_only_its_error_class(site, capsys):
    site.policy(require_dp=False, allow=("memory_trainer.py", "failing_trainer.py"))
    runtime = site.runtime(trainer="failing_trainer:FailingTrainer", code=("memory_trainer.py", "failing_trainer.py"))
    with pytest.raises(ValueError) as err:
        runtime.train(_start(runtime), 0, 2)
    reason = runtime.refusal_reason(err.value)
    assert reason == ("the site could not complete the task (ValueError); the details stay in the site's log")
    assert "DOE^JOHN" in capsys.readouterr().err  # the traceback is in the site's own log


def test_hostile_trainer_cannot_switch_the_gate_off(site):
    """Allowed code is trusted code (docs/security.md), but the runtime does not hand it the gate: overriding
    fit/guard, dropping DP from its spec copy, patching the gate class at import and sending around
    the runtime change nothing about what the runtime books and returns."""
    from ai4hi_sdk.site import gate as gate_module

    saved = dict(vars(gate_module.SiteGate))
    code = ("memory_trainer.py", "gate_disabling_trainer.py")
    site.policy(allow=code)
    try:
        # the job without DP is refused before its code is even imported
        with pytest.raises(RoundRefused, match="requires differential privacy"):
            site.runtime(trainer="gate_disabling_trainer:GateDisablingTrainer", code=code).train({}, 0, 2)
        assert "gate_disabling_trainer" not in sys.modules
        # the job with DP runs DP-SGD and books it, although the trainer "removed" DP and patched the gate
        runtime = site.runtime(trainer="gate_disabling_trainer:GateDisablingTrainer", code=code, privacy=DP,
                               job_id="job-2")
        out = runtime.train(_start(runtime), 0, 2)
        assert gate_module.SiteGate.check_job is not saved["check_job"], "the hostile module did not run"
        records = _ledger(site)
        assert [(r["status"], r["mechanism"]) for r in records] == [("spent", "dp_sgd")]
        assert records[0]["egress"]["sha256"] == describe_payload(out.params, out.metrics)["sha256"]
        assert out.metrics["dp_noise_multiplier"] == 1.0
    finally:
        for name, value in saved.items():
            if not name.startswith("__"):
                setattr(gate_module.SiteGate, name, value)
        sys.modules.pop("gate_disabling_trainer", None)


def test_validation_k_floor_holds_at_the_boundary_and_a_job_cannot_lower_it(site):
    """Cells of k-1 studies are suppressed, a cell of k is shown; the job asks for k = 2, the
    site's floor (10) applies."""
    site.policy(require_dp=False)
    runtime = site.runtime(model={"test_groups": [9, 9, 10]},
                           validation={"min_count": 2, "attributes": ["sex"]})
    start = _start(runtime)
    other = {k: v + 0.01 for k, v in start.items()}
    out = runtime.cross_validate(start, other)
    cells = {k.split("|")[4] for k in out.metrics if k.startswith("candidate|subgroups|sex|cells|")}
    assert cells == {"C"}, cells  # 10 studies shown; the two groups of 9 neither shown nor named
    assert out.metrics["candidate|subgroups|sex|cells|C|n"] == 10
    assert out.metrics["candidate|subgroups|sex|suppressed_cells"] == 2
    assert out.metrics["meta|k"] == 10
    # a test split under k studies is refused as a whole
    small = site.runtime(model={"test_groups": [4, 5]}, validation={"min_count": 2}, job_id="job-3")
    with pytest.raises(RoundRefused, match="fewer than k = 10"):
        small.cross_validate(start, other)


def test_allow_code_edits_the_policy_and_keeps_its_comments(tmp_path, capsys):
    from ai4hi_sdk.cli.main import main
    from ai4hi_sdk.config.site_policy import load_site_policy

    policy = tmp_path / "policy.yaml"
    policy.write_text("# my site's rules\nmax_epsilon_per_dataset: 4.0  # agreed with our DPO\nrequire_dp: true\n")
    digest = "ab" * 32
    assert main(["site", "allow-code", str(policy), digest]) == 0
    assert main(["site", "allow-code", str(policy), digest]) == 0  # idempotent
    text = policy.read_text()
    assert "# agreed with our DPO" in text and load_site_policy(policy).allowed_code_sha256 == [digest]
    assert main(["site", "allow-code", str(policy), "c" * 64]) == 0
    assert main(["site", "allow-code", str(policy), digest, "--revoke"]) == 0
    assert load_site_policy(policy).allowed_code_sha256 == ["c" * 64]
    assert main(["site", "allow-code", str(policy), "not-a-hash"]) == 2
    assert load_site_policy(policy).allowed_code_sha256 == ["c" * 64]
