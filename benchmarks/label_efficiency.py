"""Label efficiency of foundation backbones on the synthetic *subtle* finding; prints one JSON object.

Compared, at 1 %, 10 % and 100 % of the labelled training studies, with DP-SGD off and on
(epsilon 8):

* ``scratch_cnn``: today's default model (the classification trainer's MONAI DenseNet), all weights;
* ``random_init``: the ViT backbone with random weights (the control) under each adaptation;
* ``imported``: the same ViT MAE-pretrained centrally on *separate* synthetic data, saved as
  safetensors (with a DDP ``module.`` prefix) and brought in through ``import_checkpoint``;
* ``federated_mae``: the ViT MAE-pretrained by FedAvg over 3 synthetic sites, in-process (each site
  runs ``MAEPretrainTrainer.fit`` on all its train-split images, labelled or not; the server
  averages with ``jobs.aggregation.weighted_average``), exported with its card and loaded after a
  sha256 check.

Adaptations: ``linear_probe``, ``lora``, ``ffa_lora``, ``partial`` (last block), ``full``. AUROC on a
held-out test site with a DeLong 95 % interval (it covers test sampling only: one training seed per
cell). Also: the cost of a private step vs a non-private one, and the upload per round (trainable
tensors) as a share of the full model for ViT-B/16 (parameters counted, nothing trained).

All images go through the SDK's DICOM path (``ai4hi data synth`` writer, scan, labels, splits,
preprocessing at 32x32). Usage::

    python benchmarks/label_efficiency.py [--quick] [--jobs 2] [--threads 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKBONE = "vit-micro-2d"
IMAGE_SIZE = 32
MODES = ("linear_probe", "lora", "ffa_lora", "partial", "full")
FRACTIONS = (0.01, 0.10, 1.00)
EPSILON, DELTA, MAX_GRAD_NORM = 8.0, 1e-5, 1.0
#: ViT tokens are max-pooled: with mean pooling every ViT stayed at chance on this local finding
#: (tuning runs on separate synthetic data, benchmarks/README.md)
POOL = "max"
LR = {"linear_probe": 1e-2, "lora": 3e-3, "ffa_lora": 3e-3, "partial": 1e-3, "full": 1e-3, "cnn": 3e-3}

CONFIGS: dict[str, dict[str, Any]] = {
    # the published figures: about 20 minutes on 2 shared CPU cores
    "full": {"pretrain_sites": 3, "pretrain_studies": 200, "pretrain_labelled": 0.1, "pretrain_rounds": 20,
             "pretrain_epochs": 2, "central_studies": 600, "central_epochs": 30, "train_studies": 400,
             "test_studies": 400, "steps": 400, "batch": 16, "fractions": FRACTIONS, "dp": (False, True),
             "timing_steps": 20},
    # smoke test: a couple of minutes
    "quick": {"pretrain_sites": 3, "pretrain_studies": 24, "pretrain_labelled": 0.25, "pretrain_rounds": 2,
              "pretrain_epochs": 1, "central_studies": 30, "central_epochs": 1, "train_studies": 60,
              "test_studies": 40, "steps": 6, "batch": 8, "fractions": (0.1, 1.0), "dp": (False, True),
              "timing_steps": 3},
}


# ---------------------------------------------------------------------------------------- data


def make_data(work: Path, cfg: dict) -> dict[str, Path]:
    """Four disjoint synthetic data sets (different seeds), written as DICOM."""
    from ai4hi_sdk.data.synth import synth_consortium, synth_site

    paths = {"federated": work / "federated", "central": work / "central" / "hospital-1",
             "train": work / "downstream" / "hospital-1", "test": work / "test" / "hospital-1"}
    synth_consortium(paths["federated"], sites=cfg["pretrain_sites"], studies_per_site=cfg["pretrain_studies"],
                     seed=101, labelled_fraction=cfg["pretrain_labelled"], finding="subtle", overwrite=True)
    synth_site(paths["central"], site_index=0, n_studies=cfg["central_studies"], seed=202, finding="subtle",
               labelled_fraction=0.0, overwrite=True)
    synth_site(paths["train"], site_index=1, n_studies=cfg["train_studies"], seed=303, finding="subtle", overwrite=True)
    synth_site(paths["test"], site_index=2, n_studies=cfg["test_studies"], seed=404, finding="subtle", overwrite=True)
    return paths


def labelled_tensors(site: Path, *, splits: tuple[str, ...]):
    """Images [N, 1, 32, 32] and labels [N] of the given splits, through the SDK's site loader."""
    import torch

    from ai4hi_sdk.data.dataset import load_site_splits

    data = load_site_splits(site, image_size=IMAGE_SIZE, augment=False)
    xs, ys = [], []
    for name in splits:
        for image, label in getattr(data, name):
            xs.append(image)
            ys.append(label)
    return torch.stack(xs), torch.stack(ys)


def label_subset(labels, fraction: float, seed: int = 0):
    """Indices of a stratified ``fraction`` of the examples (at least one per class)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in (0, 1):
        idx = torch.nonzero(labels == cls).flatten()
        keep = max(1, round(fraction * len(idx)))
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:keep]])
    return torch.cat(chosen)


# ---------------------------------------------------------------------------------------- pretraining


def _mae_spec(cfg: dict, epochs: int):
    from ai4hi_sdk.config.job_spec import JobSpec

    return JobSpec.model_validate({
        "name": "bench-mae", "trainer": "ai4hi_sdk.foundation.trainers:MAEPretrainTrainer",
        "model": {"backbone": BACKBONE, "modalities": ["CR", "DX"], "masking_ratio": 0.75},
        "data": {"image_size": IMAGE_SIZE},
        "train": {"local_epochs": epochs, "batch_size": 32, "lr": 2e-3, "optimizer": "adam", "augment": True,
                  "seed": 0}})


def pretrain_federated(root: Path, cfg: dict, out: Path) -> dict:
    """FedAvg of masked-autoencoder training over the sites in ``root``; exports the backbone."""
    from ai4hi_sdk.foundation.provenance import export_pretrained_backbone
    from ai4hi_sdk.foundation.trainers import MAEPretrainTrainer
    from ai4hi_sdk.jobs.aggregation import apply_delta, weighted_average

    spec = _mae_spec(cfg, cfg["pretrain_epochs"])
    sites = sorted(p.name for p in root.iterdir())
    trainers = [MAEPretrainTrainer(spec, site_dir=root / s, site_name=s, device="cpu") for s in sites]
    state = trainers[0].initial_state()
    start, losses = time.perf_counter(), []

    def val_mean(updates, key):  # the consortium's loss: val-sample-weighted mean over sites
        weights = [u.metrics["val_samples"] for u in updates]
        return sum(u.metrics[key] * w for u, w in zip(updates, weights)) / sum(weights)

    for rnd in range(cfg["pretrain_rounds"]):
        updates = [t.fit(state, rnd, total_rounds=cfg["pretrain_rounds"]) for t in trainers]
        if rnd == 0:
            first_loss = val_mean(updates, "global_val_loss")  # the random-init MAE
        state = apply_delta(state, weighted_average([u.delta for u in updates], [u.num_samples for u in updates]))
        losses.append(val_mean(updates, "val_loss"))
    seconds = time.perf_counter() - start
    counts = {s: t.datasets.counts() for s, t in zip(sites, trainers)}
    provenance = export_pretrained_backbone(
        state, BACKBONE, out, overwrite=True, site_images={s: c["train"] for s, c in counts.items()},
        rounds=cfg["pretrain_rounds"], local_epochs=cfg["pretrain_epochs"], masking_ratio=0.75, modality="CR/DX",
        final_loss=losses[-1])
    return {"sha256": provenance.sha256, "seconds": round(seconds, 1), "val_loss_untrained": round(first_loss, 4),
            "val_loss_by_round": [round(v, 4) for v in losses], "site_images": counts, "dir": str(out)}


def pretrain_central(site: Path, cfg: dict, work: Path) -> dict:
    """MAE on a separate data set, saved like a checkpoint from elsewhere, then imported."""
    from safetensors.torch import save_file

    from ai4hi_sdk.foundation.checkpoint import import_checkpoint
    from ai4hi_sdk.foundation.trainers import MAEPretrainTrainer
    from ai4hi_sdk.jobs.aggregation import apply_delta

    spec = _mae_spec(cfg, cfg["central_epochs"])
    trainer = MAEPretrainTrainer(spec, site_dir=site, site_name="central", device="cpu")
    start = time.perf_counter()
    state = trainer.initial_state()
    update = trainer.fit(state, 0)
    state = apply_delta(state, update.delta)
    seconds = time.perf_counter() - start
    file = work / "central_mae.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(file))  # as a DDP job would
    result = import_checkpoint(file, BACKBONE, work / "imported", source="benchmark: central MAE on separate data",
                               licence="Apache-2.0", overwrite=True)
    return {"sha256": result.provenance.sha256, "seconds": round(seconds, 1), "images": len(trainer.datasets.train),
            "val_loss": round(update.metrics["val_loss"], 4),
            "val_loss_before": round(update.metrics["global_val_loss"], 4),
            "stripped_prefixes": result.provenance.stripped_prefixes,
            "converted_from": result.provenance.converted_from,
            "dir": str(work / "imported")}


# ---------------------------------------------------------------------------------------- models


def build_model(variant: str, mode: str, backbones: dict[str, dict]):
    """(model, trainable names) of a variant; backbones come from verified backbone folders."""
    import torch

    from ai4hi_sdk.foundation.adaptation import apply_adaptation, trainable_state_names
    from ai4hi_sdk.foundation.architectures import BackboneClassifier
    from ai4hi_sdk.foundation.checkpoint import load_backbone

    torch.manual_seed(0)
    if variant == "scratch_cnn":
        from ai4hi_sdk.config.job_spec import JobSpec
        from ai4hi_sdk.trainers.classification import ClassificationTrainer

        model = ClassificationTrainer(JobSpec(name="bench"), device="cpu").build_model()
        return model, trainable_state_names(model)
    model = BackboneClassifier(BACKBONE, pool=POOL)
    if variant != "random_init":
        info = backbones[variant]
        state, _ = load_backbone(info["dir"], expected_sha256=info["sha256"])
        model.encoder.load_state_dict(state, strict=True)
    return model, apply_adaptation(model, mode)


def finetune(model, x, y, *, mode: str, dp: bool, cfg: dict, seed: int = 0) -> dict:
    """Train on (x, y) for ``cfg['steps']`` optimizer steps; DP-SGD at epsilon 8 with opacus via the
    SDK's DPSGDSession (Poisson sampling, per-sample clipping, calibrated noise)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    n = len(y)
    batch = min(cfg["batch"], n)
    steps = cfg["steps"]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=LR[mode])
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=False)
    forward, info = model, {"n": n}
    if dp:
        from ai4hi_sdk.privacy.dp.calibration import noise_multiplier_for_target
        from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession, RoundPlan, make_dp_compatible

        model, _ = make_dp_compatible(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=LR[mode])
        rate = 1.0 / len(loader)
        sigma = noise_multiplier_for_target(EPSILON, DELTA, rate, steps)
        session = DPSGDSession(model)
        loader = session.private_loader(loader, torch.Generator().manual_seed(seed + 1))
        optimizer = session.private_optimizer(optimizer, RoundPlan(sigma, rate, steps, MAX_GRAD_NORM), batch,
                                              torch.Generator().manual_seed(seed + 2))
        forward = session.wrapped
        info.update(noise_multiplier=round(sigma, 3), sample_rate=round(rate, 4))
    model.train()
    done = 0
    while done < steps:
        for xb, yb in loader:
            flip = torch.rand(len(yb), 1, 1, 1) < 0.5  # horizontal flips (radiographs stay upright)
            xb = torch.where(flip, xb.flip(-1), xb)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(forward(xb), yb).backward()
            optimizer.step()
            done += 1
            if done >= steps:
                break
    if dp:
        session.clear()
    info["model"] = model
    return info


def evaluate(model, x, y) -> dict:
    import torch

    from ai4hi_sdk.validation.classification import classification_report

    model.eval()
    with torch.no_grad():
        prob = torch.cat([torch.softmax(model(x[i:i + 256]), 1)[:, 1] for i in range(0, len(x), 256)])
    report = classification_report(y.numpy(), prob.numpy())
    return {"auroc": round(report["auroc"], 4), "ci": [round(v, 4) for v in report["auroc_ci"] or []]}


_SHARED: dict[str, Any] = {}


def _run_cell(task: tuple) -> tuple[str, dict]:
    """One (fraction, variant, mode, dp) cell; runs in a worker process (data shared by fork)."""
    import torch

    frac, variant, mode, dp = task
    torch.set_num_threads(1)
    data, cfg, backbones = _SHARED["data"], _SHARED["cfg"], _SHARED["backbones"]
    x_train, y_train, x_test, y_test = data
    idx = label_subset(y_train, frac)
    model, _ = build_model(variant, mode, backbones)
    start = time.perf_counter()
    info = finetune(model, x_train[idx], y_train[idx], mode="cnn" if variant == "scratch_cnn" else mode, dp=dp, cfg=cfg)
    row = evaluate(info.pop("model"), x_test, y_test)
    row.update(info, seconds=round(time.perf_counter() - start, 2))
    key = f"{variant}/{mode}/{frac:g}/{'dp' if dp else 'plain'}"
    print(f"[label_efficiency] {key}: {row}", file=sys.stderr, flush=True)
    return key, row


def run_cells(tasks: list[tuple], data: tuple, cfg: dict, backbones: dict, jobs: int) -> dict[str, dict]:
    """Fine-tune and evaluate every cell, ``jobs`` worker processes with one torch thread each."""
    import multiprocessing

    _SHARED.update(data=data, cfg=cfg, backbones=backbones)
    if jobs <= 1:
        return dict(_run_cell(task) for task in tasks)
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return dict(pool.map(_run_cell, tasks, chunksize=1))


# ---------------------------------------------------------------------------------------- costs


def step_cost(backbones: dict, x, y, cfg: dict) -> dict:
    """Seconds per optimizer step (batch 32), private vs not, for ffa_lora and full: the median of the
    process CPU time (other jobs on a shared machine disturb it less than wall time) and of the wall
    time. The ratios use CPU time."""
    import torch
    import torch.nn.functional as F

    from ai4hi_sdk.privacy.dp.dpsgd import DPSGDSession, RoundPlan, make_dp_compatible

    xb, yb = x[:32], y[:32]
    out = {}
    for mode in ("ffa_lora", "full"):
        for dp in (False, True):
            model, _ = build_model("federated_mae", mode, backbones)
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer, forward = torch.optim.SGD(params, lr=1e-3), model
            if dp:
                model, _ = make_dp_compatible(model)
                session = DPSGDSession(model)
                sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
                optimizer = session.private_optimizer(sgd, RoundPlan(1.0, 0.1, 10, 1.0), len(yb),
                                                      torch.Generator().manual_seed(0))
                forward = session.wrapped
            times, cpu = [], []
            for step in range(cfg["timing_steps"] + 2):
                start, cpu_start = time.perf_counter(), time.process_time()
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(forward(xb), yb).backward()
                optimizer.step()
                if step >= 2:  # warm-up excluded
                    times.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - cpu_start)
            tag = f"{mode}_{'dp' if dp else 'plain'}"
            out[f"{tag}_cpu_s"] = round(statistics.median(cpu), 5)
            out[f"{tag}_wall_s"] = round(statistics.median(times), 5)
        out[f"{mode}_dp_ratio"] = round(out[f"{mode}_dp_cpu_s"] / out[f"{mode}_plain_cpu_s"], 2)
    return out


def upload_sizes() -> dict:
    """Trainable elements per round vs the full model, ViT-B/16 and the benchmark's ViT."""
    import torch

    from ai4hi_sdk.foundation.adaptation import apply_adaptation, upload_size
    from ai4hi_sdk.foundation.architectures import BackboneClassifier

    out: dict[str, dict] = {}
    for arch in ("vit-b16-2d", BACKBONE):
        out[arch] = {}
        for mode in MODES:
            torch.manual_seed(0)
            model = BackboneClassifier(arch)
            size = upload_size(model, apply_adaptation(model, mode))
            out[arch][mode] = {"trainable": int(size["trainable_elements"]), "full": int(size["full_model_elements"]),
                               "percent": round(size["percent"], 3)}
    return out


# ---------------------------------------------------------------------------------------- goals


def goals(results: dict, cost: dict, upload: dict, fractions: tuple) -> dict:
    """The issue's goals against the measured cells; a goal that cannot be judged says so."""
    def cell(variant, mode, frac, dp=False):
        return results.get(f"{variant}/{mode}/{frac:g}/{'dp' if dp else 'plain'}", {})

    out: dict[str, Any] = {}
    lines = []
    for frac in fractions:
        fm = cell("federated_mae", "ffa_lora", frac).get("auroc")
        scratch = cell("scratch_cnn", "full", frac).get("auroc")
        control = cell("random_init", "ffa_lora", frac).get("auroc")
        if None in (fm, scratch, control):
            continue
        need = scratch + 0.05 if frac < 1.0 else scratch - 0.01
        met = fm >= need and fm > control
        out[f"pretraining_{frac:g}"] = {"federated_mae_ffa_lora": fm, "scratch_cnn": scratch,
                                        "random_init_ffa_lora": control, "target": round(need, 4), "met": met}
        if not met:
            lines.append(f"{frac:.0%} labels: no pretraining benefit (federated MAE + ffa_lora {fm:.3f} vs scratch "
                         f"{scratch:.3f}, random-init control {control:.3f})")
    for frac in fractions:
        plain, private = cell("federated_mae", "ffa_lora", frac), cell("federated_mae", "ffa_lora", frac, True)
        if "auroc" in plain and "auroc" in private:
            # a ratio of two chance-level AUROCs says nothing: judged only when the non-private
            # model is above chance (lower end of its 95 % interval > 0.5)
            judged = bool(plain.get("ci")) and plain["ci"][0] > 0.5
            ratio = round(private["auroc"] / plain["auroc"], 3)
            out[f"dp_retention_{frac:g}"] = {"plain": plain["auroc"], "dp": private["auroc"], "ratio": ratio,
                                             "met": (ratio >= 0.95) if judged else None,
                                             **({} if judged else {"note": "non-private model at chance: not judged"})}
    ratio = cost.get("ffa_lora_dp_ratio")
    out["dp_step_cost_adapters"] = {"ratio": ratio, "met": ratio is not None and ratio <= 1.3}
    vitb = upload["vit-b16-2d"]["ffa_lora"]["percent"]
    out["upload_vit_b16_ffa_lora_percent"] = {"percent": vitb, "met": vitb <= 2.0}
    out["statement"] = lines or ["pretraining benefit goal met at every label fraction"]
    return out


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny data, few steps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on shared cores more threads contend and run slower)")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tuning worker processes (default 2)")
    parser.add_argument("--workdir", type=Path, help="where to write the synthetic DICOM (default: a temp folder)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    cfg = CONFIGS["quick" if args.quick else "full"]
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        paths = make_data(work, cfg)
        t_data = time.perf_counter() - t0
        x_train, y_train = labelled_tensors(paths["train"], splits=("train",))
        x_test, y_test = labelled_tensors(paths["test"], splits=("train", "val", "test"))
        backbones = {"federated_mae": pretrain_federated(paths["federated"], cfg, work / "federated_backbone"),
                     "imported": pretrain_central(paths["central"], cfg, work)}
        t_pre = time.perf_counter() - t0 - t_data
        variants = [("scratch_cnn", "full")] + [(v, m) for v in ("random_init", "imported", "federated_mae")
                                                for m in MODES]
        tasks = [(frac, variant, mode, dp) for frac in cfg["fractions"] for variant, mode in variants
                 for dp in cfg["dp"]]
        results = run_cells(tasks, (x_train, y_train, x_test, y_test), cfg, backbones, args.jobs)
        t_fine = time.perf_counter() - t0 - t_data - t_pre
        cost = step_cost(backbones, x_train, y_train, cfg)
    upload = upload_sizes()
    for info in backbones.values():
        info.pop("dir", None)
    report = {
        "benchmark": "label_efficiency", "mode": "quick" if args.quick else "full", "threads": args.threads,
        "backbone": BACKBONE, "image_size": IMAGE_SIZE, "finding": "subtle", "config": {k: v for k, v in cfg.items()},
        "labelled_train_images": len(y_train), "test_images": len(y_test),
        "test_positives": int(y_test.sum()), "epsilon": EPSILON, "delta": DELTA, "pool": POOL, "jobs": args.jobs,
        "pretraining": backbones, "results": results, "dp_step_cost": cost, "upload": upload,
        "goals": goals(results, cost, upload, cfg["fractions"]),
        "seconds": {"data": round(t_data, 1), "pretraining": round(t_pre, 1), "finetuning": round(t_fine, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
