"""Build a real SiteRuntime over a site workspace with a policy, and a job whose trainer is job code
(a hashed bundle of tests/site/fixtures files), without NVFlare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ai4hi_sdk.config.job_spec import JobSpec
from ai4hi_sdk.config.site_policy import SITE_POLICY
from ai4hi_sdk.site.code_bundle import bundle_sha256, pack_code
from ai4hi_sdk.site.runtime import SiteRuntime

FIXTURES = Path(__file__).parent / "fixtures"
SMALL_MODEL = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1}


def write_policy(workspace: Path, **policy: Any) -> Path:
    path = workspace / SITE_POLICY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"max_epsilon_per_dataset": 10.0, "require_secure_aggregation": False, **policy}))
    return path


class Site:
    """A site workspace and data folder under ``root``; :meth:`runtime` builds the runtime of a job."""

    def __init__(self, root: Path, name: str = "site-a"):
        self.root, self.name = root, name
        self.workspace = root / "ws" / name
        self.data = root / "data"
        (self.data / name).mkdir(parents=True, exist_ok=True)

    def policy(self, allow: tuple[str, ...] = ("memory_trainer.py",), **policy: Any) -> Path:
        if allow:
            policy.setdefault("allowed_code_sha256", [bundle_sha256(pack_code(FIXTURES, list(allow)))])
        return write_policy(self.workspace, **policy)

    def runtime(self, *, privacy: dict | None = None, trainer: str = "memory_trainer:MemoryTrainer",
                code: tuple[str, ...] = ("memory_trainer.py",), model: dict | None = None, job_id: str = "job-1",
                validation: dict | None = None, **train: Any) -> SiteRuntime:
        spec = JobSpec(name="unit", trainer=trainer, code=list(code), base_dir=str(FIXTURES),
                       model={**SMALL_MODEL, **(model or {})},
                       train={"rounds": 2, "local_epochs": 1, "batch_size": 4, "lr": 0.05, "threads": 1, **train},
                       privacy=privacy or {})
        return SiteRuntime(spec.model_dump(mode="json"), site_name=self.name, job_id=job_id,
                           workspace=self.workspace, code=pack_code(FIXTURES, list(code)), data_root=str(self.data),
                           validation=validation)


@pytest.fixture
def site(tmp_path) -> Site:
    return Site(tmp_path)
