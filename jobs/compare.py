"""Compare pre-training methods on the same shards, encoder, budget and evaluation: one table.

Rows are the overlays of ``jobs/specs/ablation/`` named in ``compare.methods`` (CLIP, fVLM's
recipe, phase 2 alone, + VSEI, + VSED = phase 1, + boost = ViSD-Boost; any subset, e.g.
``compare.methods=[p2_only,full] compare.reference=full``). Each row is merged over the run's
spec, gets its phases' epochs from the shared budget (``compare.budget_epochs`` split by
``compare.budget_rule`` in ``compare.proportions``; the rule is documented on
:class:`ctvlp.config.CompareSpec`) and is trained with ``compare.seeds`` seeds (seed k runs with
``spec.seed + k``) through ``jobs.pipeline.run_pipeline``. Phase runs are named by their
settings, so a phase two rows need with the same settings and seed (phases 1-2 of ``p1_p2`` and
``full`` under the paper rule) trains once; a finished run (its export exists) is not touched
again. Every model is scored by ``jobs.evaluate.evaluate_model`` on the same test split.

The table (``<storage.root>/<name>-compare/methods.{md,csv}`` and ``report.html``): per row its
seeds, the macro AUC (mean over seeds) with a 95% bootstrap CI over test scans, the spread over
seeds, the paired bootstrap difference to the reference row with its CI (same resampled scans for
every model), per-anatomy AUCs, optimiser steps per phase and training seconds (the sum of the
step times the phase runs logged to TensorBoard; a run shared by two rows counts for both).

Usage: ``python jobs/compare.py --spec jobs/specs/compare.yaml data.shards_uri=... storage.root=...
[--dry-run] [key=value ...]``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ctvlp.config import settable_dict, spec_from_dict, to_yaml  # noqa: E402
from ctvlp.eval.bootstrap import paired_macro_bootstrap, percentile_ci  # noqa: E402
from ctvlp.eval.tables import auc_with_ci, markdown_table, pct  # noqa: E402
from ingest.storage import is_s3, join  # noqa: E402
from jobs import common  # noqa: E402
from jobs.ablation import DESCRIPTIONS, ROWS_DIR, eval_phase, required_phases, row_spec  # noqa: E402

COUNTED = (1, 2, 4)  # phases that train the vision encoder; phase 3 trains only the VQ-VAE


# ---------------------------------------------------------------------------------- the plan
def phase_epochs(compare: Any, phases: tuple[int, ...]) -> dict[int, int]:
    """Epochs of each of ``phases`` under the budget rule (``CompareSpec``'s docstring)."""
    share = dict(zip((1, 2, 3, 4), compare.proportions))
    counted = COUNTED if compare.budget_rule == "paper" else [n for n in phases if n in COUNTED]
    if not counted:
        raise ValueError(f"phases {phases} hold no encoder-training phase to share the budget")
    total = sum(share[n] for n in counted)
    return {n: max(1, round(compare.budget_epochs * share[n] / total)) for n in phases}


def num_seeds(compare: Any, row: str) -> int:
    return compare.seeds.get(row, compare.default_seeds)


def method_spec(base: Any, row: str, seed: int) -> Any:
    """Row ``row``'s spec: its overlay over ``base``, the budget's epochs, seed ``base.seed + seed``."""
    spec = row_spec(base, row)
    phases = required_phases(spec, eval_phase(spec))
    tree = settable_dict(spec)
    for n, epochs in phase_epochs(base.compare, phases).items():
        tree["phases"][f"phase{n}"]["epochs"] = epochs
    tree["seed"] = base.seed + seed
    return spec_from_dict(tree)


@dataclass
class RowRun:
    """One trained model of the comparison: a row at one seed."""

    row: str
    seed: int
    spec: Any
    phases: tuple[int, ...]
    export_uri: str = ""
    steps: dict[int, int] = field(default_factory=dict)  # phase -> optimiser steps
    train_s: dict[int, float] = field(default_factory=dict)  # phase -> summed step seconds

    @property
    def label(self) -> str:
        return f"{self.row}-seed{self.seed}"


def plan_runs(base: Any) -> list[RowRun]:
    """Every (row, seed) of ``compare.methods`` with its spec and phases, in table order."""
    unknown = [r for r in base.compare.methods if not (ROWS_DIR / f"{r}.yaml").is_file()]
    if unknown:
        raise ValueError(f"compare.methods {unknown} are not rows of {ROWS_DIR}; available: "
                         f"{sorted(p.stem for p in ROWS_DIR.glob('*.yaml'))}")
    runs = []
    for row in base.compare.methods:
        for k in range(num_seeds(base.compare, row)):
            spec = method_spec(base, row, k)
            runs.append(RowRun(row, k, spec, required_phases(spec, eval_phase(spec))))
    return runs


def describe_plan(runs: list[RowRun]) -> str:
    from jobs.plan import resolve_phase, run_name

    lines, seen = [], set()
    for r in runs:
        names = [run_name(resolve_phase(r.spec, n), n) for n in r.phases]
        shared = [n for n, name in zip(r.phases, names) if name in seen]
        seen.update(names)
        epochs = {n: r.spec.phase(n).epochs for n in r.phases}
        lines.append(f"{r.label:16s} {DESCRIPTIONS.get(r.row, r.row):45s} epochs {epochs}"
                     + (f"; reuses phases {shared}" if shared else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- training
def export_done(spec: Any, phase: int) -> bool:
    """The phase run of ``spec`` finished: its export holds the weights."""
    from jobs.data import storage_of
    from jobs.plan import export_uri, resolve_phase

    return storage_of(spec).exists(join(export_uri(resolve_phase(spec, phase), phase), "model.safetensors"))


def train_run(run: RowRun) -> None:
    """Train the phases of one (row, seed) that have no export yet; record its export URI."""
    from jobs.evaluate import resolve_model_uri
    from jobs.pipeline import run_pipeline

    todo = tuple(n for n in run.phases if not export_done(run.spec, n))
    print(f"[compare] {run.label}: {DESCRIPTIONS.get(run.row, run.row)}; phases {list(run.phases)}, "
          f"training {list(todo) or 'none (all reused)'}", flush=True)
    if todo:  # phase references of the skipped ones resolve to their finished exports
        run_pipeline(run.spec, todo)
    run.export_uri = resolve_model_uri(run.spec)


def step_record(run_dir: str) -> tuple[int, float]:
    """(optimiser steps, summed step seconds) of a phase run from its TensorBoard scalars:
    ``samples_per_s`` is logged every step, so a step took global_batch / samples_per_s."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tensorboard"
    if is_s3(run_dir) or not tb.is_dir():
        return 0, float("nan")
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    rate = next((t for t in tags if t.endswith("samples_per_s")), None)
    if rate is None:
        return 0, float("nan")
    per_step = {e.step: e.value for e in acc.Scalars(rate)}  # a resumed step keeps its last value
    batch = _global_batch(Path(run_dir) / "export")
    return len(per_step), float(sum(batch / v for v in per_step.values() if v > 0))


def _global_batch(export_dir: Path) -> int:
    """The phase's global batch, from the resolved spec written beside its export."""
    import yaml

    spec = yaml.safe_load((export_dir / "resolved_spec.yaml").read_text())
    phase = json.loads((export_dir / "export_meta.json").read_text())["phase"]
    return int(spec["phases"][f"phase{phase}"]["global_batch_size"])


def record_steps(run: RowRun) -> None:
    from jobs.plan import export_uri, resolve_phase

    for n in run.phases:
        run_dir = export_uri(resolve_phase(run.spec, n), n).rsplit("/", 1)[0]
        run.steps[n], run.train_s[n] = step_record(run_dir)


# ------------------------------------------------------------------------------- evaluation
def evaluate_run(run: RowRun, out_uri: str) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """Score one model on the test split (``evaluate_model``) unless this export was scored there
    already (``model.txt`` names it); returns (EvalResult, labels, scores)."""
    from jobs.data import storage_of
    from jobs.evaluate import evaluate_model

    out_dir, storage = join(out_uri, run.label), storage_of(run.spec)
    marker = join(out_dir, "model.txt")
    if not (storage.exists(marker) and storage.read_bytes(marker).decode() == run.export_uri):
        evaluate_model(run.spec, run.export_uri, out_dir)
        storage.write_bytes(marker, run.export_uri.encode())
    return read_result(storage, out_dir)


def read_result(storage: Any, out_dir: str) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """(EvalResult, labels, scores) as ``evaluate_model`` wrote them under ``out_dir``."""
    import io

    from ctvlp.eval.metrics import EvalResult

    def frame(name: str, index: str) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(storage.read_bytes(join(out_dir, name))), index_col=index)

    result = EvalResult(frame("zero_shot/per_disease.csv", "disease"), frame("zero_shot/per_anatomy.csv", "anatomy"),
                        json.loads(storage.read_bytes(join(out_dir, "zero_shot/summary.json"))))
    return result, frame("labels.csv", "VolumeName"), frame("scores.csv", "VolumeName")


# ------------------------------------------------------------------------------------ table
def comparison_table(runs: list[RowRun], results: dict[str, Any], labels: pd.DataFrame,
                     scores: dict[str, pd.DataFrame], reference: str, n_bootstrap: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """One row per method (module docstring). ``results``/``scores`` are keyed by ``RowRun.label``."""
    rows = list(dict.fromkeys(r.row for r in runs))
    first = results[runs[0].label]
    included = [d for d in first.per_disease.index if np.isfinite(first.per_disease.at[d, "auc"])]
    groups = {row: [scores[r.label].loc[labels.index, included].to_numpy() for r in runs if r.row == row]
              for row in rows}
    boot = paired_macro_bootstrap(labels[included].to_numpy(), groups, n_bootstrap, seed)
    out = []
    for row in rows:
        mine = [r for r in runs if r.row == row]
        macro = [results[r.label].per_disease.loc[included, "auc"].mean() for r in mine]
        ok = np.isfinite(boot[row]) & np.isfinite(boot[reference])
        diff = boot[row][ok] - boot[reference][ok]
        entry = {"row": row, "model": DESCRIPTIONS.get(row, row), "seeds": len(mine),
                 "macro_auc": float(np.mean(macro)), "seed_sd": float(np.std(macro, ddof=1)) if len(macro) > 1 else np.nan}
        entry["auc_ci_low"], entry["auc_ci_high"] = percentile_ci(boot[row][ok])
        entry["diff_vs_ref"] = entry["macro_auc"] - float(np.mean(
            [results[r.label].per_disease.loc[included, "auc"].mean() for r in runs if r.row == reference]))
        entry["diff_ci_low"], entry["diff_ci_high"] = percentile_ci(diff) if row != reference else (0.0, 0.0)
        anat = pd.concat([results[r.label].per_anatomy["auc"] for r in mine], axis=1).mean(1)
        entry.update({f"auc_{a}": float(v) for a, v in anat.items()})
        entry["steps"] = " + ".join(f"p{n} {mine[0].steps.get(n, 0)}" for n in mine[0].phases)
        entry["train_s"] = float(np.mean([sum(r.train_s.values()) for r in mine]))
        out.append(entry)
    table = pd.DataFrame(out).set_index("row")
    table.attrs["num_diseases"] = len(included)
    return table


def table_markdown(table: pd.DataFrame, reference: str) -> str:
    anat = [c for c in table.columns if c.startswith("auc_") and c not in ("auc_ci_low", "auc_ci_high")]
    header = ["Row", "Method", "seeds", "macro AUC [95% CI]", "sd over seeds", f"vs {reference} [95% CI]",
              *[c[4:] for c in anat], "optimiser steps", "train s"]
    rows = []
    for name, r in table.iterrows():
        diff = "-" if name == reference else f"{100 * r.diff_vs_ref:+.1f} [{100 * r.diff_ci_low:+.1f}, {100 * r.diff_ci_high:+.1f}]"
        sd = "-" if not np.isfinite(r.seed_sd) else f"{100 * r.seed_sd:.1f}"
        rows.append([name, r.model, str(r.seeds), auc_with_ci(r.macro_auc, r.auc_ci_low, r.auc_ci_high), sd, diff,
                     *[pct(r[c]) for c in anat], r.steps, f"{r.train_s:.0f}"])
    return markdown_table(header, rows)


def write_outputs(base: Any, table: pd.DataFrame, results: dict[str, Any], runs: list[RowRun],
                  out_uri: str, extra: dict[str, str]) -> dict[str, str]:
    """methods.csv, methods.md and report.html under ``out_uri`` (local or s3://)."""
    from ctvlp.eval.report import write_report

    md = table_markdown(table, base.compare.reference)
    with tempfile.TemporaryDirectory(prefix="ctvlp-compare-") as tmp:
        work = Path(tmp) if is_s3(out_uri) else Path(out_uri)
        work.mkdir(parents=True, exist_ok=True)
        table.to_csv(work / "methods.csv")
        (work / "methods.md").write_text(md + "\n")
        sections = {"Method comparison (macro AUC, paired difference to the reference)": table,
                    **{f"{r.label}: {DESCRIPTIONS.get(r.row, r.row)}": results[r.label] for r in runs}}
        report = write_report(work, f"ctvlp method comparison: {base.name}", sections, {}, to_yaml(base), extra)
        if is_s3(out_uri):
            from jobs.data import storage_of

            for f in sorted(p for p in work.rglob("*") if p.is_file()):
                storage_of(base).write_bytes(join(out_uri, f.name), f.read_bytes())
    return {k: join(out_uri, k) for k in ("methods.csv", "methods.md", report.name)}


def compare(base: Any, out_uri: str | None = None) -> dict[str, Any]:
    """Train (or reuse), evaluate and tabulate every (row, seed) of ``base.compare``."""
    t0 = time.time()
    out_uri = out_uri or join(base.storage.root.rstrip("/"), f"{base.name}-compare")
    runs = plan_runs(base)
    results, scores, labels = {}, {}, None
    # seed by seed, the reference first in each: a run cut short still holds every row; each model
    # is scored once trained, so a rerun after an interruption resumes with what is done
    for run in sorted(runs, key=lambda r: (r.seed, r.row != base.compare.reference)):
        train_run(run)
        record_steps(run)
        results[run.label], lab, scores[run.label] = evaluate_run(run, out_uri)
        labels = lab if labels is None else labels
    table = comparison_table(runs, results, labels, scores, base.compare.reference,
                             base.eval.bootstrap_samples or 1000, base.seed)
    c = base.compare
    extra = {"rows": ", ".join(c.methods), "reference": c.reference,
             "budget": f"{c.budget_epochs} counted epochs (phases 1, 2, 4), rule {c.budget_rule}, "
                       f"proportions {list(c.proportions)}",
             "test scans": str(len(labels)), "diseases in the macro AUC": str(table.attrs["num_diseases"]),
             "git commit": common.git_commit(), "wall time (s)": f"{time.time() - t0:.0f}"}
    paths = write_outputs(base, table, results, runs, out_uri, extra)
    return {"table": table, "results": results, "runs": runs, "paths": paths}


def main(argv: list[str] | None = None) -> int:
    base, args = common.parse_cli("Train and compare pre-training methods on the same data and budget.", argv)
    try:
        runs = plan_runs(base)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    common.preflight_spec(base, dry_run=args.dry_run, phases=(1, 2, 3, 4), evaluate=True)
    if args.dry_run:
        print(describe_plan(runs))
        return 0
    common.init_ray()
    common.preflight_cluster(base, phases=(1, 2, 3, 4))
    out = compare(base)
    print(table_markdown(out["table"], base.compare.reference))
    print(f"comparison table: {out['paths']['methods.md']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
