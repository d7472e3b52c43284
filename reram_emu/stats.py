"""Confidence intervals of accuracies measured over noise keys and test images."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_ci", "crossed_ci", "difference_ci"]


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t confidence interval ``(mean, low, high)`` of a sample."""
    from scipy import stats
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * np.std(values, ddof=1)
                 / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def crossed_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a confidence interval ``(mean, low, high)`` of ``values`` (K, N): one value per
    noise key (rows) and test image (columns), both random samples (a crossed design).

    The variance of the grand mean is estimated as ``var(row means) / K + var(column means) /
    N`` (each term also holds a share of the key x image interaction, so the estimate errs on
    the wide side), with Satterthwaite's degrees of freedom. A 1-D array or K = 1 (one
    deterministic read) leaves the images' term alone: the paired interval over images. Use it
    for accuracies (values 0/1) or paired differences of correctness (values -1/0/1) on the
    same images.
    """
    from scipy import stats
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be (keys, images), got shape {values.shape}")
    k, n = values.shape
    mean = float(np.mean(values))
    terms = []  # (variance of the mean, degrees of freedom)
    if k > 1:
        terms.append((np.var(np.mean(values, axis=1), ddof=1) / k, k - 1))
    if n > 1:
        terms.append((np.var(np.mean(values, axis=0), ddof=1) / n, n - 1))
    var = sum(t for t, _ in terms)
    if var == 0:
        return mean, mean, mean
    dof = var ** 2 / sum(t ** 2 / d for t, d in terms)
    half = float(stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(var))
    return mean, mean - half, mean + half


def difference_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` with a Welch (unequal variances) t interval."""
    from scipy import stats
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    return diff, diff - half, diff + half
