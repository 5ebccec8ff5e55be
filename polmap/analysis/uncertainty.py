"""The uncertainty measures of a class prediction, defined once (numpy only).

polmap shows, stores and samples by these, under these names:

``normalised entropy``
    Shannon entropy of the class probabilities divided by ``log K``: 0 when
    one class has all the probability, 1 when all ``K`` classes are equally
    likely. The Map page's "uncertainty", its fade, and the prediction file's
    ``entropy``.
``margin``
    Probability of the most likely class minus that of the runner-up: 1 when
    certain, 0 for a tie. Adaptive sampling may rank by ``1 - margin``.
``disagreement``
    Entropy of the ensemble mean minus the members' mean entropy, over
    ``log K`` (the mutual information between prediction and member): how
    much the ensemble members contradict each other.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["normalise", "normalised_entropy", "margin", "disagreement", "NAMES", "DEFINITIONS"]

#: The name each measure carries in the app, the files and the CLI.
NAMES = {"entropy": "normalised entropy", "margin": "margin (p1 - p2)", "disagreement": "ensemble disagreement"}
#: What each measure is, in one sentence (shown in the app's help and stored beside the arrays).
DEFINITIONS = {
    "entropy": "the entropy of the class probabilities divided by log K: 0 when one class is certain, "
               "1 when all classes are equally likely",
    "margin": "the probability of the most likely class minus that of the runner-up: 1 certain, 0 a tie",
    "disagreement": "the entropy of the ensemble mean minus the members' mean entropy, over log K: "
                    "how much the ensemble members contradict each other",
}


def normalise(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities renormalised to sum 1 over the last axis.

    Negative values count as 0. A position whose probabilities are not all
    finite, or sum to 0, becomes uniform: unknown means fully uncertain.

    Parameters
    ----------
    probabilities : ndarray, shape (..., K)

    Returns
    -------
    ndarray of float64, shape (..., K)
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise ValueError(f"probabilities need a class axis (..., K), found shape {p.shape}")
    K = p.shape[-1]
    q = np.clip(np.where(np.isfinite(p), p, 0.0), 0.0, None)
    total = q.sum(axis=-1, keepdims=True)
    bad = (~np.isfinite(p).all(axis=-1, keepdims=True)) | (total <= 0)
    return np.where(bad, 1.0 / K, q / np.where(total > 0, total, 1.0))


def _entropy(q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=-1)


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy / ``log K`` in [0, 1] (0 for a single class).

    Parameters
    ----------
    probabilities : ndarray, shape (..., K)
        See :func:`normalise` for how unusable values are treated.

    Returns
    -------
    ndarray of float64, shape (...)
    """
    q = normalise(probabilities)
    K = q.shape[-1]
    if K < 2:
        return np.zeros(q.shape[:-1])
    return np.clip(_entropy(q) / math.log(K), 0.0, 1.0)


def margin(probabilities: np.ndarray) -> np.ndarray:
    """First minus second most likely class probability, in [0, 1] (1 for a single class).

    Parameters
    ----------
    probabilities : ndarray, shape (..., K)

    Returns
    -------
    ndarray of float64, shape (...)
    """
    q = normalise(probabilities)
    if q.shape[-1] < 2:
        return np.ones(q.shape[:-1])
    top2 = np.sort(q, axis=-1)[..., -2:]
    return np.clip(top2[..., 1] - top2[..., 0], 0.0, 1.0)


def disagreement(members: np.ndarray) -> np.ndarray:
    """Ensemble disagreement: (entropy of the mean - mean member entropy) / ``log K``, in [0, 1].

    Parameters
    ----------
    members : ndarray, shape (M, ..., K)
        Each member's class probabilities.

    Returns
    -------
    ndarray of float64, shape (...)
        0 when the members agree (also for a single member).
    """
    m = normalise(members)
    K = m.shape[-1]
    if m.shape[0] < 2 or K < 2:
        return np.zeros(m.shape[1:-1])
    mi = _entropy(m.mean(axis=0)) - _entropy(m).mean(axis=0)
    return np.clip(mi / math.log(K), 0.0, 1.0)
