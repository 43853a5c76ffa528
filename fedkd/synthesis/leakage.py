"""How much of a client's training set its synthetic images give away (measured, not bounded).

Two figures, computed on the client (only without privacy: they read the data) and reported
in the round's metrics and ``fedkd report``:

* **nearest-neighbour distances**: the mean L2 distance (pixels in [-1, 1]) from each synthetic
  image to its nearest training image, and to its nearest held-out image of the same client (its
  local test split, drawn from the same distribution). A ratio train/held-out well below 1 means
  the images sit on training points: memorised.
* **membership-inference AUC**: an attacker who holds the synthetic set scores a candidate image
  by minus its distance to the nearest synthetic image; the AUC of that score separating the
  client's training images (members) from its held-out images (non-members). 0.5: no signal.
"""

from __future__ import annotations

import numpy as np


def nearest_distances(queries: np.ndarray, references: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each query image, the L2 distance to its nearest reference image (flattened)."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
    if len(r) == 0:
        raise ValueError("no reference images")
    r_sq = (r * r).sum(axis=1)
    out = np.empty(len(q))
    for start in range(0, len(q), chunk):
        block = q[start:start + chunk]
        d2 = (block * block).sum(axis=1)[:, None] - 2.0 * block @ r.T + r_sq[None, :]
        out[start:start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def leakage(synthetic: np.ndarray, train: np.ndarray, heldout: np.ndarray) -> dict[str, float]:
    """``leak-nn-train``, ``leak-nn-heldout`` (mean nearest distances), their ratio
    ``leak-nn-ratio`` and ``leak-mia-auc`` (see the module docstring)."""
    if len(synthetic) == 0 or len(train) == 0 or len(heldout) == 0:
        raise ValueError("leakage needs synthetic, training and held-out images")
    to_train = nearest_distances(synthetic, train).mean()
    to_heldout = nearest_distances(synthetic, heldout).mean()
    members = -nearest_distances(train, synthetic)
    non_members = -nearest_distances(heldout, synthetic)
    return {"leak-nn-train": float(to_train), "leak-nn-heldout": float(to_heldout),
            "leak-nn-ratio": float(to_train / to_heldout) if to_heldout > 0 else float("nan"),
            "leak-mia-auc": roc_auc(members, non_members)}
