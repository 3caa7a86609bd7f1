"""Secure aggregation cost: primitives and the pure protocol against an active server; prints JSON.

    python benchmarks/secagg.py [--quick] [--skip-primitives] [--sites 3,8,16] [--params N]
                                [--identity rsa|ed25519] [--clock thread|wall] [--simulator ...]

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
* ``simulator`` (``--simulator``): the real NVFlare simulator, plain vs secure job. Needs the
  NVFlare glue rewired to this protocol (issue 13 phase 2); not run by default.
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


def bench_simulator(rounds: int, studies: int, local_epochs: int, out: Path) -> dict:  # pragma: no cover
    """Whole simulated job, plain vs secure (needs the phase-2 NVFlare glue; see the docstring)."""
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
        raw["privacy"] = {"secure_aggregation": secure}
        raw["min_sites"] = 2
        raw["train"].update(rounds=rounds, local_epochs=local_epochs)
        started = time.monotonic()
        result = simulate(JobSpec.model_validate(raw), data, out / name, timeout_s=3600, site_policy=policy)
        if result.metrics.get("status") != "completed":
            raise SystemExit(f"{name} run did not complete: {result.metrics.get('reason')}")
        done = [r["seconds"] for r in result.metrics["rounds"] if r.get("status") == "completed"]
        results[name] = {"wall_s": time.monotonic() - started, "steady_round_s": float(np.median(done[1:] or done))}
    results["round_time_ratio"] = results["secure"]["steady_round_s"] / results["plain"]["steady_round_s"]
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
    ap.add_argument("--simulator", action="store_true", help="also run the whole simulator (phase-2 glue)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--studies-per-site", type=int, default=200)
    ap.add_argument("--local-epochs", type=int, default=2)
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
    report["protocol"] = [bench_protocol(k, n, drop, idents, root) for k in counts for drop in (False, True)
                          if not (drop and SecAggConfig().effective_threshold(k) > k - 1)]
    if args.simulator:
        report["simulator"] = bench_simulator(args.rounds, args.studies_per_site, args.local_epochs, args.out)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
