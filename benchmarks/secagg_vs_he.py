"""Our secure aggregation (SecAgg+) vs NVFlare's homomorphic-encryption (CKKS) recipe, same models; prints JSON.

    python benchmarks/secagg_vs_he.py [--quick] [--models demo,flat7m,densenet121] [--poc]

Needs ``tenseal`` (``pip install -e '.[he]'``; 0.3.18 has a wheel for CPython 3.11 / x86-64 Linux).

**HE side** -- NVFlare 2.9's own classes, run in-process, one round, 3 sites:

* keys: ``nvflare.lighter.impl.he.HEBuilder`` with its defaults (CKKS, poly_modulus_degree 8192,
  coeff_mod_bit_sizes [60, 40, 40], global scale 2^40, symmetric encryption, relinearisation keys);
  ``client_context.tenseal`` (secret key) for the sites, ``server_context.tenseal`` (no secret key)
  for the server, as provisioning writes them.
* site: ``HEModelEncryptor.encryption`` (what ``FedAvgRecipeWithHE`` puts on the train result:
  every layer weighted by the site's local-iteration count, then ``ts.ckks_vector`` per layer, i.e.
  ceil(n / 4096) ciphertexts per layer), then the result as NVFlare sends it: ``fobs.dumps`` of
  the Shareable. NVFlare's FOBS decomposer for ``CKKSVector`` ships ``(vector.serialize(),
  vector.context().serialize())`` -- the context with its relinearisation keys (~0.66 MB) goes
  along with **every layer**. Both sizes are reported: ``upload_bytes_wire`` (that) and
  ``upload_bytes_ciphertexts`` (the ciphertexts alone).
* server: ``fobs.loads`` of each result, ``HEInTimeAccumulateWeightedAggregator`` (accept x3,
  aggregate: sum of the ciphertexts, times 1/sum of weights), ``HEModelShareableGenerator``
  (shareable -> learnable -> shareable: the encrypted global model, serialised per layer) and
  ``fobs.dumps`` of what goes back to the sites. The server never decrypts.
* site, next round: ``fobs.loads`` + ``HEModelDecryptor.decryption`` with the secret key.
  The global model travels encrypted both ways (``download_bytes``); ours sends it in the clear.

**Our side** -- ``ai4hi_sdk.privacy.secagg.protocol`` as ``benchmarks/secagg.py`` drives it: per site
fresh keys (advertise), sealed Shamir shares, ``PayloadCodec.encode`` (clip, 32-bit fixed point,
weight folded in) + ``SecAggClient.mask``, the unmask response; at the server relay, sum, unmask,
decode. Every message a site sends in the round is counted in its upload.

Both sides get the same three float32 updates (N(0, 0.01) per element, weights 100 / 200 / 300
training examples = local iterations for HE) and are compared with the float64 weighted mean.
Sites run one after another in this process; ``per_round_s`` = one site's work before its upload
+ the server + one site's work after the download (sites work in parallel in a deployment;
transfer time is not included, the bytes are). Models: ``demo`` (the demo job's DenseNet,
``ClassificationTrainer(...).initial_state()``: 49 tensors, 11,362 parameters), ``flat7m`` (one
7,000,000-element tensor, DenseNet-121-sized) and ``densenet121`` (MONAI DenseNet-121's 606 float
tensors, 6,968,206 parameters: the per-layer padding to 4096 slots, and the per-layer context on
the wire, of a real layer structure; opt-in with ``--models densenet121``: every CKKSVector that
FOBS deserialises carries its own context, ~6 MiB in memory, so the server holds ~6 MiB x 606 layers
per result in flight -- our in-process run of all three passed 16 GiB and was stopped). tenseal encrypts the chunks of one
large vector on all cores
(its default ``n_threads``); our masking runs on one.

``--poc`` (``benchmarks/he_poc.py``, in its own process, ~2.5 min): a real NVFlare POC deployment,
all under a fresh temporary directory, loopback only -- ``nvflare poc prepare --he`` with a 3-site
project (server participant named ``localhost`` so NVFlare binds 127.0.0.1), server and clients
started as their own process groups and stopped by those ids, then ``FedAvgRecipeWithHE`` and, for
the baseline, the plain ``FedAvgRecipe`` with the same model (the demo's DenseNet *with BatchNorm
buffers*, 12,034 encrypted values) and the same Client-API script (adds N(0, 0.01) noise, no
training), 3 rounds each, submitted with ``ProdEnv``. ``poc_attempt.jobs.*.round_seconds_start_to_start``
(from the server log; round 0 includes the job's start-up) and the HE filters' own encrypt/decrypt
seconds from the site logs. This works with NVFlare 2.9.0 + tenseal 0.3.18; measured on 2 cores,
with other jobs running: HE rounds 19.9 / 15.6 / 14.7 s vs plain 4.5 / 2.5 / 2.5 s. Our secure
aggregation in a real deployment is in ``tests/deploy``; ``benchmarks/secagg.py`` has its simulator
rounds (same per-round time as plain FedAvg within noise).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
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

SITES = ("hospital-1", "hospital-2", "hospital-3")
WEIGHTS = {"hospital-1": 100, "hospital-2": 200, "hospital-3": 300}


# ----------------------------------------------------------------------------------------------- models

def model_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    if name == "demo":
        from ai4hi_sdk.config.job_spec import load_job_spec
        from ai4hi_sdk.trainers.classification import ClassificationTrainer
        state = ClassificationTrainer(load_job_spec(REPO / "jobs" / "cxr_classification.yaml"), site_dir=None,
                                      site_name="s", device="cpu").initial_state()
        return [(k, tuple(v.shape)) for k, v in state.items() if v.is_floating_point()]
    if name == "flat7m":
        return [("w", (7_000_000,))]
    if name == "densenet121":
        from monai.networks.nets import DenseNet121
        state = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).state_dict()
        return [(k, tuple(v.shape)) for k, v in state.items() if v.is_floating_point()]
    if name.startswith("flat"):  # e.g. flat100k (quick runs)
        return [("w", (int(float(name[4:].replace("k", "e3").replace("m", "e6"))),))]
    raise SystemExit(f"unknown model {name}")


def make_updates(shapes, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {s: {k: rng.normal(0, 0.01, shape).astype(np.float32) for k, shape in shapes} for s in SITES}


def reference_mean(updates) -> dict[str, np.ndarray]:
    total = float(sum(WEIGHTS.values()))
    names = updates[SITES[0]].keys()
    return {k: sum(updates[s][k].astype(np.float64) * WEIGHTS[s] for s in SITES) / total for k in names}


def errors(result: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict:
    diff = np.concatenate([np.asarray(result[k], dtype=np.float64).ravel() - ref[k].ravel() for k in ref])
    scale = np.concatenate([ref[k].ravel() for k in ref])
    return {"max_abs_error": float(np.max(np.abs(diff))), "rms_error": float(np.sqrt(np.mean(diff ** 2))),
            "rms_of_mean": float(np.sqrt(np.mean(scale ** 2)))}


class Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    def __call__(self, name, fn):
        start = time.perf_counter()
        value = fn()
        self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - start
        return value


# ----------------------------------------------------------------------------------------------- NVFlare HE

def he_contexts() -> dict:
    """HEBuilder defaults, as ``nvflare provision`` / ``nvflare poc prepare --he`` writes them."""
    import tenseal as ts
    from nvflare.lighter.impl.he import HEBuilder

    start = time.perf_counter()
    builder = HEBuilder()
    builder.initialize(None, None)  # (project, ctx) are unused by initialize
    client_bytes = builder.get_serialized_context(is_client=True)
    server_bytes = builder.get_serialized_context(is_client=False)
    seconds = time.perf_counter() - start
    return {"client": ts.context_from(client_bytes), "server": ts.context_from(server_bytes),
            "params": {"scheme": "CKKS", "poly_modulus_degree": builder.poly_modulus_degree,
                       "coeff_mod_bit_sizes": builder.coeff_mod_bit_sizes, "scale_bits": builder.scale_bits,
                       "slots_per_ciphertext": builder.poly_modulus_degree // 2},
            "provision_seconds": seconds, "client_context_bytes": len(client_bytes),
            "server_context_bytes": len(server_bytes)}


def bench_he(shapes, updates, ctx) -> dict:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.model import ModelLearnable
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
    from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
    from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
    from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator
    from nvflare.fuel.utils import fobs

    t = Timer()
    fl_ctx = FLContext()
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    # what FedAvgRecipeWithHE configures (aggregator_data_kind defaults to WEIGHTS)
    kind = DataKind.WEIGHTS
    blobs, cipher_bytes = {}, {}
    for s in SITES:
        enc = HEModelEncryptor(weigh_by_local_iter=True)
        enc.tenseal_context = ctx["client"]
        enc.encrypt_layers = [True]  # START_RUN sets this when encrypt_layers is None: all layers
        enc.n_iter = WEIGHTS[s]
        params = {k: v.copy() for k, v in updates[s].items()}
        enc_params, enc_dict = t("site_encrypt", lambda: enc.encryption(params, fl_ctx))
        cipher_bytes[s] = sum(len(v.serialize()) for v in enc_params.values())
        dxo = DXO(data_kind=kind, data=enc_params, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: WEIGHTS[s]})
        dxo.set_meta_prop(MetaKey.PROCESSED_KEYS, enc_dict)
        dxo.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, "CKKS")
        blobs[s] = t("site_serialize", lambda dxo=dxo: fobs.dumps(dxo.to_shareable()))
    n_cipher = sum(-(-int(np.prod(shape)) // ctx["params"]["slots_per_ciphertext"]) for _, shape in shapes)

    agg = HEInTimeAccumulateWeightedAggregator(expected_data_kind=kind, weigh_by_local_iter=False)
    agg.handle_event(EventType.START_RUN, fl_ctx)
    for s in SITES:
        shareable = t("server_deserialize", lambda s=s: fobs.loads(blobs[s]))
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: s})  # what the server's cell adds
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)  # ScatterAndGather's task cookie
        ok = t("server_accumulate", lambda shareable=shareable: agg.accept(shareable, fl_ctx))
        if not ok:
            raise SystemExit(f"HE aggregator refused {s}")
        del shareable  # as the server does once a result is accepted (its contexts go with it)
    result = t("server_aggregate", lambda: agg.aggregate(fl_ctx))
    gen = HEModelShareableGenerator()
    gen.tenseal_context = ctx["server"]
    fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, ModelLearnable(weights={k: np.zeros(shape, np.float32)
                                                                       for k, shape in shapes}, meta={}),
                    private=True, sticky=False)
    learnable = t("server_update_model", lambda: gen.shareable_to_learnable(result, fl_ctx))
    outgoing = t("server_serialize", lambda: gen.learnable_to_shareable(learnable, fl_ctx))
    down = t("server_serialize", lambda: fobs.dumps(outgoing))

    dec = HEModelDecryptor()
    dec.tenseal_context = ctx["client"]
    incoming = t("site_deserialize", lambda: from_shareable(fobs.loads(down)))
    layers = incoming.get_meta_prop(MetaKey.PROCESSED_KEYS) or {k: True for k, _ in shapes}
    plain = t("site_decrypt", lambda: dec.decryption(incoming.data, layers, fl_ctx))
    mean = {k: np.asarray(plain[k]).reshape(shape) for k, shape in shapes}

    n = sum(int(np.prod(shape)) for _, shape in shapes)
    per_site = {k: v / (len(SITES) if k in ("site_encrypt", "site_serialize") else 1)
                for k, v in t.t.items() if k.startswith("site_")}
    server = {k: v for k, v in t.t.items() if k.startswith("server_")}
    up_wire = float(np.mean([len(b) for b in blobs.values()]))
    up_ct = float(np.mean(list(cipher_bytes.values())))
    before = per_site["site_encrypt"] + per_site["site_serialize"]
    after = per_site["site_deserialize"] + per_site["site_decrypt"]
    return {"ciphertexts_per_site": n_cipher, "seconds_per_site": per_site, "seconds_server": server,
            "site_before_upload_s": before, "site_after_download_s": after,
            "server_s": sum(server.values()), "per_round_s": before + sum(server.values()) + after,
            "upload_bytes_wire": up_wire, "upload_bytes_ciphertexts": up_ct, "download_bytes": len(down),
            "upload_vs_fp32_wire": up_wire / (4 * n), "upload_vs_fp32_ciphertexts": up_ct / (4 * n),
            "download_vs_fp32": len(down) / (4 * n), "_mean": mean}


# ----------------------------------------------------------------------------------------------- ours

def bench_ours(shapes, updates) -> dict:
    config = SecAggConfig()
    with tempfile.TemporaryDirectory() as tmp:
        make_throwaway_ca(list(SITES), {s: Path(tmp) / s for s in SITES})
        clients = {}
        for s in SITES:
            ident = SiteIdentity.load(Path(tmp) / s, s)
            clients[s] = SecAggClient(s, "bench", config, sign=ident.sign, certificate=ident.certificate_pem,
                                      verify=CertificateVerifier(ident.root_ca_pem).check, participants=SITES)
    codec = PayloadCodec(tuple(shapes), n_sites=len(SITES), clip=1.0, max_weight=10_000)
    t = Timer()
    sent = {s: {} for s in SITES}
    srv = SecAggRound("bench", 0, config, codec.length)
    ads = {s: t("site_advertise", lambda s=s: clients[s].advertise(0)) for s in SITES}
    relay = t("server_collect_adverts", lambda: srv.collect_adverts(ads))
    shares = {s: t("site_share_keys", lambda s=s: clients[s].share_keys(0, relay)) for s in SITES}
    inbox = t("server_route_shares", lambda: srv.collect_shares(shares))
    masked = {}
    for s in SITES:
        vec = t("site_quantise", lambda s=s: codec.encode(updates[s], WEIGHTS[s], {}))
        masked[s] = t("site_mask", lambda s=s, vec=vec: clients[s].mask(0, inbox[s], vec))
    t("server_sum", lambda: srv.collect_inputs(masked))
    proposal = srv.consistency_request()
    sigs = {s: t("site_consistency", lambda s=s: clients[s].consistency(0, proposal)) for s in SITES}
    request = t("server_consistency", lambda: srv.collect_consistency(sigs))
    responses = {s: t("site_unmask", lambda s=s: clients[s].unmask(0, request)) for s in SITES}
    total, survivors = t("server_unmask", lambda: srv.finish(responses))
    decoded = t("server_dequantise", lambda: srv.decode(codec))
    for s in SITES:
        sent[s] = {"advertise": len(ads[s]), "share_keys": len(shares[s]), "masked_input": len(masked[s]),
                   "consistency": len(sigs[s]), "unmask_response": len(responses[s])}
    n = sum(int(np.prod(shape)) for _, shape in shapes)
    per_site = {k: v / len(SITES) for k, v in t.t.items() if k.startswith("site_")}
    server = {k: v for k, v in t.t.items() if k.startswith("server_")}
    before = sum(per_site[k] for k in ("site_advertise", "site_share_keys", "site_quantise", "site_mask"))
    after = per_site["site_consistency"] + per_site["site_unmask"]  # the sites' part after the upload
    up_input = float(np.mean([v["masked_input"] for v in sent.values()]))
    up_all = float(np.mean([sum(v.values()) for v in sent.values()]))
    return {"seconds_per_site": per_site, "seconds_server": server, "site_before_upload_s": before,
            "site_after_download_s": after, "server_s": sum(server.values()),
            "per_round_s": before + sum(server.values()) + after,
            "upload_bytes_masked_input": up_input, "upload_bytes_all_messages": up_all,
            "upload_bytes_by_message": sent[SITES[0]], "download_bytes": 4 * n,
            "upload_vs_fp32_masked_input": up_input / (4 * n), "upload_vs_fp32_all_messages": up_all / (4 * n),
            "download_vs_fp32": 1.0, "error_bound_per_element": codec.error_bound(len(SITES), sum(WEIGHTS.values())),
            "_mean": decoded.mean_delta}


# ----------------------------------------------------------------------------------------------- driver

def compare(model: str, ctx) -> dict:
    shapes = model_shapes(model)
    updates = make_updates(shapes)
    ref = reference_mean(updates)
    n = sum(int(np.prod(shape)) for _, shape in shapes)
    ours = bench_ours(shapes, updates)
    ours["accuracy"] = errors(ours.pop("_mean"), ref)
    he = bench_he(shapes, updates, ctx)
    he["accuracy"] = errors(he.pop("_mean"), ref)
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return {
        "model": model, "tensors": len(shapes), "params": n, "fp32_bytes": 4 * n,
        "ours": ours, "nvflare_he": he,
        "he_over_ours": {
            "upload_bytes_wire_vs_all_messages": ratio(he["upload_bytes_wire"], ours["upload_bytes_all_messages"]),
            "upload_bytes_ciphertexts_vs_masked_input": ratio(he["upload_bytes_ciphertexts"],
                                                             ours["upload_bytes_masked_input"]),
            "download_bytes": ratio(he["download_bytes"], ours["download_bytes"]),
            "site_before_upload_s": ratio(he["site_before_upload_s"], ours["site_before_upload_s"]),
            "site_after_download_s": ratio(he["site_after_download_s"], ours["site_after_download_s"]),
            "site_total_s": ratio(he["site_before_upload_s"] + he["site_after_download_s"],
                                  ours["site_before_upload_s"] + ours["site_after_download_s"]),
            "server_s": ratio(he["server_s"], ours["server_s"]),
            "per_round_s": ratio(he["per_round_s"], ours["per_round_s"]),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated: demo, flat7m, densenet121, flatNk/flatNm")
    ap.add_argument("--quick", action="store_true", help="demo and a 100k flat vector only")
    ap.add_argument("--poc", action="store_true", help="also try an NVFlare POC deployment with HE")
    ap.add_argument("--poc-timeout", type=float, default=900.0)
    args = ap.parse_args()
    logging.getLogger("nvflare").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    models = (args.models or ("demo,flat100k" if args.quick else "demo,flat7m")).split(",")
    import tenseal as ts

    report: dict = {"load_average_start": os.getloadavg(), "cpu_cores": os.cpu_count(),
                    "python": platform.python_version(), "tenseal": ts.__version__,
                    "sites": list(SITES), "weights": WEIGHTS}
    ctx = he_contexts()
    report["he_context"] = {k: v for k, v in ctx.items() if k not in ("client", "server")}
    # tenseal's C++ code prints warnings on stdout (vectors larger than one ciphertext): keep stdout JSON only
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        report["models"] = []
        for m in models:
            report["models"].append(compare(m, ctx))
            report["models"][-1]["peak_rss_mib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.poc:  # its own process: the Flare API client and the in-process HE objects stay apart
            proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "he_poc.py"), str(args.poc_timeout)],
                                  capture_output=True, text=True, timeout=args.poc_timeout + 240)
            try:
                report["poc_attempt"] = json.loads(proc.stdout)
            except json.JSONDecodeError:
                report["poc_attempt"] = {"result": f"he_poc.py exited {proc.returncode}",
                                         "stderr_tail": proc.stderr[-1500:]}
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
