"""A finished sweep as files: ranked trial table (CSV + Markdown), objective plots, best spec.

Written under ``<sweep dir>/results/``:

- ``trials.csv`` / ``trials.md``: one row per trial, best first: hyper-parameters, the objective
  and the other validation metrics at the trial's last report, the last step, whether ASHA stopped
  it early, its status and error, its last checkpoint.
- ``objective.png``: the objective against each hyper-parameter (one panel each; log x for
  log-uniform keys; hollow markers = stopped early by ASHA; a star = the best trial).
- ``best_spec.yaml``: the user's spec with the best trial's values, the swept phase's init
  references resolved to the URIs the trials used (so ``jobs/phase<N>.py --spec`` runs it as is).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ctvlp.config import JobSpec, write_resolved

PARAM_PREFIX = "param:"


def trials_frame(results: list[dict[str, Any]], param_keys: list[str], metric: str, mode: str,
                 total_steps: int) -> pd.DataFrame:
    """Rank trials; ``results`` are dicts with ``trial_id``, ``config``, ``metrics`` (last report),
    ``error`` (str or None) and ``path`` (see :func:`from_result_grid`).

    Returns a frame indexed by rank (1 = best; failed trials and trials without the metric last)
    with columns ``trial_id``, ``param:<key>`` per hyper-parameter, ``metric``, the other
    ``val_*`` metrics, ``last_step``, ``stopped_early``, ``status``, ``error``, ``checkpoint``.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    rows = []
    for r in results:
        m = r.get("metrics") or {}
        value = m.get(metric)
        last = m.get("step")
        row = {"trial_id": r["trial_id"]}
        row.update({PARAM_PREFIX + k: r["config"].get(k) for k in param_keys})
        row[metric] = float(value) if value is not None else math.nan
        row.update({k: float(v) for k, v in sorted(m.items())
                    if k.startswith("val_") and k != metric and isinstance(v, (int, float))})
        row["last_step"] = int(last) if last is not None else 0
        row["stopped_early"] = bool(r.get("error") is None and last is not None and last < total_steps)
        row["status"] = ("error" if r.get("error") else "no result" if last is None
                         else "stopped early" if row["stopped_early"] else "completed")
        row["error"] = (str(r["error"]).strip().splitlines() or [""])[-1][:200] if r.get("error") else ""
        row["checkpoint"] = m.get("checkpoint_path", "")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="stable")
    df.index = pd.RangeIndex(1, len(df) + 1, name="rank")
    return df


def from_result_grid(grid) -> list[dict[str, Any]]:
    """Plain dicts from a ``ray.tune.ResultGrid`` (one per trial)."""
    out = []
    for res in grid:
        metrics = dict(res.metrics or {})
        trial_id = metrics.get("trial_id") or Path(res.path).name
        out.append({"trial_id": trial_id, "config": dict(res.config or {}), "metrics": metrics,
                    "error": repr(res.error) if res.error else None, "path": res.path})
    return out


def to_markdown(df: pd.DataFrame, metric: str, title: str) -> str:
    """The table as GitHub Markdown (numbers to 4 significant digits), with a title line."""
    shown = df.drop(columns=["checkpoint"], errors="ignore").copy()
    shown.columns = [c.removeprefix(PARAM_PREFIX) for c in shown.columns]
    header = ["rank", *shown.columns]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in shown.iterrows():
        cells = [str(rank)] + [_fmt(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Ranked by `{metric}` at each trial's last report.")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "/")


def plot_objective(df: pd.DataFrame, param_keys: list[str], metric: str, path: str | Path,
                   log_keys: tuple[str, ...] = ()) -> Path:
    """One scatter panel per hyper-parameter: ``metric`` (y) against its value (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not param_keys:
        raise ValueError("no hyper-parameters to plot")
    fig, axes = plt.subplots(1, len(param_keys), figsize=(4.2 * len(param_keys), 3.4), squeeze=False)
    ok = df[df[metric].notna()]
    for ax, key in zip(axes[0], param_keys):
        x = ok[PARAM_PREFIX + key]
        early = ok["stopped_early"].astype(bool)
        ax.scatter(x[~early], ok.loc[~early, metric], c="tab:blue", label="completed")
        ax.scatter(x[early], ok.loc[early, metric], facecolors="none", edgecolors="tab:blue",
                   label="stopped early (ASHA)")
        if len(ok):
            ax.scatter(x.iloc[:1], ok[metric].iloc[:1], marker="*", s=220, c="tab:red", label="best", zorder=3)
        if key in log_keys:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(df: pd.DataFrame, out_dir: str | Path, *, param_keys: list[str], metric: str, title: str,
                  best_spec: JobSpec | None, log_keys: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write ``trials.csv``, ``trials.md``, ``objective.png`` and ``best_spec.yaml`` (when given)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "trials.csv", "markdown": out / "trials.md"}
    df.to_csv(paths["csv"])
    paths["markdown"].write_text(to_markdown(df, metric, title))
    if df[metric].notna().any():
        paths["plot"] = plot_objective(df, param_keys, metric, out / "objective.png", log_keys)
    if best_spec is not None:
        paths["best_spec"] = write_resolved(best_spec, out, "best_spec.yaml")
    return paths
