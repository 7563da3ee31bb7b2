"""Uncertainty of metric means: bootstrap confidence intervals and a paired test between models."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over users (resampling users with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_permutation_test(a: np.ndarray, b: np.ndarray, n_perm: int = 10000, seed: int = 0) -> dict[str, float]:
    """Two-sided sign-flip permutation test of mean(a - b) = 0 over the same users.

    Under the null the per-user difference is symmetric around 0, so flipping each user's sign at
    random gives its distribution. Returns the mean difference and the p-value.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    observed = abs(d.mean())
    signs = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    p = (1 + int((null >= observed - 1e-15).sum())) / (n_perm + 1)
    return {"mean_difference": float(d.mean()), "p_value": float(p), "users": int(len(d))}
