"""Zero-shot diagnosis metrics with the peers' protocol, tables like the paper's, and a file CLI.

Protocol (CT-CLIP's, as in fVLM's and ViSD-Boost's released ``calc_metrics.py``):

* AUC per disease: ``sklearn.metrics.roc_auc_score``.
* Threshold per disease: on the grid ``np.linspace(0, 1, 100)`` the ``t`` minimising
  ``sqrt((1 - TPR)^2 + FPR^2)`` (the ROC point nearest the corner (0, 1)), predictions
  ``score > t`` (strict, like the peers), ties to the LARGER ``t`` (the peers iterate with ``<=``).
  Chosen on the evaluated set itself (peers) or, with ``val_labels``/``val_scores``, on a
  validation set and applied to test (held-out protocol).
* At that threshold: sensitivity, specificity, accuracy ``(TP+TN)/N``, weighted F1
  (``f1_score(average="weighted")``), binary precision, and balanced accuracy ``(SE+SP)/2`` (paper
  Table 10's "ACC"). Macro means over diseases.
* A disease whose evaluated set holds one class gets no AUC and no threshold metrics, is left out
  of every macro mean, and is listed in ``summary["single_class"]``.
* NaN score or label = not evaluated (the scan lacks the anatomy): skipped (ViSD-Boost skips them;
  fVLM sets them to 0) and counted per disease in ``n_skipped``.
* Bootstrap percentile CIs for AUC (``ctvlp.eval.bootstrap``): resample scans (rows) with
  replacement, seeded; per disease over the resamples where it has both classes, macro over the
  resamples where every included disease has both classes.

CLI: ``python -m ctvlp.eval.metrics --labels L.csv --scores S.csv --out DIR`` (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_score, roc_auc_score

from ctvlp.diseases import DISEASE_PRESETS
from ctvlp.eval.bootstrap import bootstrap_auc, percentile_ci
from ctvlp.eval.tables import anatomy_markdown, disease_markdown, summary_line

THRESHOLD_GRID = np.linspace(0.0, 1.0, 100)
ID_COLUMN = "VolumeName"
# Threshold-dependent metrics, in the order of the tables.
AT_THRESHOLD = ("sensitivity", "specificity", "accuracy", "balanced_accuracy", "f1_weighted", "precision")
MACRO_COLUMNS = ("auc", *AT_THRESHOLD)


def find_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The peers' threshold: grid point nearest the ROC corner (0, 1), ties to the larger one.

    Args:
        scores: [N] float scores in [0, 1], no NaN.
        labels: [N] 0/1 with both classes present.
    Returns:
        the chosen grid value ``t`` (predict positive where ``score > t``).
    """
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("find_threshold needs both classes in labels")
    pred_GN = np.asarray(scores, dtype=np.float64)[None, :] > THRESHOLD_GRID[:, None]
    tpr_G = (pred_GN & y).sum(1) / n_pos
    fpr_G = (pred_GN & ~y).sum(1) / n_neg
    dist_G = np.sqrt((1.0 - tpr_G) ** 2 + fpr_G**2)
    # Last index attaining the minimum == the peers' running `if d <= best` loop.
    return float(THRESHOLD_GRID[np.flatnonzero(dist_G == dist_G.min())[-1]])


def metrics_at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """SE, SP, ACC, balanced ACC, weighted F1 and binary precision of ``score > threshold``.

    Args:
        scores: [N] floats; labels: [N] 0/1 with both classes present.
    """
    y = np.asarray(labels).astype(int)
    pred = (np.asarray(scores, dtype=np.float64) > threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    se, sp = tp / (tp + fn), tn / (tn + fp)
    return {
        "sensitivity": se,
        "specificity": sp,
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": (se + sp) / 2.0,
        # zero_division=0: the peers' sklearn default ("warn") also returns 0.0.
        "f1_weighted": float(f1_score(y, pred, average="weighted", zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
    }


@dataclass
class EvalResult:
    """Per-disease and per-anatomy tables plus the macro summary of one evaluation."""

    per_disease: pd.DataFrame  # index: disease
    per_anatomy: pd.DataFrame | None  # index: anatomy; None without a disease -> anatomy map
    summary: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write per_disease.csv/.md, per_anatomy.csv/.md (when mapped), summary.json."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"per_disease_csv": out / "per_disease.csv", "per_disease_md": out / "per_disease.md"}
        self.per_disease.to_csv(paths["per_disease_csv"], index_label="disease")
        paths["per_disease_md"].write_text(disease_markdown(self) + "\n")
        if self.per_anatomy is not None:
            paths["per_anatomy_csv"] = out / "per_anatomy.csv"
            paths["per_anatomy_md"] = out / "per_anatomy.md"
            self.per_anatomy.to_csv(paths["per_anatomy_csv"], index_label="anatomy")
            paths["per_anatomy_md"].write_text(anatomy_markdown(self) + "\n")
        paths["summary_json"] = out / "summary.json"
        paths["summary_json"].write_text(json.dumps(self.summary, indent=2, allow_nan=False) + "\n")
        return paths


def validate_tables(labels: pd.DataFrame, scores: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check two scan x disease tables and align scores to labels' row and column order.

    Both are indexed by scan id with one float column per disease; NaN = not evaluated.
    Raises ValueError naming the offending column/ids: mismatched columns or ids, duplicate ids,
    non-numeric cells, labels other than 0/1, scores outside [0, 1].
    """
    for name, df in (("labels", labels), ("scores", scores)):
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"{name} must be a pandas DataFrame indexed by scan id, got {type(df).__name__}")
        dup = df.index[df.index.duplicated()]
        if len(dup):
            raise ValueError(f"{name}: duplicate scan ids {list(dup[:5])}")
        if df.shape[1] == 0:
            raise ValueError(f"{name}: no disease columns")
    only_l = [c for c in labels.columns if c not in scores.columns]
    only_s = [c for c in scores.columns if c not in labels.columns]
    if only_l or only_s:
        raise ValueError(f"disease columns differ: only in labels {only_l}, only in scores {only_s}")
    ids_l, ids_s = set(labels.index), set(scores.index)
    if ids_l != ids_s:
        raise ValueError(
            f"scan ids differ: {len(ids_l - ids_s)} only in labels (e.g. {sorted(map(str, ids_l - ids_s))[:3]}),"
            f" {len(ids_s - ids_l)} only in scores (e.g. {sorted(map(str, ids_s - ids_l))[:3]})"
        )
    scores = scores.loc[labels.index, labels.columns]
    for name, df in (("labels", labels), ("scores", scores)):
        for col in df.columns:
            if not pd.api.types.is_numeric_dtype(df[col]):
                example = df[col].dropna().iloc[0] if df[col].notna().any() else None
                raise ValueError(f"{name} column {col!r} is not numeric (e.g. {example!r})")
    for col in labels.columns:
        _check_cells("labels", labels[col], ~labels[col].isin([0, 1]), "must be 0/1 or empty")
        _check_cells("scores", scores[col], (scores[col] < 0) | (scores[col] > 1), "must lie in [0, 1] or be empty")
    return labels.astype(np.float64), scores.astype(np.float64)


def _check_cells(what: str, column: pd.Series, bad: pd.Series, rule: str) -> None:
    """ValueError naming the column, the rule, the first bad value and its scan id."""
    bad = column.notna() & bad
    if bad.any():
        first = bad.idxmax()
        raise ValueError(f"{what} column {column.name!r} {rule}; got {column[first]!s} for scan {first!r}")


def _disease_row(y: np.ndarray, s: np.ndarray, threshold: float | None) -> dict:
    """One per-disease row from the evaluated ([n], no NaN) labels and scores."""
    row: dict = {"n_evaluated": len(y), "n_positive": int(y.sum()), "n_negative": int(len(y) - y.sum())}
    if row["n_positive"] == 0 or row["n_negative"] == 0:
        row["status"] = "no_scans" if len(y) == 0 else "single_class"
        return row
    row["auc"] = float(roc_auc_score(y, s))
    t = find_threshold(s, y) if threshold is None else threshold
    row["threshold"] = t
    row["status"] = "ok" if np.isfinite(t) else "no_threshold"
    if np.isfinite(t):
        row.update(metrics_at_threshold(s, y, t))
    return row


def _val_thresholds(val_labels: pd.DataFrame, val_scores: pd.DataFrame, diseases: Sequence[str]) -> dict[str, float]:
    """Held-out protocol: each disease's threshold chosen on validation (NaN if single-class there)."""
    vl, vs = validate_tables(val_labels, val_scores)
    missing = [d for d in diseases if d not in vl.columns]
    if missing:
        raise ValueError(f"validation tables lack disease columns {missing}")
    out = {}
    for d in diseases:
        keep = vl[d].notna() & vs[d].notna()
        y, s = vl[d][keep].to_numpy(), vs[d][keep].to_numpy()
        out[d] = find_threshold(s, y) if 0 < y.sum() < len(y) else float("nan")
    return out


def evaluate(
    labels: pd.DataFrame,
    scores: pd.DataFrame,
    anatomy_of: Mapping[str, str] | None = None,
    *,
    val_labels: pd.DataFrame | None = None,
    val_scores: pd.DataFrame | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> EvalResult:
    """Score a scan x disease table with the peers' protocol (module docstring).

    Args:
        labels, scores: DataFrames indexed by scan id, one column per disease ([N, D]); labels
            0/1, scores in [0, 1]; NaN in either = not evaluated. ``frames_from_arrays`` builds them.
        anatomy_of: disease -> anatomy for the per-anatomy table (must cover every column).
        val_labels, val_scores: when given, thresholds come from these (held-out protocol).
        n_bootstrap: bootstrap resamples for the AUC CIs (0 disables them); seed, level: its seed
            and confidence level.

    From a job spec: ``evaluate(labels, scores, anatomy_map(spec.eval.disease_list(spec.data)),
    n_bootstrap=spec.eval.bootstrap_samples, seed=spec.seed)``, plus the validation tables when
    ``spec.eval.threshold_protocol == "held-out"``.
    """
    if n_bootstrap < 0 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_bootstrap >= 0 and 0 < level < 1, got {n_bootstrap} and {level}")
    labels, scores = validate_tables(labels, scores)
    diseases = list(labels.columns)
    if anatomy_of is not None:
        unmapped = [d for d in diseases if d not in anatomy_of]
        if unmapped:
            raise ValueError(f"anatomy_of has no anatomy for diseases {unmapped}")
    if (val_labels is None) != (val_scores is None):
        raise ValueError("give both val_labels and val_scores (held-out protocol) or neither")
    held_out = val_labels is not None
    thresholds = _val_thresholds(val_labels, val_scores, diseases) if held_out else {}
    rows = {}
    for d in diseases:
        keep = (labels[d].notna() & scores[d].notna()).to_numpy()
        rows[d] = _disease_row(labels[d].to_numpy()[keep], scores[d].to_numpy()[keep], thresholds.get(d))
        rows[d]["n_skipped"] = int((~keep).sum())
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table.reindex(columns=["n_evaluated", "n_skipped", "n_positive", "n_negative", "auc", "auc_ci_low",
                                   "auc_ci_high", "threshold", *AT_THRESHOLD, "status"])
    if anatomy_of is not None:
        table.insert(0, "anatomy", [anatomy_of[d] for d in diseases])
    included = [d for d in diseases if np.isfinite(table.at[d, "auc"])]
    summary = _summary(table, included, held_out, n_bootstrap, seed, level)
    if n_bootstrap > 0 and included:
        boot_BD = bootstrap_auc(labels[included].to_numpy(), scores[included].to_numpy(), n_bootstrap, seed)
        for j, d in enumerate(included):
            table.loc[d, ["auc_ci_low", "auc_ci_high"]] = percentile_ci(boot_BD[:, j], level)
        all_ok = np.isfinite(boot_BD).all(1)
        summary["macro_auc_ci"] = list(percentile_ci(boot_BD[all_ok].mean(1), level)) if all_ok.any() else None
        summary["bootstrap_valid_resamples"] = int(all_ok.sum())
    per_anatomy = _per_anatomy(table.loc[included], anatomy_of) if anatomy_of is not None else None
    return EvalResult(table, per_anatomy, _json_safe(summary))


def _summary(table: pd.DataFrame, included: list[str], held_out: bool, n_boot: int, seed: int, level: float) -> dict:
    # nanmean: held-out diseases without a validation threshold have NaN threshold metrics.
    macro = {c: float(np.nanmean(v)) if np.isfinite(v := table.loc[included, c].to_numpy(float)).any() else None
             for c in MACRO_COLUMNS}
    return {
        "protocol": "held-out threshold (validation -> test)" if held_out else "threshold on the evaluated set",
        "num_diseases": len(table),
        "num_included": len(included),
        "macro": macro,
        "single_class": table.index[table["status"] == "single_class"].tolist(),
        "no_scans": table.index[table["status"] == "no_scans"].tolist(),
        "no_threshold": table.index[table["status"] == "no_threshold"].tolist(),
        "skipped_scans": {d: int(n) for d, n in table["n_skipped"].items() if n},
        "bootstrap": {"n": n_boot, "seed": seed, "level": level},
        "macro_auc_ci": None,
    }


def _per_anatomy(table: pd.DataFrame, anatomy_of: Mapping[str, str]) -> pd.DataFrame:
    """Per-anatomy means over its included diseases (paper Table 2), in ``anatomy_of`` order."""
    order = list(dict.fromkeys(anatomy_of.values()))
    grouped = table.groupby("anatomy", sort=False)
    out = grouped[list(MACRO_COLUMNS)].mean()
    out.insert(0, "num_diseases", grouped.size())
    return out.reindex([a for a in order if a in out.index])


def _json_safe(obj):
    """NaN -> None recursively, so summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def frames_from_arrays(
    ids: Sequence[str], diseases: Sequence[str], labels_ND, scores_ND
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wrap [N, D] label/score arrays (NaN = not evaluated) as the DataFrames ``evaluate`` takes."""
    idx = pd.Index(list(ids), name=ID_COLUMN)
    cols = list(diseases)
    return (pd.DataFrame(np.asarray(labels_ND, dtype=np.float64), index=idx, columns=cols),
            pd.DataFrame(np.asarray(scores_ND, dtype=np.float64), index=idx, columns=cols))


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """Read a labels/scores CSV keyed by ``VolumeName``; empty cells become NaN."""
    df = pd.read_csv(path)
    if ID_COLUMN not in df.columns:
        raise ValueError(f"{what} file {path} has no {ID_COLUMN!r} column (columns: {list(df.columns)[:5]})")
    df[ID_COLUMN] = df[ID_COLUMN].astype(str)
    return df.set_index(ID_COLUMN)


def anatomy_map(diseases: Iterable) -> dict[str, str]:
    """disease name -> anatomy from objects with ``.name`` and ``.anatomy``: ``ctvlp.diseases``
    entries or the spec's ``spec.eval.disease_list(spec.data)`` (``DiseaseSpec``)."""
    out = {}
    for d in diseases:
        if not (hasattr(d, "name") and hasattr(d, "anatomy")):
            raise TypeError(f"expected objects with .name and .anatomy, got {type(d).__name__}")
        out[d.name] = d.anatomy
    return out


def default_anatomy_map(diseases: Sequence[str]) -> dict[str, str]:
    """disease -> anatomy from the ``ctvlp.diseases`` catalogues; unknown names go to "other"."""
    known = {name: a for preset in DISEASE_PRESETS.values() for name, a in anatomy_map(preset).items()}
    return {d: known.get(d, "other") for d in diseases}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; returns 0, or exits with status 2 and a message naming the problem on bad input."""
    p = argparse.ArgumentParser(prog="python -m ctvlp.eval.metrics", description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True, help="CSV: VolumeName + one 0/1 column per disease")
    p.add_argument("--scores", required=True, help="CSV: VolumeName + one [0,1] column per disease")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-labels", help="validation labels CSV (held-out threshold protocol)")
    p.add_argument("--val-scores", help="validation scores CSV (held-out threshold protocol)")
    p.add_argument("--anatomy-map", help="JSON {disease: anatomy}; default: the ctvlp.diseases catalogues")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for AUC CIs (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        labels, scores = read_table(args.labels, "labels"), read_table(args.scores, "scores")
        val = {}
        if args.val_labels or args.val_scores:
            if not (args.val_labels and args.val_scores):
                raise ValueError("--val-labels and --val-scores go together")
            val = {"val_labels": read_table(args.val_labels, "val labels"),
                   "val_scores": read_table(args.val_scores, "val scores")}
        if args.anatomy_map:
            anatomy_of = json.loads(Path(args.anatomy_map).read_text())
            if not isinstance(anatomy_of, dict):
                raise ValueError(f"--anatomy-map {args.anatomy_map} must hold a JSON object {{disease: anatomy}}")
        else:
            anatomy_of = default_anatomy_map(list(labels.columns))
        result = evaluate(labels, scores, anatomy_of, n_bootstrap=args.bootstrap, seed=args.seed, **val)
    except (ValueError, TypeError, OSError) as exc:
        p.exit(2, f"error: {exc}\n")
    paths = result.save(args.out)
    print(summary_line(result))
    print(f"wrote {paths['per_disease_csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
