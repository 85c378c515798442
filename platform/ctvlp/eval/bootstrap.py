"""Bootstrap confidence intervals for ROC AUC: resample scans, vectorised rank AUC, percentiles.

Used by ``ctvlp.eval.metrics``. Resampling is over scans (rows of the scan x disease table), so
one resample serves every disease and the macro mean keeps the diseases' correlation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata


def auc_rows(scores_BN: np.ndarray, labels_BN: np.ndarray, valid_BN: np.ndarray | None = None) -> np.ndarray:
    """Row-wise ROC AUC by the Mann-Whitney rank formula (midranks for ties).

    Hand-written because the bootstrap needs thousands of AUCs: one vectorised ``rankdata`` call
    over [B, N] is ~50x faster than ``roc_auc_score`` per row, and equals it exactly (tested).
    Entries with ``valid_BN`` False are ignored. Returns [B] AUCs, NaN where a row has one class.
    """
    s = np.asarray(scores_BN, dtype=np.float64)
    y = np.asarray(labels_BN).astype(bool)
    valid = np.ones_like(y) if valid_BN is None else np.asarray(valid_BN, dtype=bool)
    # Invalid entries rank above every valid score, so valid ranks are 1..n_valid among themselves.
    ranks = rankdata(np.where(valid, s, np.inf), method="average", axis=1)
    pos = y & valid
    n_pos = pos.sum(1).astype(np.float64)
    n_neg = (~y & valid).sum(1).astype(np.float64)
    u = (ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def bootstrap_auc(
    labels_ND: np.ndarray,
    scores_ND: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    chunk: int = 250,
) -> np.ndarray:
    """AUC of every disease on scan-resampled copies of the table.

    Args:
        labels_ND, scores_ND: [N scans, D diseases]; NaN in either = not evaluated.
        n_bootstrap: number of resamples B; seed: ``np.random.default_rng`` seed.
    Returns:
        [B, D] AUCs, NaN where a resample leaves a disease with one class.
    """
    return bootstrap_auc_tables(labels_ND, [scores_ND], n_bootstrap, seed, chunk)[0]


def bootstrap_auc_tables(
    labels_ND: np.ndarray,
    tables: Sequence[np.ndarray],
    n_bootstrap: int = 1000,
    seed: int = 0,
    chunk: int = 250,
) -> np.ndarray:
    """:func:`bootstrap_auc` of several score tables of the same scans on the *same* resamples.

    The paired bootstrap of a comparison: every model is scored on each resampled test set, so
    the difference of two models' AUCs per resample carries their correlation (the scans both
    find hard) instead of adding two independent intervals.

    Args:
        labels_ND: [N, D] labels; tables: T score tables [N, D] (NaN = not evaluated).
    Returns:
        [T, B, D] AUCs (resample b is the same scans for every table).
    """
    y = np.asarray(labels_ND, dtype=np.float64)
    scores = [np.asarray(s, dtype=np.float64) for s in tables]
    n, d = y.shape
    if any(s.shape != y.shape for s in scores):
        raise ValueError(f"every score table must be [N, D] = {y.shape}, got {[s.shape for s in scores]}")
    rng = np.random.default_rng(seed)
    out = np.empty((len(scores), n_bootstrap, d))
    for start in range(0, n_bootstrap, chunk):  # chunks bound memory to chunk x N per disease
        idx_BN = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
        rows = slice(start, start + len(idx_BN))
        for t, s in enumerate(scores):
            valid = ~np.isnan(y) & ~np.isnan(s)
            for j in range(d):
                out[t, rows, j] = auc_rows(
                    np.nan_to_num(s[idx_BN, j]), np.nan_to_num(y[idx_BN, j]) > 0.5, valid[idx_BN, j]
                )
    return out


def paired_macro_bootstrap(labels_ND: np.ndarray, groups: Mapping[str, Sequence[np.ndarray]],
                           n_bootstrap: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Macro AUC of each group of score tables (one model trained with several seeds) on shared
    scan resamples: per resample, the mean over the group's tables of the mean AUC over diseases.

    Args:
        labels_ND: [N, D] labels of the diseases to average (each with both classes on all N scans).
        groups: name -> score tables [N, D] (its seeds); every table scores the same scans.
    Returns:
        name -> [B] macro AUCs; NaN where a resample leaves some disease with one class (those
        resamples are NaN for every group, so differences stay paired).
    """
    names = list(groups)
    flat = [t for name in names for t in groups[name]]
    aucs = bootstrap_auc_tables(labels_ND, flat, n_bootstrap, seed)  # [T, B, D]
    macro = aucs.mean(-1)  # [T, B]; NaN where a disease had one class
    out, start = {}, 0
    for name in names:
        k = len(groups[name])
        if k == 0:
            raise ValueError(f"group {name!r} has no score table")
        out[name] = macro[start:start + k].mean(0)
        start += k
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` ([B]); (nan, nan) when none are finite."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(v, [tail, 100.0 - tail])
    return float(lo), float(hi)
