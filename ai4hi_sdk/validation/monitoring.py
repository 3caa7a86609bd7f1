"""Drift monitoring at a site: features of its images, a local reference, and two-sample tests.

Per image (all stay at the site):

* DICOM metadata: ``manufacturer`` (normalised), ``model`` (ManufacturerModelName) — categorical;
  ``kvp`` (KVP, kV) — numeric when present;
* intensity statistics in modality units (before any window/normalisation, so a recalibrated
  detector shows): ``intensity_mean``, ``intensity_std``, ``intensity_p95``;
* model outputs of the deployed model: ``score`` (P(class 1)) and an embedding (the input of the
  model's last ``nn.Linear``, shape ``(n, d)``).

When a site validates a model it saves these features as its **reference** for that model
(``<site workspace>/ai4hi/drift_reference/<model sha256[:16]>.npz``, never sent). A monitoring task
recomputes them on the site's current data and compares: chi-square for categorical tables, KS
for numeric features, Gaussian-kernel MMD with a permutation test for the embeddings, combined by
a Bonferroni :class:`~ai4hi_sdk.validation.drift.DriftAlarm`. Only the tests' statistics and
p-values leave the site (:func:`drift_report`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ai4hi_sdk.validation.drift import DriftAlarm, categorical_drift, mmd_permutation_test, numeric_drift

REFERENCE_DIR = Path("ai4hi") / "drift_reference"
CATEGORICAL = ("manufacturer", "model")
NUMERIC = ("kvp", "intensity_mean", "intensity_std", "intensity_p95", "score")


@dataclass
class DriftFeatures:
    """Per-image features of one site's data (``n`` images).

    Attributes:
        categorical: name -> ``n`` strings.
        numeric: name -> float array ``(n,)`` (NaN where a header is missing).
        embedding: float array ``(n, d)`` or ``None`` without a model.
    """

    categorical: dict[str, list[str]] = field(default_factory=dict)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    embedding: np.ndarray | None = None

    @property
    def n(self) -> int:
        for values in self.categorical.values():
            return len(values)
        for array in self.numeric.values():
            return len(array)
        return 0

    def save(self, path: str | Path) -> Path:
        """Write to a local ``.npz`` (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"num__{k}": np.asarray(v, float) for k, v in self.numeric.items()}
        arrays["categorical_json"] = np.frombuffer(json.dumps(self.categorical).encode(), dtype=np.uint8)
        if self.embedding is not None:
            arrays["embedding"] = np.asarray(self.embedding, float)
        tmp = path.with_name(path.name + ".tmp.npz")
        # every array is float or uint8, so no pickles (np.load refuses them too); naming the keyword also
        # keeps mypy from matching **arrays against it
        np.savez(tmp, allow_pickle=False, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DriftFeatures":
        with np.load(path) as data:
            numeric = {k[len("num__"):]: data[k] for k in data.files if k.startswith("num__")}
            categorical = json.loads(bytes(data["categorical_json"]).decode())
            embedding = data["embedding"] if "embedding" in data.files else None
        return cls(categorical=categorical, numeric=numeric, embedding=embedding)


def header_and_intensity_features(paths: Sequence[str | Path]) -> DriftFeatures:
    """Metadata and intensity features of DICOM files (read locally with pydicom)."""
    import pydicom

    from ai4hi_sdk.data.subgroups import normalise_manufacturer
    from ai4hi_sdk.data.transforms import load_pixels

    manu, model, kvp, mean, std, p95 = [], [], [], [], [], []
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        manu.append(normalise_manufacturer(ds.get("Manufacturer", "")))
        model.append(str(ds.get("ManufacturerModelName", "") or "unknown").strip() or "unknown")
        try:
            kvp.append(float(ds.get("KVP")))
        except (TypeError, ValueError):
            kvp.append(float("nan"))
        pixels = load_pixels(Path(path), apply_voi=False).astype(np.float64)
        mean.append(pixels.mean())
        std.append(pixels.std())
        p95.append(np.percentile(pixels, 95))
    return DriftFeatures(
        categorical={"manufacturer": manu, "model": model},
        numeric={"kvp": np.array(kvp), "intensity_mean": np.array(mean), "intensity_std": np.array(std),
                 "intensity_p95": np.array(p95)},
    )


def model_output_features(model: Any, loader: Any, device: Any = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(n,)`` (softmax P(class 1), or sigmoid of a single logit) and embeddings ``(n, d)``
    (input of the model's last ``nn.Linear``) over ``loader`` batches of ``(images, ...)``."""
    import torch
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    captured: list[torch.Tensor] = []
    hook = linears[-1].register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach().float().cpu())) \
        if linears else None
    scores = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                logits = model(images.to(device)).float().cpu()
                scores.append(torch.softmax(logits, 1)[:, 1] if logits.shape[1] > 1 else torch.sigmoid(logits[:, 0]))
    finally:
        if hook is not None:
            hook.remove()
    score = torch.cat(scores).numpy() if scores else np.zeros(0)
    emb = torch.cat(captured).flatten(1).numpy() if captured else score[:, None]
    return score.astype(np.float64), emb.astype(np.float64)


def _counts(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def compare_features(reference: DriftFeatures, current: DriftFeatures, *, alpha: float = 0.05,
                     n_permutations: int = 500, seed: int = 0, max_mmd_samples: int = 300) -> DriftAlarm:
    """Two-sample tests of every feature present on both sides, combined by Bonferroni.

    Numeric features that are missing (all NaN) on either side are skipped; the MMD uses at most
    ``max_mmd_samples`` images per side (seeded subsample) to bound the kernel's memory.
    """
    alarm = DriftAlarm(alpha=alpha)
    for name in CATEGORICAL:
        if name in reference.categorical and name in current.categorical:
            alarm.add(name, categorical_drift(_counts(reference.categorical[name]), _counts(current.categorical[name])))
    for name in NUMERIC:
        if name in reference.numeric and name in current.numeric:
            r, c = np.asarray(reference.numeric[name], float), np.asarray(current.numeric[name], float)
            r, c = r[np.isfinite(r)], c[np.isfinite(c)]
            if r.size >= 2 and c.size >= 2:
                alarm.add(name, numeric_drift(r, c))
    if reference.embedding is not None and current.embedding is not None \
            and reference.embedding.shape[1:] == current.embedding.shape[1:]:
        rng = np.random.default_rng(seed)
        r, c = reference.embedding, current.embedding
        if len(r) > max_mmd_samples:
            r = r[rng.choice(len(r), max_mmd_samples, replace=False)]
        if len(c) > max_mmd_samples:
            c = c[rng.choice(len(c), max_mmd_samples, replace=False)]
        alarm.add("embedding_mmd", mmd_permutation_test(r, c, n_permutations=n_permutations, seed=seed))
    return alarm


def drift_report(alarm: DriftAlarm, n_reference: int, n_current: int) -> dict:
    """What leaves the site: per test ``{statistic, p_value[, dof]}``, the alarm and the sample sizes."""
    summary = alarm.summary()
    return {
        "alarm": bool(summary["alarm"]),
        "alpha": summary["alpha"],
        "corrected_alpha": summary["corrected_alpha"],
        "n_reference": int(n_reference),
        "n_current": int(n_current),
        "tests": {name: {k: v for k, v in r.items() if k != "test"} for name, r in summary["tests"].items()},
        "triggered": {name: 1.0 for name in summary["triggered"]},
    }


def reference_path(site_workspace: str | Path, model_sha256: str) -> Path:
    return Path(site_workspace) / REFERENCE_DIR / f"{model_sha256[:16]}.npz"
