"""DP-SGD cost per training step: time and peak memory, DP-SGD vs non-private, for the
classification trainer's model (2D DenseNet, GroupNorm) and a 3D segmentation UNet, on CPU (and
CUDA where present), for opacus's per-sample-gradient modes (``ghost``: Fast Gradient / Ghost
Clipping, per-sample gradient norms and a second backward pass). Prints one JSON object, with the
load average before and after (``os.getloadavg()``: the machines are shared).

Each configuration runs in its own child process so its peak resident memory (``ru_maxrss``) is
its own. Time is the median of ``--steps`` steps after 2 warm-up steps (also: the fastest step,
and the process CPU time per step, which other jobs on a shared machine disturb less).

Usage: ``python benchmarks/dp_overhead.py [--steps 10] [--quick] [--modes off,hooks,ghost] [--threads 1]
[--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("off", "hooks", "functorch", "ew", "ghost")


def build(model_name: str):
    import torch
    from monai.networks.nets import UNet

    from ai4hi_sdk.config.job_spec import JobSpec
    from ai4hi_sdk.trainers.classification import ClassificationTrainer

    if model_name == "densenet2d":
        spec = JobSpec(name="bench", model={"norm": ["group", {"num_groups": 4}]})
        model = ClassificationTrainer(spec, device="cpu").build_model()
        x, y = torch.randn(32, 1, 64, 64), torch.randint(0, 2, (32,))
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        model = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                     num_res_units=1, norm=("group", {"num_groups": 2}))
        x, y = torch.randn(4, 1, 32, 32, 32), torch.randint(0, 2, (4, 32, 32, 32))
        loss_fn = torch.nn.CrossEntropyLoss()
    return model, x, y, loss_fn


def one(model_name: str, mode: str, steps: int, device: str) -> dict:
    import torch

    from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession, RoundPlan, make_dp_compatible

    torch.manual_seed(0)
    model, x, y, loss_fn = build(model_name)
    if mode != "off":
        model, _ = make_dp_compatible(model)
    model, x, y = model.to(device), x.to(device), y.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    forward = model
    if mode != "off":
        session = DPSGDSession(model, mode)
        optimizer = session.private_optimizer(optimizer, RoundPlan(1.0, 0.01, steps, 1.0), x.shape[0],
                                              torch.Generator(device=device).manual_seed(0))
        forward = session.wrapped
        loss_fn = session.private_loss(loss_fn)  # ghost: per-example losses, backward() clips
    times, cpu_times = [], []
    for step in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    out = {"model": model_name, "mode": mode, "device": device, "step_s": statistics.median(times),
           "step_s_min": min(times), "cpu_s": statistics.median(cpu_times),
           "parameters": sum(p.numel() for p in model.parameters()), "batch": int(x.shape[0])}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 steps, hooks mode only")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every configuration this many times, interleaved; keep each one's fastest run "
                             "(lowest median step) -- other jobs on a shared machine only slow runs down")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "MODE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(one(args.one[0], args.one[1], args.steps, args.one[2])))
        return
    import torch

    steps = 3 if args.quick else args.steps
    modes = ("off", "hooks") if args.quick else tuple(m for m in args.modes.split(",") if m)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    best: dict[tuple, dict] = {}
    load_before = os.getloadavg()
    for _ in range(max(args.repeat, 1)):
        for device in devices:
            for model_name in ("densenet2d", "unet3d"):
                for mode in modes:
                    proc = subprocess.run([sys.executable, __file__, "--steps", str(steps), "--threads",
                                           str(args.threads), "--one", model_name, mode, device],
                                          capture_output=True, text=True)
                    key = (device, model_name, mode)
                    if proc.returncode != 0:
                        best.setdefault(key, {"model": model_name, "mode": mode, "device": device,
                                              "error": proc.stderr.strip().splitlines()[-1][:300]})
                        continue
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    if "step_s" not in best.get(key, {}) or r["step_s"] < best[key]["step_s"]:
                        best[key] = r
    results = list(best.values())
    for r in results:
        base = next((b for b in results if b["model"] == r["model"] and b["device"] == r["device"]
                     and b["mode"] == "off" and "step_s" in b), None)
        if base and "step_s" in r:
            r["time_ratio_vs_off"] = round(r["step_s"] / base["step_s"], 2)
            r["time_ratio_min_vs_off"] = round(r["step_s_min"] / base["step_s_min"], 2)
            r["cpu_ratio_vs_off"] = round(r["cpu_s"] / base["cpu_s"], 2)
            r["memory_ratio_vs_off"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
    print(json.dumps({"benchmark": "dp_overhead", "steps": steps, "threads": args.threads or torch.get_num_threads(),
                      "repeat": max(args.repeat, 1), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
