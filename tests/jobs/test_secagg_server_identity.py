"""The server checks key signatures exactly when its workspace holds ``startup/rootCA.pem`` (a
provisioned server kit); the deployment test reads the resulting ``server_checks_signatures``."""
from __future__ import annotations

import torch

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.jobs.components.secagg_server import SecureRounds
from ai4hi_sdk.privacy.secagg.protocol.identity import make_throwaway_ca

SITES = ["hospital-1", "hospital-2", "hospital-3"]


def _rounds(workspace_root):
    spec = JobSpec(name="t", min_sites=2, privacy={"secure_aggregation": {"clip": 1.0, "max_samples_per_site": 8}})
    return SecureRounds(spec, "job-1", SITES, {"w": torch.zeros(3)}, frozenset({"train_loss"}),
                        send_and_wait=lambda **_: [], workspace_root=workspace_root, log=lambda *_: None)


def test_server_verifies_signatures_with_its_kits_root_ca(tmp_path):
    root_pem = make_throwaway_ca(SITES, {s: tmp_path / "sites" / s for s in SITES})
    (tmp_path / "server" / "startup").mkdir(parents=True)
    (tmp_path / "server" / "startup" / "rootCA.pem").write_bytes(root_pem)
    rounds = _rounds(tmp_path / "server")
    assert rounds.verify is not None
    assert rounds._round(0).verify is rounds.verify  # every round's key collection checks signatures


def test_server_without_root_ca_only_relays(tmp_path):
    assert _rounds(tmp_path).verify is None
    assert _rounds(None).verify is None
