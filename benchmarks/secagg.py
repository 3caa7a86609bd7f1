"""Secure aggregation cost: primitives and the pure protocol against an active server; prints JSON.

    python benchmarks/secagg.py [--quick] [--skip-primitives] [--skip-protocol] [--sites 3,8,16] [--params N]
                                [--identity rsa|ed25519] [--clock thread|wall] [--simulator [--tiny-sites 3,8]
                                [--long-sites 8 --long-epochs E --long-studies S]]

* ``primitives``: ``benchmarks/secagg_primitives.py`` (keystream vs masking per neighbour on one
  pinned core, the CPU's AES features, quantisation), run in a subprocess.
* ``protocol``: one in-process round of the pure protocol (``SecAggClient`` x n, ``SecAggRound``)
  for each site count, ``--params`` float32 parameters, identities like NVFlare's (RSA-2048 site
  keys under one root CA; ``--identity ed25519`` for the simulator's throwaway CA), default
  threshold ``floor(2n/3) + 1``: seconds per step at one site (mean) and at the server, bytes per
  message, with no dropout and with one site dropped after the share phase. ``added_by_active_security``
  isolates what the active-adversary protocol adds: the consistency round (each site signs the
  survivor set; the server and every site verify >= t signatures), the share checks (self-mask
  secret vs its signed commitment, mask key vs its signed public key) and the bound check of the sum.
  CPU time of the one thread by default (``--clock thread``: other jobs on the machine do not count).
* ``simulator`` (``--simulator``): whole jobs in the real NVFlare simulator, plain vs secure, DP
  off in both, the demo job's DenseNet on synthetic sites: per-round cost at 3 and 8 sites with tiny
  local work (``--tiny-*``: one epoch of a few studies), and a whole job at 8 sites with ~20 s of
  local work per round (``--long-*``). Expensive on a shared machine (~15 min); not run by default.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai4hi_sdk.privacy.secagg.primitives import masking  # noqa: E402
from ai4hi_sdk.privacy.secagg.protocol import (PayloadCodec, SecAggClient, SecAggConfig, SecAggRound,  # noqa: E402
                                               server as server_module)
from ai4hi_sdk.privacy.secagg.protocol.identity import CertificateVerifier, SiteIdentity  # noqa: E402

CLOCK = time.thread_time


def bench_primitives(quick: bool) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "secagg_primitives.py"), "--clock", "thread"] + (
        ["--quick"] if quick else [])
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def identities(sites: list[str], kind: str) -> tuple[dict[str, SiteIdentity], bytes]:
    """In-memory site identities under one root CA (RSA-2048 as ``nvflare provision`` makes them)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.x509.oid import NameOID

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
            else ed25519.Ed25519PrivateKey.generate()

    algo = hashes.SHA256() if kind == "rsa" else None
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = key()
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name).public_key(ca_key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, algo))
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    out = {}
    for i, site in enumerate(sites):
        k = key()
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
                .issuer_name(root_name).public_key(k.public_key()).serial_number(10 + i)
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .sign(ca_key, algo))
        out[site] = SiteIdentity(site, k, cert.public_bytes(serialization.Encoding.PEM), root_pem)
    return out, root_pem


class Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    def __call__(self, name, fn):
        start = CLOCK()
        value = fn()
        self.t[name] = self.t.get(name, 0.0) + CLOCK() - start
        return value

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = CLOCK()
            try:
                return fn(*args, **kwargs)
            finally:
                self.t[name] = self.t.get(name, 0.0) + CLOCK() - start
        return timed


def bench_protocol(n_sites: int, n_params: int, drop: bool, idents: dict, root: bytes) -> dict:
    """One round with ``n_sites`` sites (one dropped after sharing if ``drop``); seconds and bytes."""
    sites = sorted(idents)[:n_sites]
    config = SecAggConfig()
    verifier = CertificateVerifier(root)
    t = Timer()
    clients = {s: SecAggClient(s, "bench", config, sign=idents[s].sign, certificate=idents[s].certificate_pem,
                               verify=verifier.check, participants=sites) for s in sites}
    for c in clients.values():  # the consistency signatures' check inside unmask, timed apart
        c._verified_signers = t.wrap("site_verify_consistency_signatures", c._verified_signers)
    codec = PayloadCodec((("w", (n_params,)),), n_sites=n_sites, clip=1.0, max_weight=10_000)
    rng = np.random.default_rng(0)
    delta = {"w": rng.normal(0, 0.01, n_params).astype(np.float32)}
    srv = SecAggRound("bench", 0, config, codec.length, verify=verifier.check, participants=frozenset(sites))
    checks = (server_module.matches_commitment, server_module._opens)
    server_module.matches_commitment = t.wrap("server_share_checks", checks[0])
    server_module._opens = t.wrap("server_share_checks", checks[1])
    try:
        ads = {s: t("site_advertise", lambda s=s: clients[s].advertise(0)) for s in sites}
        relay = t("server_collect_adverts", lambda: srv.collect_adverts(ads))
        shares = {s: t("site_share_keys", lambda s=s: clients[s].share_keys(0, relay)) for s in sites}
        inbox = t("server_route_shares", lambda: srv.collect_shares(shares))
        dropped = sites[1] if drop else None
        masked = {}
        for s in sites:
            if s == dropped:
                continue
            vec = t("site_quantise", lambda: codec.encode(delta, 1000, {}))
            masked[s] = t("site_mask", lambda s=s, vec=vec: clients[s].mask(0, inbox[s], vec))
        t("server_sum", lambda: srv.collect_inputs(masked))
        proposal = t("server_consistency", lambda: srv.consistency_request())
        sigs = {s: t("site_consistency", lambda s=s: clients[s].consistency(0, proposal)) for s in masked}
        request = t("server_consistency", lambda: srv.collect_consistency(sigs))
        responses = {s: t("site_unmask", lambda s=s: clients[s].unmask(0, request)) for s in masked}
        t("server_unmask", lambda: srv.finish(responses))
        t("server_decode", lambda: srv.decode(codec))
        t("server_sum_bounds_check", lambda: codec.sum_problems(codec.decode(srv.total, len(masked)), len(masked)))
    finally:
        server_module.matches_commitment, server_module._opens = checks
    n_in = len(masked)
    per_site = {k: v / (n_sites if k in ("site_advertise", "site_share_keys") else n_in)
                for k, v in t.t.items() if k.startswith("site_")}
    srv_t = {k: v for k, v in t.t.items() if k.startswith("server_")}
    site_total = sum(v for k, v in per_site.items() if k != "site_verify_consistency_signatures")
    server_total = sum(v for k, v in srv_t.items() if k not in ("server_share_checks", "server_sum_bounds_check"))
    added_site = per_site["site_consistency"] + per_site["site_verify_consistency_signatures"]
    added_server = srv_t["server_consistency"] + srv_t.get("server_share_checks", 0.0) + srv_t["server_sum_bounds_check"]
    one = sites[0]
    return {
        "sites": n_sites, "params": n_params, "dropped": dropped, "threshold": srv.threshold,
        "seconds_per_site": {k: round(v, 5) for k, v in per_site.items()},
        "seconds_server": {k: round(v, 5) for k, v in srv_t.items()},
        "site_total_s": round(site_total, 4), "server_total_s": round(server_total, 4),
        "added_by_active_security": {
            "site_s": round(added_site, 5), "server_s": round(added_server, 5),
            "fraction_of_site_protocol_cost": round(added_site / site_total, 4),
            "fraction_of_server_protocol_cost": round(added_server / server_total, 4),
            "extra_exchanges_per_round": 1,
        },
        "bytes_sent_by_one_site": {"advertise": len(ads[one]), "share_keys": len(shares[one]),
                                   "masked_input": len(masked[one]), "consistency_signature": len(sigs[one]),
                                   "unmask_response": len(responses[one])},
        "bytes_sent_to_one_site": {"relayed_adverts": sum(map(len, relay)),
                                   "shares_inbox": sum(map(len, inbox[one].values())),
                                   "consistency_request": len(proposal), "unmask_request": len(request)},
    }


def _steady(rounds: list[dict]) -> float:
    """Median seconds of the completed rounds after the first (which pays the sites' start-up)."""
    done = [r["seconds"] for r in rounds if r.get("status") == "completed"]
    return float(np.median(done[1:])) if len(done) > 1 else float(done[0])


def _local_seconds(metrics: dict) -> float:
    """Median over rounds >= 1 of the sites' mean local work per round (training + evaluation):
    clear per-site metrics in plain FedAvg, the consortium mean under secure aggregation."""
    local = []
    for rnd in metrics["rounds"]:
        if rnd.get("status") != "completed":
            continue
        per_site = [m["local_seconds"] for m in rnd.get("sites", {}).values() if m.get("local_seconds")]
        local.append(float(np.mean(per_site)) if per_site else
                     float(rnd.get("consortium_metrics", {}).get("local_seconds", float("nan"))))
    value = float(np.median(local[1:] or local))
    return value if np.isfinite(value) else None  # plain FedAvg keeps local statistics at the site


def bench_simulator(n_sites: int, rounds: int, studies: int, local_epochs: int, out: Path,
                    pool: int | None = None) -> dict:  # pragma: no cover
    """One whole simulated job, plain vs secure aggregation (DP off in both: this measures secure
    aggregation alone), ``n_sites`` synthetic sites, the demo job's DenseNet: steady seconds per
    round, the sites' local work per round, wall time and the job's one-off costs."""
    from ai4hi_sdk.config.job_spec import JobSpec, load_job_spec
    from ai4hi_sdk.data.synth import synth_consortium
    from ai4hi_sdk.jobs.simulate import simulate

    pool = max(pool or n_sites, n_sites)  # sites synthesised (runs with fewer use the first ones)
    data = out / f"data-{pool}x{studies}"
    if not data.exists():
        synth_consortium(data, sites=pool, task="classification", studies_per_site=studies, seed=0)
    sites = sorted(p.name for p in data.iterdir() if p.is_dir())[:n_sites]
    if len(sites) < n_sites:
        raise SystemExit(f"{data} holds {len(sites)} sites, {n_sites} asked: remove it to regenerate")
    base = load_job_spec(REPO / "jobs" / "cxr_classification.yaml")
    policy = REPO / "tests" / "jobs" / "fixtures" / "policy_without_dp.yaml"
    results: dict = {"sites": n_sites, "rounds": rounds, "studies_per_site": studies, "local_epochs": local_epochs}
    for name, secure in (("plain", None), ("secure", {"clip": 1.0, "max_samples_per_site": 10_000})):
        raw = base.model_dump()
        raw["privacy"] = {"secure_aggregation": secure}
        raw["min_sites"] = 2
        raw["train"].update(rounds=rounds, local_epochs=local_epochs)
        started = time.monotonic()
        result = simulate(JobSpec.model_validate(raw), data, out / f"{name}-{n_sites}-{local_epochs}",
                          sites=sites, timeout_s=3600, site_policy=policy)
        wall = time.monotonic() - started
        metrics = result.metrics
        if metrics.get("status") != "completed":
            raise SystemExit(f"{name} run at {n_sites} sites did not complete: {metrics.get('reason')}")
        seconds = [r["seconds"] for r in metrics["rounds"]]
        results[name] = {"wall_s": round(wall, 2), "steady_round_s": round(_steady(metrics["rounds"]), 3),
                         "round_seconds": seconds, "local_seconds_per_round": _local_seconds(metrics),
                         "outside_rounds_s": round(wall - sum(seconds), 2)}
        if secure:
            results[name]["threshold"] = metrics["rounds"][-1].get("threshold")
    plain, secure = results["plain"], results["secure"]
    results["added_seconds_per_round"] = round(secure["steady_round_s"] - plain["steady_round_s"], 3)
    results["round_time_ratio"] = round(secure["steady_round_s"] / plain["steady_round_s"], 3)
    results["wall_time_ratio"] = round(secure["wall_s"] / plain["wall_s"], 3)
    return results


def main() -> None:
    global CLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--skip-primitives", action="store_true")
    ap.add_argument("--sites", default="3,8,16", help="site counts of the protocol benchmark")
    ap.add_argument("--params", type=int, default=None, help="parameters per update (default 1M; --quick 100k)")
    ap.add_argument("--identity", default="rsa", choices=("rsa", "ed25519"))
    ap.add_argument("--clock", default="thread", choices=("thread", "wall"))
    ap.add_argument("--simulator", action="store_true", help="also run whole simulated jobs, plain vs secure")
    ap.add_argument("--tiny-sites", default="3,8", help="site counts of the tiny-local-work simulator runs")
    ap.add_argument("--tiny-rounds", type=int, default=4)
    ap.add_argument("--tiny-studies", type=int, default=24, help="studies per site of the tiny runs (1 epoch)")
    ap.add_argument("--long-sites", type=int, default=8, help="sites of the long-local-work run (0: skip it)")
    ap.add_argument("--long-rounds", type=int, default=3)
    ap.add_argument("--long-studies", type=int, default=120, help="studies per site of the long run")
    ap.add_argument("--long-epochs", type=int, default=18, help="local epochs of the long run (~20 s rounds)")
    ap.add_argument("--skip-protocol", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "secagg")
    args = ap.parse_args()
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter
    n = args.params or (100_000 if args.quick else 1_000_000)
    counts = [int(x) for x in args.sites.split(",")]
    report: dict = {"load_average_start": os.getloadavg(), "clock": args.clock, "identity": args.identity,
                    "masking_impl": masking.masking_impl()}
    if not args.skip_primitives:
        report["primitives"] = bench_primitives(args.quick)
    idents, root = identities([f"hospital-{i:02d}" for i in range(1, max(counts) + 1)], args.identity)
    if not args.skip_protocol:
        report["protocol"] = [bench_protocol(k, n, drop, idents, root) for k in counts for drop in (False, True)
                              if not (drop and SecAggConfig().effective_threshold(k) > k - 1)]
    if args.simulator:
        tiny = [int(k) for k in args.tiny_sites.split(",") if k]
        runs = [bench_simulator(k, args.tiny_rounds, args.tiny_studies, 1, args.out, pool=max(tiny)) for k in tiny]
        if args.long_sites:
            runs.append(bench_simulator(args.long_sites, args.long_rounds, args.long_studies, args.long_epochs,
                                        args.out))
        report["simulator"] = runs
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
