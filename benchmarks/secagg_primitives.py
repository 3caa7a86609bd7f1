"""Throughput of the secure-aggregation primitives on one core; prints one JSON object.

    python benchmarks/secagg_primitives.py [--quick] [--repeats R] [--cpu N] [--clock wall|thread]

Measures (best of ``R`` runs, the process pinned to one CPU, BLAS limited to one thread; wall clock by
default, or with ``--clock thread`` the thread's own CPU time, which leaves out the time other
processes hold the core -- not their cache and memory-bandwidth interference -- on a shared machine):

* keystream GB/s per cipher, into a cache-resident buffer and into a large preallocated buffer;
* masking, elements/s **per neighbour**: ``add_mask`` with one neighbour and ``apply_pairwise_masks``
  with k neighbours + a self mask, at 10M and 100M elements (1M and 4M with --quick), on the default
  path (the compiled fused AES-128-CTR masking where built: ``masking_impl``) and on the pure numpy +
  ``cryptography`` path, each as a ratio to the AES-128-CTR keystream rate (uint32 words/s written by
  ``cryptography`` into a cache-resident, preallocated buffer) measured on the same core in the
  same run; the CPU's AES-related features (``/proc/cpuinfo`` flags) come with them;
* quantisation elements/s (10M; an update within the clip, one that needs clipping in every chunk,
  8-bit rounding, a freshly allocated output), dequantisation elements/s, and a whole site-side
  step (quantise + mask with 2 neighbours + self, i.e. a 3-site full graph);
* upload size relative to float32, from the actual wire encoding of a masked vector;
* for comparison, Flower-style masking (numpy ``RandomState`` seeded with 32 bits, int64 masks,
  ``mod``), elements/s per neighbour at 10M, and numpy's uniform generator.

Other jobs on the machine slow every figure down; the load average is reported with them.
"""

from __future__ import annotations

import os

# one core: pin BLAS and OpenMP pools before numpy loads
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ai4hi_sdk.privacy.secagg.primitives import encoding, keystream, masking  # noqa: E402
import ai4hi_sdk.privacy.secagg.primitives.quantize  # noqa: E402,F401

# the package re-exports the function quantize(), which shadows the submodule attribute
quantize = sys.modules["ai4hi_sdk.privacy.secagg.primitives.quantize"]


CLOCK = time.perf_counter


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
    return best


def seed(i: int) -> bytes:
    return bytes([i % 256]) * 31 + bytes([i // 256])


def bench_keystream(repeats: int, big_elems: int) -> dict:
    out = {}
    small = np.empty(32 * 1024, dtype=np.uint32)  # 128 KiB, stays in L2
    big = np.zeros(big_elems, dtype=np.uint32)
    for cipher in keystream.CIPHERS:
        stream = keystream.Keystream(seed(1), cipher=cipher)
        reps = 2000

        def fill_small():
            for _ in range(reps):
                stream.fill_uint32(small)

        t_small = best_time(fill_small, repeats)
        t_big = best_time(lambda: keystream.fill_uint32(seed(2), big, cipher=cipher), repeats)
        out[cipher] = {
            "in_cache_GBps": round(reps * small.nbytes / t_small / 1e9, 3),
            "preallocated_GBps": round(big.nbytes / t_big / 1e9, 3),
        }
    t_alloc = best_time(
        lambda: keystream.Cipher(keystream.algorithms.AES(seed(3)), keystream.modes.CTR(bytes(16)))
        .encryptor()
        .update(bytes(big.nbytes)),
        repeats,
    )
    out["aes-256-ctr"]["new_buffer_per_call_GBps"] = round(big.nbytes / t_alloc / 1e9, 3)
    return out


def bench_masking(n: int, repeats: int, cipher: str, ks: tuple[int, ...], reference: float | None = None) -> dict:
    """Per-neighbour masking rates; with ``reference`` (keystream words/s) also their ratios to it."""
    vec = np.zeros(n, dtype=np.uint32)
    scratch = masking.new_scratch()
    res = {}
    t1 = best_time(lambda: masking.add_mask(vec, seed(5), 1, scratch, cipher=cipher), repeats)
    res["one_neighbour_elems_per_s"] = round(n / t1)
    for k in ks:
        neighbours = {f"site-{j:03d}": seed(10 + j) for j in range(k)}
        tk = best_time(
            lambda: masking.apply_pairwise_masks(vec, "site-500", neighbours, seed(9), scratch=scratch, cipher=cipher),
            repeats,
        )
        res[f"{k}_neighbours_plus_self_elems_per_s_per_mask"] = round(n * (k + 1) / tk)
        res[f"{k}_neighbours_plus_self_seconds"] = round(tk, 4)
    if reference:
        res["ratio_to_keystream"] = {key.replace("_elems_per_s", "").replace("_per_mask", ""): round(v / reference, 3)
                                     for key, v in res.items() if key.endswith(("_elems_per_s", "_per_mask"))}
    return res


def bench_masking_paths(sizes, repeats: int, cipher: str, reference: float) -> dict:
    """The default path, the AES-NI-only one (what a core without VAES runs) and the pure one, same
    sizes, same core, ratios to ``reference``."""
    out = {}
    default = masking.masking_impl(cipher)
    fused = masking._fastmask.features() if masking._fastmask is not None else {}
    for impl in dict.fromkeys([default, *(["aesni"] if fused.get("aesni") and cipher == "aes-128-ctr" else []),
                               "numpy"]):
        previous = masking.set_masking_impl("auto" if impl == default else impl)
        try:
            out[impl] = {f"{n}": bench_masking(n, max(2, repeats - (2 if n >= 50_000_000 else 0)), cipher, (2, 8),
                                               reference) for n in sizes}
        finally:
            masking.set_masking_impl(previous)
    return out


def bench_flower_style(n: int, repeats: int) -> dict:
    """Flower SecAgg+ style: RandomState(32-bit seed).randint into a new int64 array, add, mod."""
    mod_range = 1 << 31
    vec = np.zeros(n, dtype=np.int64)

    def mask_once():
        gen = np.random.RandomState(int.from_bytes(seed(7)[:4], "little"))
        m = gen.randint(0, mod_range, size=n, dtype=np.int64)
        np.add(vec, m, out=vec)
        np.mod(vec, mod_range, out=vec)

    t = best_time(mask_once, repeats)
    rs = np.random.RandomState(0)
    tu = best_time(lambda: rs.random_sample(n), repeats)
    return {
        "masking_elems_per_s_per_neighbour": round(n / t),
        "upload_bytes_per_element": 8,
        "numpy_uniform_randomstate_elems_per_s": round(n / tu),
    }


def bench_quantize(n: int, repeats: int, cipher: str) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, n).astype(np.float32)
    cfg = quantize.QuantizationConfig(clip=1.0, n_sites=3)
    out = np.empty(n, dtype=np.uint32)
    quantize.quantize(x, cfg, seed(1), out=out, cipher=cipher)  # touch the pages once
    tq = best_time(lambda: quantize.quantize(x, cfg, seed(1), out=out, cipher=cipher), repeats)
    tq_new = best_time(lambda: quantize.quantize(x, cfg, seed(1), cipher=cipher), repeats)
    tq8 = best_time(lambda: quantize.quantize(x, cfg, seed(1), out=out, cipher=cipher, rounding_bits=8), repeats)
    x_heavy = rng.normal(0, 0.5, n).astype(np.float32)  # ~5% of elements beyond the clip: every chunk clips
    tq_clip = best_time(lambda: quantize.quantize(x_heavy, cfg, seed(1), out=out, cipher=cipher), repeats)
    fout = np.empty(n, dtype=np.float32)
    dequantize_mean = quantize.dequantize_mean
    dequantize_mean(out, cfg, 3, out=fout)
    td = best_time(lambda: dequantize_mean(out, cfg, 3, out=fout), repeats)
    scratch = masking.new_scratch()
    neighbours = {"site-b": seed(20), "site-c": seed(21)}

    def site_step():
        quantize.quantize(x, cfg, None, out=out, cipher=cipher)
        masking.apply_pairwise_masks(out, "site-a", neighbours, seed(22), scratch=scratch, cipher=cipher)

    ts = best_time(site_step, repeats)
    return {
        "quantize_elems_per_s": round(n / tq),
        "quantize_new_output_elems_per_s": round(n / tq_new),
        "quantize_rounding_bits_8_elems_per_s": round(n / tq8),
        "quantize_with_clipping_elems_per_s": round(n / tq_clip),
        "dequantize_mean_elems_per_s": round(n / td),
        "site_step_quantize_plus_2_neighbours_plus_self_seconds": round(ts, 4),
        "site_step_elems_per_s": round(n / ts),
        "error_bound_clip1_3sites": quantize.error_bound(cfg),
        "scale": cfg.scale,
    }


def upload_ratio(n: int) -> dict:
    vec = np.zeros(n, dtype=np.uint32)
    msg = encoding.encode_message(
        "masked-input", {"site": "hospital-1", "job_id": "job-0123456789", "round": 12, "vector": vec}
    )
    return {
        "n_params": n,
        "wire_bytes": len(msg),
        "fp32_bytes": 4 * n,
        "ratio_vs_fp32": round(len(msg) / (4 * n), 6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--cipher", default=keystream.DEFAULT_CIPHER, choices=keystream.CIPHERS)
    ap.add_argument("--clock", default="wall", choices=("wall", "thread"),
                    help="wall clock (default) or the thread's CPU time (time.thread_time)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.thread_time
    repeats = args.repeats or (3 if args.quick else 5)
    sizes = (1_000_000, 4_000_000) if args.quick else (10_000_000, 100_000_000)
    pinned = None
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        pinned = args.cpu if args.cpu is not None else allowed[-1]
        os.sched_setaffinity(0, {pinned})

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    keystream_result = bench_keystream(repeats, sizes[0])
    # the masking goal's yardstick: AES-128-CTR words/s into a cache-resident preallocated buffer
    reference = keystream_result["aes-128-ctr"]["in_cache_GBps"] * 1e9 / 4
    result = {
        "benchmark": "secagg_primitives",
        "quick": args.quick,
        "cipher": args.cipher,
        "repeats_best_of": repeats,
        "clock": "wall" if args.clock == "wall" else "thread_cpu_time",
        "pinned_cpu": pinned,
        "machine": {
            "cpu": _cpu_model(),
            "cpu_aes_features": _cpu_features(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cryptography": _crypto_version(),
        },
        "keystream": keystream_result,
        "keystream_reference_words_per_s": round(reference),
        "masking_impl": masking.masking_impl(args.cipher),
        "masking": bench_masking_paths(sizes, repeats, args.cipher, reference),
        "masking_other_ciphers_10M_like": {
            c: bench_masking(sizes[0], repeats, c, (8,)) for c in keystream.CIPHERS if c != args.cipher
        },  # (the pure path: the fused one is AES-128-CTR only)
        "quantization": bench_quantize(sizes[0], repeats, args.cipher),
        "upload": upload_ratio(sizes[0]),
        "flower_style_comparison": bench_flower_style(sizes[0], max(2, repeats - 2)),
    }
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_features() -> dict:
    """The CPU flags that decide AES and masking speed (from /proc/cpuinfo)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {f: f in flags for f in ("aes", "vaes", "vpclmulqdq", "avx2", "avx512f", "avx512bw")}


def _crypto_version() -> str:
    import cryptography
    from cryptography.hazmat.backends.openssl import backend

    return f"{cryptography.__version__} ({backend.openssl_version_text()})"


if __name__ == "__main__":
    main()
