"""Ablation of the training phases (paper Table 5 rows on our data), one comparison table.

Rows are overlays in ``jobs/specs/ablation/``: ``p2_only`` (alignment alone), ``p1_p2`` (+ disease
contrastive pre-training) and ``full`` (+ normality VQ-VAE and boosted fine-tuning); the baselines
``clip``, ``fvlm``, ``vsei``, ``asg`` and ``medslip`` (other methods training phase 2,
``methods.phase2_task``) live there too and are compared by ``jobs/compare.py``. Each overlay
is merged over the run's ``--spec`` (+ overrides); the phases a row needs (the init references of
its ``eval.model`` phase, transitively) are trained through ``jobs.pipeline.run_pipeline`` and its
model is evaluated by ``jobs.evaluate.evaluate_model``. Rows keep the base spec's name, so they
share identical phase runs (``p1_p2`` and ``full`` train phases 1-2 once: run names hash the
phase's settings). The table (macro AUC with bootstrap 95% CI, and the threshold metrics) is
written as CSV and Markdown, plus an HTML page, under ``<storage.root>/<name>-ablation/``.

Usage: ``python jobs/ablation.py --spec jobs/specs/<run>.yaml [--dry-run] [key=value ...]``.
:func:`compare` also takes already trained exports (``{row: export URI}``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from ctvlp.config import is_phase_ref, settable_dict, spec_from_dict, to_yaml  # noqa: E402
from ctvlp.eval.metrics import EvalResult  # noqa: E402
from ctvlp.eval.report import write_report  # noqa: E402
from ctvlp.eval.tables import auc_with_ci, markdown_table, pct  # noqa: E402
from ingest.storage import is_s3, join  # noqa: E402
from jobs import common  # noqa: E402

ROWS_DIR = Path(__file__).resolve().parent / "specs" / "ablation"
ROWS = ("p2_only", "p1_p2", "full")  # paper Table 5 order; p1_p2 before full so full reuses its runs
DESCRIPTIONS = {"p2_only": "phase 2 (alignment) only", "p1_p2": "phase 1 + phase 2",
                "full": "phases 1-4 (+ normality VQ-VAE, boosting)",
                "clip": "CLIP (global image-report alignment)", "fvlm": "fVLM's recipe (anatomy-wise, soft targets)",
                "vsei": "instance-level phase 1 (VSEI) + phase 2",
                "asg": "ASG (3D): IRA + ARSA on masks + IRL + ERL",
                "medslip": "MeDSLIP (3D): dual-stream existence scores"}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def row_spec(base: Any, row: str) -> Any:
    """``base`` with the overlay ``jobs/specs/ablation/<row>.yaml`` merged over it (validated)."""
    path = ROWS_DIR / f"{row}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown ablation row {row!r}; available: {sorted(p.stem for p in ROWS_DIR.glob('*.yaml'))}")
    overlay = yaml.safe_load(path.read_text()) or {}
    return spec_from_dict(_merge(settable_dict(base), overlay))


def required_phases(spec: Any, last: int) -> tuple[int, ...]:
    """Phases needed to train phase ``last``: it and, transitively, its init phase references."""
    need, todo = set(), [last]
    while todo:
        n = todo.pop()
        if n not in need:
            need.add(n)
            todo += [int(ref[-1]) for ref in spec.phase(n).init.refs().values() if is_phase_ref(ref)]
    return tuple(sorted(need))


def eval_phase(spec: Any) -> int:
    if not is_phase_ref(spec.eval.model):
        raise ValueError(f"ablation rows evaluate a phase reference ('phase2', 'phase4'), got eval.model={spec.eval.model!r}")
    return int(spec.eval.model[-1])


def comparison_table(results: dict[str, EvalResult]) -> pd.DataFrame:
    """One row per ablation row: macro AUC, its CI, and the macro threshold metrics (fractions)."""
    rows = []
    for name, r in results.items():
        m, ci = r.summary["macro"], r.summary.get("macro_auc_ci") or [None, None]
        rows.append({"row": name, "model": DESCRIPTIONS.get(name, name), "macro_auc": m["auc"],
                     "auc_ci_low": ci[0], "auc_ci_high": ci[1], "sensitivity": m["sensitivity"],
                     "specificity": m["specificity"], "accuracy": m["accuracy"],
                     "balanced_accuracy": m["balanced_accuracy"], "f1_weighted": m["f1_weighted"],
                     "precision": m["precision"], "num_diseases": r.summary["num_included"]})
    return pd.DataFrame(rows).set_index("row")


def table_markdown(table: pd.DataFrame) -> str:
    """Paper Table 5 style (percent): model, AUC [95% CI], ACC, bal. ACC, F1, Prec."""
    header = ["Row", "Model", "AUC [95% CI]", "SE", "SP", "ACC", "bal. ACC", "F1 (w)", "Prec", "diseases"]
    rows = [[name, r.model, auc_with_ci(r.macro_auc, r.auc_ci_low, r.auc_ci_high), pct(r.sensitivity),
             pct(r.specificity), pct(r.accuracy), pct(r.balanced_accuracy), pct(r.f1_weighted), pct(r.precision),
             str(r.num_diseases)] for name, r in table.iterrows()]
    return markdown_table(header, rows)


def compare(base: Any, exports: dict[str, str], out_uri: str | None = None) -> dict[str, Any]:
    """Evaluate each row's export and write the comparison; returns {"table", "results", "paths"}.

    Args:
        base: the base spec (each row's overlay is merged over it for its eval settings).
        exports: row name -> export URI (ordered as the table's rows).
        out_uri: output directory (default ``<storage.root>/<name>-ablation``).
    """
    from jobs.evaluate import evaluate_model

    out_uri = out_uri or join(base.storage.root.rstrip("/"), f"{base.name}-ablation")
    results = {}
    for row, uri in exports.items():
        spec = row_spec(base, row) if (ROWS_DIR / f"{row}.yaml").is_file() else base
        results[row] = evaluate_model(spec, uri, join(out_uri, row))["primary"]
    table = comparison_table(results)
    with tempfile.TemporaryDirectory(prefix="ctvlp-ablation-") as tmp:
        work = Path(tmp) if is_s3(out_uri) else Path(out_uri)
        work.mkdir(parents=True, exist_ok=True)
        table.to_csv(work / "ablation.csv")
        (work / "ablation.md").write_text(table_markdown(table) + "\n")
        report = write_report(work, f"ctvlp ablation: {base.name}", {"Ablation (paper Table 5 rows)": table,
                              **{f"{row}: {DESCRIPTIONS.get(row, row)}": r for row, r in results.items()}},
                              {}, to_yaml(base), {row: uri for row, uri in exports.items()})
        if is_s3(out_uri):
            from jobs.data import storage_of

            for f in sorted(p for p in work.rglob("*") if p.is_file()):
                storage_of(base).write_bytes(join(out_uri, f.name), f.read_bytes())
    paths = {k: join(out_uri, k) for k in ("ablation.csv", "ablation.md", report.name)}
    return {"table": table, "results": results, "paths": paths}


def train_rows(base: Any, rows: tuple[str, ...] = ROWS) -> dict[str, str]:
    """Train the phases every row needs (shared runs are reused); returns row -> export URI."""
    from jobs.evaluate import resolve_model_uri
    from jobs.pipeline import run_pipeline

    exports = {}
    for row in rows:
        spec = row_spec(base, row)
        phases = required_phases(spec, eval_phase(spec))
        print(f"[ablation] {row}: {DESCRIPTIONS.get(row, row)}; training phases {list(phases)}", flush=True)
        run_pipeline(spec, phases)
        exports[row] = resolve_model_uri(spec)
    return exports


def main(argv: list[str] | None = None) -> int:
    base, args = common.parse_cli("Train and compare the paper's Table 5 ablation rows.", argv)
    common.preflight_spec(base, dry_run=args.dry_run, phases=(1, 2, 3, 4), evaluate=True)
    if args.dry_run:
        for row in ROWS:
            spec = row_spec(base, row)
            print(f"{row:8s} {DESCRIPTIONS[row]:45s} phases {list(required_phases(spec, eval_phase(spec)))} "
                  f"-> evaluates {spec.eval.model}")
        return 0
    common.init_ray()
    common.preflight_cluster(base, phases=(1, 2, 3, 4))
    out = compare(base, train_rows(base))
    print(table_markdown(out["table"]))
    print(f"ablation table: {out['paths']['ablation.md']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
