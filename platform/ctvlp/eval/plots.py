"""Run-report pictures (PNG): ROC curves, t-SNE (paper Fig. 3), token activation histograms
(paper Fig. 5), codebook usage, training loss curves.

Every function takes plain arrays / DataFrames, writes one PNG and returns its path. Figures are
built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never through ``pyplot``:
no global backend switch, no figure registry to leak, safe inside Ray workers and threads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from sklearn.metrics import roc_auc_score, roc_curve
from threadpoolctl import threadpool_limits

NORMAL_COLOR, ABNORMAL_COLOR = "tab:blue", "tab:red"  # paper Fig. 3: normal blue, abnormal red


def _grid(n_panels: int, max_cols: int = 4, panel: tuple[float, float] = (4.0, 3.4)) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes in rows of ``max_cols``; unused cells hidden."""
    if n_panels < 1:
        raise ValueError("nothing to plot: no panels")
    cols = min(max_cols, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel[0] * cols, panel[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return out


def plot_roc_curves(
    labels: pd.DataFrame, scores: pd.DataFrame, anatomy_of: Mapping[str, str], path: str | Path
) -> Path:
    """ROC curves, one panel per anatomy, one curve per disease (legend: AUC).

    Args:
        labels, scores: scan x disease DataFrames as for ``ctvlp.eval.metrics.evaluate``
            ([N, D]; NaN = not evaluated, skipped). Single-class diseases are drawn as a note only.
        anatomy_of: disease -> anatomy; panels follow its order.
    """
    missing = [d for d in labels.columns if d not in anatomy_of]
    if missing:
        raise ValueError(f"anatomy_of has no anatomy for diseases {missing}")
    if list(scores.columns) != list(labels.columns):
        raise ValueError("labels and scores must have the same disease columns in the same order")
    anatomies = [a for a in dict.fromkeys(anatomy_of.values()) if any(anatomy_of[d] == a for d in labels.columns)]
    fig, axes = _grid(len(anatomies))
    for ax, anatomy in zip(axes, anatomies, strict=True):
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
        for d in (c for c in labels.columns if anatomy_of[c] == anatomy):
            keep = labels[d].notna() & scores[d].notna()
            y, s = labels[d][keep].to_numpy().astype(int), scores[d][keep].to_numpy()
            if y.min(initial=0) == y.max(initial=0):
                ax.plot([], [], " ", label=f"{d}: one class")
                continue
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, lw=1.4, label=f"{d} ({roc_auc_score(y, s):.2f})")
        ax.set(title=anatomy, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_tsne(
    embeddings_NE: np.ndarray,
    abnormal_N: np.ndarray,
    anatomy_N: Sequence,
    path: str | Path,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    max_points: int = 1000,
    max_iter: int = 1000,
) -> Path:
    """t-SNE of anatomy embeddings, normal (blue) vs abnormal (red); one panel per anatomy.

    Each anatomy gets its own t-SNE fit (a joint fit mostly separates anatomies from each other,
    which hides the normal/abnormal structure that paper Fig. 3 is about).

    Args:
        embeddings_NE: [N, E] embeddings (N anatomy instances). abnormal_N: [N] 0/1.
        anatomy_N: [N] anatomy name (or id) of each row. perplexity: capped at (n - 1) / 3 per
            anatomy. max_points: per-anatomy subsample (seeded) to bound the fit's cost.
        max_iter: t-SNE optimisation steps (sklearn's default 1000; its minimum 250 for tests).
    """
    x = np.asarray(embeddings_NE, dtype=np.float32)
    y = np.asarray(abnormal_N).astype(int)
    groups = np.asarray(anatomy_N)
    if x.ndim != 2 or len(y) != len(x) or len(groups) != len(x):
        raise ValueError(f"need embeddings [N, E], abnormal [N], anatomy [N]; got {x.shape}, {y.shape}, {groups.shape}")
    names = list(dict.fromkeys(groups.tolist()))
    fig, axes = _grid(len(names), panel=(3.6, 3.4))
    rng = np.random.default_rng(seed)
    for ax, name in zip(axes, names, strict=True):
        idx = np.flatnonzero(groups == name)
        if len(idx) > max_points:
            idx = np.sort(rng.choice(idx, max_points, replace=False))
        ax.set(title=f"{name} (n={len(idx)})", xticks=[], yticks=[])
        if len(idx) < 5:  # t-SNE needs perplexity < n; below 5 points the picture says nothing
            ax.text(0.5, 0.5, "too few samples", ha="center", va="center", transform=ax.transAxes)
            continue
        tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(idx) - 1) / 3), init="pca",
                    learning_rate="auto", max_iter=max_iter, random_state=seed)
        # One OpenMP thread: the fits are small (<= max_points), and on a busy machine OpenMP's
        # spinning workers made a 80-point fit take 38 s instead of 2 s (measured, 2 cores, load 24).
        with threadpool_limits(limits=1):
            z = tsne.fit_transform(x[idx])
        for value, color, label in ((0, NORMAL_COLOR, "normal"), (1, ABNORMAL_COLOR, "abnormal")):
            sel = y[idx] == value
            ax.scatter(z[sel, 0], z[sel, 1], s=6, c=color, alpha=0.7, label=f"{label} ({int(sel.sum())})")
        ax.legend(fontsize=7, markerscale=2)
    return _save(fig, path)


def plot_activation_histograms(
    baseline,
    boosted,
    path: str | Path,
    *,
    bins: int = 100,
    labels: tuple[str, str] = ("w/o VSDB", "w/ VSDB"),
    near_zero: float = 0.05,
) -> Path:
    """Histograms of vision-token activations without vs with boosting (paper Fig. 5).

    Args:
        baseline, boosted: arrays of activations (any shape, flattened), or mappings
            anatomy -> array for one panel per anatomy (same keys in both).
        near_zero: the legend reports the share of activations with ``|a| < near_zero``
            (Fig. 5's claim: boosting concentrates activations near zero).
    """
    if isinstance(baseline, Mapping) != isinstance(boosted, Mapping):
        raise TypeError("baseline and boosted must both be arrays or both be mappings anatomy -> array")
    if not isinstance(baseline, Mapping):
        baseline, boosted = {"all tokens": baseline}, {"all tokens": boosted}
    if list(baseline) != list(boosted):
        raise ValueError(f"panel keys differ: {list(baseline)} vs {list(boosted)}")
    fig, axes = _grid(len(baseline), max_cols=3)
    for ax, key in zip(axes, baseline, strict=True):
        a = np.asarray(baseline[key], dtype=np.float64).ravel()
        b = np.asarray(boosted[key], dtype=np.float64).ravel()
        if a.size == 0 or b.size == 0:
            raise ValueError(f"panel {key!r}: empty activation array")
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins)  # shared bins: comparable bars
        for values, color, label in ((a, "tab:gray", labels[0]), (b, "tab:orange", labels[1])):
            share = float(np.mean(np.abs(values) < near_zero))
            ax.hist(values, bins=edges, color=color, alpha=0.55, label=f"{label} (|a|<{near_zero:g}: {share:.0%})")
        ax.set(title=str(key), xlabel="activation", ylabel="frequency")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_codebook_usage(counts_MK: np.ndarray, anatomies: Sequence[str], path: str | Path) -> Path:
    """Codebook usage per anatomy: usage-share heatmap [M, K] and, per anatomy, codes used and
    usage perplexity ``exp(entropy)`` (K = uniform use of every code, 1 = collapse to one code).

    Args:
        counts_MK: [M, K] non-negative assignment counts (anatomy m chose code k).
        anatomies: M names.
    """
    counts = np.asarray(counts_MK, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != len(anatomies):
        raise ValueError(f"counts must be [M={len(anatomies)}, K], got {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    totals = counts.sum(1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(share > 0, share * np.log(share), 0.0), axis=1)
    perplexity = np.where(totals[:, 0] > 0, np.exp(entropy), 0.0)
    used = (counts > 0).sum(1)
    m, k = counts.shape
    fig = Figure(figsize=(11, 1.2 + 0.35 * m), layout="constrained")
    FigureCanvasAgg(fig)
    ax_map, ax_bar = fig.subplots(1, 2, width_ratios=(3, 1), sharey=True)
    im = ax_map.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax_map.set(yticks=range(m), yticklabels=list(anatomies), xlabel=f"code index (K={k})", title="usage share")
    fig.colorbar(im, ax=ax_map, fraction=0.03)
    ax_bar.barh(range(m), used, color="0.7", label="codes used")
    ax_bar.barh(range(m), perplexity, color="tab:green", height=0.4, label="perplexity")
    ax_bar.set(xlim=(0, k), xlabel="codes", title="used / perplexity")
    ax_bar.legend(fontsize=7)
    return _save(fig, path)


def read_metric_rows(path: str | Path) -> list[dict]:
    """Rows of a metrics file: CSV (header row) or JSON lines (one object per line)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return pd.read_csv(p).to_dict("records")
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{p}: every JSON line must be an object with 'step' and '*_loss' keys")
    return rows


def loss_series(rows: Sequence[Mapping]) -> dict[str, list[tuple[float, float]]]:
    """``{key or "phase/key": [(step, value), ...]}`` for every ``*_loss`` key of metrics rows."""
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if "step" not in row:
            raise ValueError(f"metrics row without 'step': {dict(row)}")
        prefix = f"{row['phase']}/" if row.get("phase") not in (None, "") else ""
        for key, value in row.items():
            if str(key).endswith("_loss") and value is not None and np.isfinite(float(value)):
                series.setdefault(prefix + str(key), []).append((float(row["step"]), float(value)))
    return series


def plot_loss_curves(source, path: str | Path, *, log_y: bool = False) -> Path:
    """Training loss curves, one panel per series.

    Args:
        source: mapping name -> [(step, value), ...], or a path to a CSV / JSON-lines metrics file
            whose rows hold ``step`` and ``*_loss`` keys (and optionally ``phase``).
        log_y: logarithmic y axis.
    """
    series = loss_series(read_metric_rows(source)) if isinstance(source, str | Path) else dict(source)
    if not series:
        raise ValueError("no loss series to plot (no '*_loss' keys found)")
    fig, axes = _grid(len(series), max_cols=3, panel=(4.2, 3.0))
    for ax, (name, points) in zip(axes, series.items(), strict=True):
        pts = np.asarray(sorted(points), dtype=np.float64).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], lw=1.2, marker="." if len(pts) < 30 else None)
        ax.set(title=name, xlabel="step", ylabel="loss", yscale="log" if log_y else "linear")
        ax.grid(alpha=0.3)
    return _save(fig, path)
