"""Aggregate classification metrics (pure; scikit-learn does the maths).

Inputs are per-example arrays that never leave the site; outputs are aggregates only.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score


def binary_classification_metrics(labels: np.ndarray, positive_prob: np.ndarray) -> dict[str, float]:
    """Loss (cross-entropy, nats), accuracy at 0.5, and AUROC of a binary classifier.

    Args:
        labels: shape ``(n,)``, values in {0, 1}.
        positive_prob: shape ``(n,)``, predicted probability of class 1.

    Returns:
        ``{"loss", "accuracy", "auroc"}``; ``auroc`` is NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(int).ravel()
    prob = np.clip(np.asarray(positive_prob, dtype=np.float64).ravel(), 1e-7, 1 - 1e-7)
    if labels.size == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "auroc": float("nan")}
    both_classes = np.unique(labels).size == 2
    return {
        "loss": float(log_loss(labels, prob, labels=[0, 1])),
        "accuracy": float(accuracy_score(labels, prob >= 0.5)),
        "auroc": float(roc_auc_score(labels, prob)) if both_classes else float("nan"),
    }
