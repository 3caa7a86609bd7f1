"""Secure aggregation cost: primitives, protocol steps, and whole simulated rounds; prints JSON.

    python benchmarks/secagg.py [--quick] [--skip-primitives] [--skip-simulator] [--clock wall|thread]
                                [--params N] [--rounds R] [--studies-per-site S] [--local-epochs E]

* ``primitives``: ``benchmarks/secagg_primitives.py`` (masking elements/s per neighbour at 10M and
  100M, quantisation elements/s, upload size vs fp32, Flower-style masking), run in a subprocess.
* ``protocol``: one in-process SecAgg+ round, 3 sites (full graph), ``--params`` float32 parameters:
  seconds per step at one site and at the server, the bytes each site uploads, and the same with
  one site dropped after the share phase (its mask key reconstructed from Shamir shares).
* ``simulator``: the real NVFlare simulator, 3 synthetic sites, the demo's DenseNet, DP off, the
  same job with and without ``privacy.secure_aggregation``: steady seconds per round, the seconds
  secure aggregation adds per round (its unmask round trip and the masking), the one-off key/share
  setup, and the wall-time ratio, next to the sites' local training seconds per round.

Other jobs on the machine slow every figure down; the load average is reported with them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai4hi_sdk.privacy.secagg.protocol import PayloadCodec, SecAggClient, SecAggConfig, SecAggRound  # noqa: E402
from ai4hi_sdk.privacy.secagg.protocol.identity import (CertificateVerifier, SiteIdentity,  # noqa: E402
                                                        make_throwaway_ca)


def bench_primitives(quick: bool, clock: str = "wall") -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "secagg_primitives.py"), "--clock", clock] + (
        ["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def bench_protocol(n_params: int, drop: str | None) -> dict:
    """One round, 3 sites, timings per step (seconds, wall clock)."""
    sites = ["hospital-1", "hospital-2", "hospital-3"]
    config = SecAggConfig()
    with tempfile.TemporaryDirectory() as tmp:
        make_throwaway_ca(sites, {s: Path(tmp) / s for s in sites})
        clients = {}
        for s in sites:
            ident = SiteIdentity.load(Path(tmp) / s, s)
            clients[s] = SecAggClient(s, "bench", config, sign=ident.sign, certificate=ident.certificate_pem,
                                      verify=CertificateVerifier(ident.root_ca_pem).check)
    codec = PayloadCodec((("w", (n_params,)),), n_sites=3, clip=1.0, max_weight=10_000)
    rng = np.random.default_rng(0)
    deltas = {s: {"w": rng.normal(0, 0.01, n_params).astype(np.float32)} for s in sites}
    t: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        t[name] = t.get(name, 0.0) + time.perf_counter() - start
        return value

    srv = SecAggRound("bench", 0, config, codec.length)
    ads = {s: timed("site_advertise", lambda s=s: clients[s].advertise(0)) for s in sites}
    relay = timed("server_collect_adverts", lambda: srv.collect_adverts(ads))
    shares = {s: timed("site_share_keys", lambda s=s: clients[s].share_keys(0, relay)) for s in sites}
    inbox = timed("server_route_shares", lambda: srv.collect_shares(shares))
    masked, upload = {}, 0
    for s in sites:
        if s == drop:
            continue
        vec = timed("site_quantise", lambda s=s: codec.encode(deltas[s], 1000, {}))
        masked[s] = timed("site_mask", lambda s=s, vec=vec: clients[s].mask(0, inbox[s], vec))
        upload = len(masked[s])
    timed("server_sum", lambda: srv.collect_inputs(masked))
    request = srv.unmask_request()
    responses = {s: timed("site_unmask", lambda s=s: clients[s].unmask(0, request)) for s in masked}
    total, survivors = timed("server_unmask", lambda: srv.finish(responses))
    timed("server_dequantise", lambda: codec.decode(total, len(survivors)))
    per_site = {k: v / (len(sites) if k in ("site_advertise", "site_share_keys") else len(masked))
                for k, v in t.items() if k.startswith("site_")}
    return {"params": n_params, "dropped": drop, "seconds_per_site": per_site,
            "seconds_server": {k: v for k, v in t.items() if k.startswith("server_")},
            "upload_bytes_per_site": upload, "upload_vs_fp32": upload / (4 * n_params)}


def _steady(rounds: list[dict]) -> float:
    done = [r["seconds"] for r in rounds if r.get("status") == "completed"]
    return float(np.median(done[1:])) if len(done) > 1 else float(done[0])


def bench_simulator(rounds: int, studies: int, local_epochs: int, out: Path) -> dict:
    from ai4hi_sdk.config.job_spec import JobSpec, load_job_spec
    from ai4hi_sdk.data.synth import synth_consortium
    from ai4hi_sdk.jobs.simulate import simulate

    data = out / "data"
    if not data.exists():
        synth_consortium(data, sites=3, task="classification", studies_per_site=studies, seed=0)
    base = load_job_spec(REPO / "jobs" / "cxr_classification.yaml")
    policy = REPO / "tests" / "jobs" / "fixtures" / "policy_without_dp.yaml"
    results = {}
    for name, secure in (("plain", None), ("secure", {"clip": 1.0, "max_samples_per_site": 10_000})):
        raw = base.model_dump()
        raw["privacy"] = {"secure_aggregation": secure}  # DP off in both runs: this measures secagg alone
        raw["min_sites"] = 2
        raw["train"].update(rounds=rounds, local_epochs=local_epochs)
        spec = JobSpec.model_validate(raw)
        started = time.monotonic()
        result = simulate(spec, data, out / name, timeout_s=3600, site_policy=policy)
        wall = time.monotonic() - started
        metrics = result.metrics
        if metrics.get("status") != "completed":
            raise SystemExit(f"{name} run did not complete: {metrics.get('reason')}")
        local = []
        for rnd in metrics["rounds"]:
            per_site = [m.get("local_seconds") for m in rnd["sites"].values() if m.get("local_seconds")]
            local.append(float(np.mean(per_site)) if per_site else rnd.get("consortium_metrics", {}).get(
                "local_seconds", float("nan")))
        results[name] = {"steady_round_s": _steady(metrics["rounds"]), "wall_s": wall,
                         "local_seconds_per_round": float(np.median(local[1:] or local)),
                         "round_seconds": [r["seconds"] for r in metrics["rounds"]]}
    plain, secure = results["plain"], results["secure"]
    results["added_seconds_per_round"] = secure["steady_round_s"] - plain["steady_round_s"]
    results["round_time_ratio"] = secure["steady_round_s"] / plain["steady_round_s"]
    # setup (keys + shares before round 0) and everything else once per job
    results["added_seconds_per_job_other_than_rounds"] = (
        (secure["wall_s"] - sum(secure["round_seconds"])) - (plain["wall_s"] - sum(plain["round_seconds"])))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--skip-primitives", action="store_true")
    ap.add_argument("--skip-simulator", action="store_true")
    ap.add_argument("--clock", default="wall", choices=("wall", "thread"),
                    help="clock of the primitives benchmark: wall, or the thread's CPU time")
    ap.add_argument("--params", type=int, default=None, help="parameters in the protocol benchmark (default 7M)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--studies-per-site", type=int, default=200)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "secagg")
    args = ap.parse_args()
    n = args.params or (1_000_000 if args.quick else 7_000_000)  # ~DenseNet-121
    report: dict = {"load_average_start": os.getloadavg()}
    if not args.skip_primitives:
        report["primitives"] = bench_primitives(args.quick, args.clock)
    report["protocol"] = [bench_protocol(n, None), bench_protocol(n, "hospital-2")]
    if not args.skip_simulator:
        report["simulator"] = bench_simulator(args.rounds if not args.quick else 2, args.studies_per_site,
                                              args.local_epochs, args.out)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
