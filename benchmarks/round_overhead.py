"""Simulator wall time per round for the demo job with 2 and 3 sites, and how much of a round is
local training versus framework overhead. Prints one JSON object.

How it is measured:
* ``round_s``: server-side time of one training round (model sent -> all results aggregated),
  from the controller's round records;
* ``local_s``: the slowest site's ``local_seconds`` that round (sites work in parallel, so the
  slowest is the critical path; it includes evaluation of the received and the trained model);
* ``overhead_s = round_s - local_s``: task dispatch, serialisation, transfer, aggregation;
* ``startup_and_teardown_s``: wall time of the whole simulation minus the training rounds
  (client spawn, job deployment, final validation, shutdown).
Round 0 also pays one-off site start-up (imports, DICOM decoding), so steady state = rounds >= 1.

Usage: ``python benchmarks/round_overhead.py [--rounds 4] [--studies-per-site 60] [--no-dp] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run_one(spec, data_root: Path, workspace: Path, n_sites: int, site_policy: Path | None) -> dict:
    import shutil

    from ai4hi_sdk.jobs.simulate import simulate

    shutil.rmtree(workspace, ignore_errors=True)  # fresh sites: a fresh privacy budget each run
    result = simulate(spec, data_root, workspace, n_sites=n_sites, timeout_s=1200, site_policy=site_policy)
    if not result.ok:
        raise SystemExit(f"simulation with {n_sites} sites failed: {result.metrics.get('reason')}")
    rounds = []
    for record in result.metrics["rounds"]:
        local = max(m.get("local_seconds", 0.0) for m in record["sites"].values())
        train = max(m.get("train_seconds", 0.0) for m in record["sites"].values())
        rounds.append({"round": record["round"], "round_s": record["seconds"], "local_s": round(local, 3),
                       "train_s": round(train, 3), "overhead_s": round(record["seconds"] - local, 3)})
    steady = rounds[1:] or rounds
    mean_round = statistics.mean(r["round_s"] for r in steady)
    mean_local = statistics.mean(r["local_s"] for r in steady)
    return {
        "sites": n_sites,
        "rounds": len(rounds),
        "wall_s": round(result.seconds, 2),
        "startup_and_teardown_s": round(result.seconds - sum(r["round_s"] for r in rounds), 2),
        "first_round_s": rounds[0]["round_s"],
        "steady_round_s": round(mean_round, 3),
        "steady_local_s": round(mean_local, 3),
        "steady_overhead_s": round(mean_round - mean_local, 3),
        "local_share": round(mean_local / mean_round, 3),
        "overhead_share": round(1 - mean_local / mean_round, 3),
        "per_round": rounds,
        "final_val_auroc": result.metrics.get("final_validation", {}).get("weighted_mean", {}).get("val_auroc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--studies-per-site", type=int, default=60)
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "round_overhead")
    parser.add_argument("--no-dp", action="store_true",
                        help="plain FedAvg (the job's privacy section removed; sites explicitly allow it)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from ai4hi_sdk.config.job_spec import load_job_spec
    from ai4hi_sdk.data.synth import synth_consortium

    spec = load_job_spec(REPO / "jobs" / "cxr_classification.yaml").with_overrides(rounds=args.rounds)
    policy = None
    if args.no_dp:
        spec = spec.model_copy(update={"privacy": type(spec.privacy)()})
        policy = args.out / "policy_without_dp.yaml"
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text("max_epsilon_per_dataset: 10.0\nrequire_dp: false\nrequire_secure_aggregation: false\n")
    data_root = args.out / "data"
    synth_consortium(data_root, sites=3, studies_per_site=args.studies_per_site, seed=0, overwrite=True)
    runs = [run_one(spec, data_root, args.out / f"ws_{n}", n, policy) for n in (2, 3)]
    print(json.dumps({
        "benchmark": "round_overhead",
        "job": spec.name,
        "dp_sgd": spec.privacy.dp_sgd is not None,
        "studies_per_site": args.studies_per_site,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                    "cuda": torch.cuda.is_available()},
        "runs": runs,
    }, indent=2))


if __name__ == "__main__":
    main()
