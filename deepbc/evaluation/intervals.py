"""Confidence intervals of the pooled figures (deepbc.evaluation.pooled); the reasons are in docs/methods.md.

- ``wilson``: the Wilson score interval of a proportion k/n (Wilson 1927). Unlike the percentile
  bootstrap it does not collapse at 0/n or n/n (5/5 gives [0.566, 1]), and its coverage is close
  to nominal for small n, where Clopper-Pearson's is conservative (Brown, Cai & DasGupta 2001).
- ``mover_mean``: the interval of the mean of independent proportions from their Wilson intervals
  by the method of variance estimates recovery (MOVER; Zou & Donner 2008, Newcombe): balanced
  accuracy is the mean of the per-class sensitivities, each over its own patients.
- ``poisson_weights``: the patient bootstrap's draws. Draw b gives each patient a Poisson(1)
  weight (Hanley & MacGibbon 2006: the Poisson approximation of resampling n of n) from a random
  stream seeded by (seed, the patient's id) alone, so a patient has the same weight in draw b in
  every run, fold and protocol that tests it: differences between runs are paired patient by
  patient, and a patient tested in several folds is resampled once, jointly.
- ``percentile``: the percentile interval of the draws where a figure is defined.
"""

import hashlib
from statistics import NormalDist

import numpy as np


def z_value(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: float, n: float, confidence: float) -> list[float] | None:
    """[low, high] of the Wilson score interval of k successes in n trials; None when n is 0."""
    if n <= 0:
        return None
    z = z_value(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Exact at the boundary (float noise would put 5/5's upper limit at 0.9999999999999999).
    low = 0.0 if k <= 0 else max(0.0, centre - half)
    high = 1.0 if k >= n else min(1.0, centre + half)
    return [float(low), float(high)]


def mover_mean(estimates, intervals) -> list[float] | None:
    """[low, high] of the mean of independent proportions, from each one's estimate and interval."""
    if not estimates or any(i is None for i in intervals):
        return None
    p = np.asarray(estimates, dtype=np.float64)
    low, high = np.asarray(intervals, dtype=np.float64).T
    mean = p.mean()
    k = len(p)
    return [float(mean - np.sqrt(((p - low) ** 2).sum()) / k),
            float(mean + np.sqrt(((high - p) ** 2).sum()) / k)]


def _stream_key(patient: str) -> list[int]:
    digest = hashlib.sha256(str(patient).encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def poisson_weights(patients, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(patients)) Poisson(1) weights; column j depends only on (seed, patients[j])."""
    out = np.empty((n_boot, len(patients)), dtype=np.int32)
    for j, patient in enumerate(patients):
        out[:, j] = np.random.default_rng([seed, *_stream_key(patient)]).poisson(1.0, n_boot)
    return out


def percentile(values, confidence: float) -> tuple[list[float] | None, int]:
    """The percentile interval of the finite ``values`` and how many there were (None below 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None, int(len(v))
    alpha = (1 - confidence) / 2 * 100
    return [float(np.percentile(v, alpha)), float(np.percentile(v, 100 - alpha))], int(len(v))
