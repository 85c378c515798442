"""The demo: the whole spine on embedded defaults (``make demo``).

synthetic CT corpus (CT-RATE layout) -> ingest (Ray Data, local files) -> phases 1-4 (Ray Train,
DeepSpeed on CPU) -> zero-shot evaluation -> HTML report -> the predictor (``ctvlp.Predictor``) on
one raw test scan from the corpus, its top findings printed beside the labels of the study and its
report. Prints the macro AUC with its bootstrap CI and the report's path, and writes
``<out>/demo_result.json`` with the timing of every stage.

Every stage resumes: a rerun skips the corpus if it exists, ingests only unwritten studies, and
restarts training from the phases' checkpoints.

``--shuffle-reports`` is the negative control: the same pipeline trained on reports shuffled
across studies (the labels used for scoring stay true), which must score near chance, otherwise
the benchmark leaks.

Usage: ``python jobs/demo.py [--spec jobs/specs/demo.yaml] [--num-studies N] [--shuffle-reports]
[--out DIR] [key=value ...]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jobs.common import REPO_ROOT, preflight_cluster, preflight_spec  # noqa: E402
from jobs.plan import PHASES  # noqa: E402
from jobs.preflight import under_job_submit  # noqa: E402

DEFAULT_SPEC = REPO_ROOT / "jobs" / "specs" / "demo.yaml"
# 900 studies (~530 in train), and the spec's epochs sized to keep the optimiser steps of 300
# studies: at an equal step budget more distinct studies generalise better (macro AUC 0.840 with
# 300, 0.855 with 600, 0.864 with 900) for ~100 s more of corpus and ingest
# (bench/results/demo_quality.md).
DEFAULT_NUM_STUDIES = 900


def banner(step: int, total: int, text: str, t0: float) -> None:
    print(f"\n[{step}/{total}] {text}   (t = {time.time() - t0:.0f} s)", flush=True)


def make_corpus(out: Path, num_studies: int, seed: int, **preset_overrides) -> Path:
    """Generate the synthetic corpus once; a finished corpus (corpus.json) in CT-RATE's published
    layout is reused (one written before the tables moved under dataset/ is regenerated)."""
    from ctvlp.synthetic import writer
    from ctvlp.synthetic.corpus import generate_corpus

    marker = out / "corpus.json"
    published = (out / writer.table_paths("train")["reports"]).is_file()
    if marker.is_file() and published and json.loads(marker.read_text()).get("num_studies") == num_studies:
        print(f"corpus exists: {out}")
        return out
    summary = generate_corpus(out, num_studies, seed=seed, preset="demo", **preset_overrides)
    print(f"corpus: {num_studies} studies in {summary['seconds']} s -> {out}")
    return out


def shuffle_reports(corpus: Path, out: Path, seed: int) -> Path:
    """A copy of ``corpus`` (volumes, masks and other tables linked, not copied) whose train
    reports are permuted across studies: the negative control. Labels and test reports stay as
    they are."""
    reports_dir = "radiology_text_reports"
    if (out / "dataset").is_symlink():  # a copy made before the tables moved under dataset/:
        (out / "dataset").unlink()  # writing through that link would shuffle the corpus itself
    for src, dst in ((corpus, out), (corpus / "dataset", out / "dataset")):
        dst.mkdir(parents=True, exist_ok=True)
        for entry in src.iterdir():
            target = dst / entry.name
            if entry.name not in ("dataset", reports_dir) and not target.exists():
                target.symlink_to(entry.resolve())
    reports = out / "dataset" / reports_dir
    reports.mkdir(exist_ok=True)
    for csv in (corpus / "dataset" / reports_dir).glob("*.csv"):
        frame = pd.read_csv(csv)
        if csv.name.startswith("train"):
            perm = np.random.default_rng(seed).permutation(len(frame))
            frame[["Findings_EN", "Impressions_EN"]] = frame[["Findings_EN", "Impressions_EN"]].to_numpy()[perm]
        frame.to_csv(reports / csv.name, index=False)
    return out


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(DEFAULT_SPEC), help="run spec (default: jobs/specs/demo.yaml)")
    ap.add_argument("--num-studies", type=int, default=DEFAULT_NUM_STUDIES)
    ap.add_argument("--out", default="demo_out", help="where the corpus, shards and runs go")
    ap.add_argument("--min-test-positives", type=int, default=None,
                    help="override the demo preset's minimum positives per disease in test (smoke runs)")
    ap.add_argument("--shuffle-reports", action="store_true", help="negative control")
    ap.add_argument("overrides", nargs="*", help="dotted key=value spec overrides")
    return ap.parse_args(argv)


def demo_spec(args):
    from ctvlp.config import load_spec

    out = Path(args.out).resolve() / ("control" if args.shuffle_reports else "main")
    corpus = Path(args.out).resolve() / "corpus"
    source = out / "corpus_shuffled" if args.shuffle_reports else corpus
    name = "demo-control" if args.shuffle_reports else "demo"
    spec = load_spec(args.spec, [f"data.source_uri={source}", f"data.shards_uri={out / 'shards'}",
                                 f"storage.root={out / 'runs'}", f"name={name}", *args.overrides])
    return spec, corpus, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    if under_job_submit() and not Path(args.out).is_absolute():
        raise SystemExit(f"--out {args.out!r} is relative: under `ray job submit` it would land in Ray's "
                         "temporary copy of the working directory; give an absolute path")
    spec, corpus, out = demo_spec(args)
    preflight_spec(spec, phases=PHASES, ingest=True, evaluate=True)
    timings: dict[str, float] = {}

    banner(1, 6, f"synthetic corpus: {args.num_studies} studies (demo preset)", t0)
    overrides = {} if args.min_test_positives is None else {"min_test_positives": args.min_test_positives}
    make_corpus(corpus, args.num_studies, spec.seed, **overrides)
    if args.shuffle_reports:
        shuffle_reports(corpus, Path(spec.data.source_uri), spec.seed)
    timings["corpus"] = time.time() - t0

    import os

    import ray

    from jobs.common import runtime_env

    if not ray.is_initialized():
        # As many logical CPUs as cores: the spec's two Train workers take half a CPU each
        # (jobs/specs/demo.yaml), leaving one for Ray Data (the preflight checks it).
        ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env=runtime_env())
    preflight_cluster(spec, phases=PHASES, ingest=True)
    banner(2, 6, "ingest: Ray Data -> anatomy-cropped shards", t0)
    from ingest.pipeline import IngestConfig, run_ingest

    run_ingest(IngestConfig.from_spec(spec))
    timings["ingest"] = time.time() - t0 - sum(timings.values())

    banner(3, 6, "training phases 1-4 (Ray Train, DeepSpeed on CPU)", t0)
    from jobs.pipeline import run_pipeline

    run_pipeline(spec)
    timings["train"] = time.time() - t0 - sum(timings.values())

    banner(4, 6, "zero-shot evaluation (Ray Data inference) and report", t0)
    from jobs.evaluate import evaluate_model

    result = evaluate_model(spec)
    print(f"evaluation written into the export: {result['card']} (model card) and evaluation.json (thresholds)",
          flush=True)
    timings["evaluate"] = time.time() - t0 - sum(timings.values())
    ray.shutdown()

    banner(5, 6, "the trained model on one raw test scan (ctvlp.Predictor, no Ray)", t0)
    from jobs.evaluate import resolve_model_uri

    predicted = predict_one_scan(resolve_model_uri(spec), corpus)
    print(predicted["text"], flush=True)
    timings["predict"] = time.time() - t0 - sum(timings.values())

    banner(6, 6, "done", t0)
    summary = summarise(result, timings, time.time() - t0, args)
    summary["predictor"] = {k: v for k, v in predicted.items() if k != "text"}
    (out / "demo_result.json").write_text(json.dumps(summary, indent=2))
    print(f"macro AUC {summary['macro_auc']:.3f} (95% CI {summary['macro_auc_ci'][0]:.3f}-"
          f"{summary['macro_auc_ci'][1]:.3f}) over {summary['num_diseases']} diseases")
    print(f"report: {result['report']}")
    print(f"wall time {summary['seconds']:.0f} s; stages {json.dumps({k: round(v) for k, v in timings.items()})}")
    return 0


def predict_one_scan(export_uri: str, corpus: Path, top: int = 5) -> dict:
    """Score the first test study of the corpus that has a positive label, from its raw NIfTI and
    mask (CT-RATE's ``valid`` = our test split), with :class:`ctvlp.Predictor`; returns the
    printable comparison (``text``) and its facts: the top findings with their calls next to the
    labels table's truth, and the report's impression."""
    from ctvlp import Predictor
    from ctvlp.synthetic import writer

    tables = {k: pd.read_csv(corpus / v) for k, v in writer.table_paths("valid").items() if k != "metadata"}
    labels = tables["labels"].set_index("VolumeName")
    name = next((v for v, row in labels.iterrows() if row.sum() > 0), labels.index[0])
    volume = name.removesuffix(".nii.gz")  # CT-RATE's VolumeName carries the file suffix
    rel = Path("valid") / volume.rsplit("_", 2)[0] / volume.rsplit("_", 1)[0] / f"{volume}.nii.gz"
    report = tables["reports"].set_index("VolumeName").loc[name]
    predictor = Predictor.from_export(export_uri)
    t0 = time.perf_counter()
    pred = predictor(corpus / writer.DATASET_DIR / rel, mask=corpus / "masks" / rel,
                     report=(str(report["Findings_EN"]), str(report["Impressions_EN"])))
    seconds = time.perf_counter() - t0
    truth = {d: int(labels.at[name, d]) for d in labels.columns if d in pred.probabilities}
    findings = pred.top_findings(top)
    lines = [f"{volume} (test split, {seconds:.1f} s on {predictor.model.device}): top {top} findings vs the truth",
             f"  {'disease':<28} {'anatomy':<16} {'prob':>5}  {'call':<4}  truth"]
    for f in findings:
        call = "-" if f["call"] is None else ("yes" if f["call"] else "no")
        lines.append(f"  {f['disease']:<28} {f['anatomy']:<16} {f['probability']:5.2f}  {call:<4}  "
                     f"{'positive' if truth.get(f['disease']) else 'negative'}")
    positives = [d for d, v in truth.items() if v]
    lines.append(f"  labels table: positive for {', '.join(positives) or 'nothing'}")
    lines.append(f"  report impression: {report['Impressions_EN']}")
    return {"volume": volume, "seconds": seconds, "top_findings": findings, "positives": positives,
            "text": "\n".join(lines)}


def summarise(result: dict, timings: dict, seconds: float, args) -> dict:
    summary = result["primary"].summary
    return {
        "macro_auc": summary["macro"]["auc"],
        "macro_auc_ci": summary["macro_auc_ci"] or [float("nan"), float("nan")],
        "num_diseases": summary["num_included"],
        "per_disease_auc": result["primary"].per_disease["auc"].to_dict(),
        "report": str(result["report"]),
        "seconds": seconds,
        "timings": timings,
        "shuffled_reports": bool(args.shuffle_reports),
        "num_studies": args.num_studies,
    }


if __name__ == "__main__":
    raise SystemExit(main())
