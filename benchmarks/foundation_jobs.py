"""Wall time of the foundation jobs' tiny configurations in the NVFlare simulator (goal: each under
60 s), run as the README's lead flow. Prints one JSON object.

1. ``jobs/cxr_mae_pretrain.yaml`` as shipped (DP-SGD, target epsilon 4) on synthetic sites with
   unlabelled studies;
2. ``jobs/cxr_ffa_lora.yaml`` on the backbone it produced, in the same workspace (so each site's
   ledger composes both jobs' epsilon on its dataset);
3. the same ``ffa_lora`` job under secure aggregation, in a fresh workspace.

``simulator_s`` is the simulator's wall time (``simulate``'s ``seconds``: NVFlare start-up, every
round, final validation, shutdown); ``total_s`` adds building the job (the lead's round-0 state)
and installing policies and backbones. Sites use the SDK's default simulated policy (DP-SGD
required, epsilon <= 10 per dataset, k = 10, ``pretrain`` allowed).

Usage: ``python benchmarks/foundation_jobs.py [--sites 3] [--studies-per-site 80] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run(spec, data_root: Path, workspace: Path) -> dict:
    from ai4hi_sdk.jobs.simulate import simulate

    started = time.monotonic()
    result = simulate(spec, data_root, workspace, timeout_s=900)
    total = time.monotonic() - started
    metrics = result.metrics
    rounds = [r for r in metrics.get("rounds", []) if r.get("status") == "completed"]
    final = (metrics.get("final_validation") or {}).get("weighted_mean") or {}
    epsilon = {site: max(d["epsilon_spent"] for d in p["datasets"].values())
               for site, p in (metrics.get("privacy") or {}).items() if p.get("datasets")}
    return {"job": spec.name, "status": metrics.get("status"), "reason": metrics.get("reason"),
            "simulator_s": round(result.seconds, 1), "total_s": round(total, 1), "rounds": len(rounds),
            "sites": metrics.get("sites"), "refused": metrics.get("refused"),
            "upload_percent_of_model": (metrics.get("exchange") or {}).get("percent"),
            "upload_values_per_round": (metrics.get("exchange") or {}).get("elements"),
            "final_val_loss": final.get("val_loss"), "final_val_auroc": final.get("val_auroc"),
            "epsilon_spent_per_site_dataset": epsilon,
            "secure_aggregation": "secure_aggregation" in metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--studies-per-site", type=int, default=80)
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "foundation_jobs")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from ai4hi_sdk.data.synth import synth_consortium
    from ai4hi_sdk.jobs.spec import load_checked_job_spec

    shutil.rmtree(args.out, ignore_errors=True)
    data_root = args.out / "data"
    synth_consortium(data_root, sites=args.sites, studies_per_site=args.studies_per_site, seed=0,
                     labelled_fraction=0.3, finding="subtle")
    pretrain = load_checked_job_spec(REPO / "jobs" / "cxr_mae_pretrain.yaml")
    runs = [run(pretrain, data_root, args.out / "ws")]
    backbone = args.out / "backbone"
    shutil.copytree(args.out / "ws" / "result" / "backbone", backbone)
    adapt = load_checked_job_spec(REPO / "jobs" / "cxr_ffa_lora.yaml")
    adapt = adapt.model_copy(update={"model": {**adapt.model, "checkpoint": str(backbone)}})
    runs.append(run(adapt, data_root, args.out / "ws"))
    secure = adapt.model_copy(update={"name": "cxr-ffa-lora-secagg", "privacy": adapt.privacy.model_copy(
        update={"secure_aggregation": {"clip": 1.0, "max_samples_per_site": 100}})})
    secure = type(adapt).model_validate({**secure.model_dump(), "base_dir": adapt.base_dir})
    runs.append(run(secure, data_root, args.out / "ws-secure"))
    print(json.dumps({
        "benchmark": "foundation_jobs",
        "goal": "each tiny foundation job finishes in the simulator in under 60 s",
        "sites": args.sites, "studies_per_site": args.studies_per_site,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                    "cuda": torch.cuda.is_available()},
        "runs": runs,
        "all_under_60_s": all(r["simulator_s"] < 60 and r["status"] == "completed" for r in runs),
    }, indent=2))


if __name__ == "__main__":
    main()
