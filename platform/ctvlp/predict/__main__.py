"""``python -m ctvlp.predict --model EXPORT SCAN [SCAN ...] [--mask M ...] --out results.csv``

Scores NIfTI files and DICOM series folders with a trained export (a local folder, ``s3://`` or a
hub name) in this process, on the GPU when there is one, and writes one row per scan
(:mod:`ctvlp.predict.results`); a scan ingest would quarantine is a ``rejected`` row with the same
reason, and the others are still scored. ``--mask`` gives each scan's TotalSegmentator mask, in
the scans' order; without masks the spec's segmentation runs (or the command says what is
missing). ``--ray`` hands the same arguments to ``jobs/predict.py``, the Ray Data edge for many
scans (this package never imports Ray). Prints each scan's top findings and the speed in scans/s.
Exit status 0, or 2 for bad arguments / an export that cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ctvlp.predict", description=__doc__.split("\n")[0].strip("`"))
    ap.add_argument("--model", required=True, help="export: local folder, s3://bucket/prefix or hub name owner/name")
    ap.add_argument("scans", nargs="+", help="NIfTI files (.nii/.nii.gz) or DICOM series folders")
    ap.add_argument("--mask", action="append", default=None,
                    help="TotalSegmentator mask (NIfTI on the scan's grid), once per scan in the same order")
    ap.add_argument("--out", required=True, help="results CSV")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    ap.add_argument("--chunk", type=int, default=16, help="scans prepared and scored together (memory bound)")
    ap.add_argument("--top", type=int, default=3, help="findings printed per scan (0: none)")
    ap.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint of an s3:// export")
    ap.add_argument("--ray", action="store_true", help="batch over the scans with Ray Data (jobs/predict.py)")
    ap.add_argument("--workers", type=int, default=1, help="with --ray: predictor actors")
    ap.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --ray: GPUs per actor")
    return ap


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.mask is not None and len(args.mask) != len(args.scans):
        ap.error(f"--mask was given {len(args.mask)} times for {len(args.scans)} scans: give one per scan, in order")
    return args


def print_findings(outcome, top: int) -> None:
    """One line per scan: its top findings (probability, call) or why it was refused."""
    from ctvlp.predict import ScanRejected

    if isinstance(outcome, ScanRejected):
        print(f"{outcome.scan}: rejected ({outcome.reason}: {outcome.detail})", flush=True)
        return
    if top:
        calls = {None: "", True: " yes", False: " no"}
        items = [f"{f['disease']} {f['probability']:.2f}{calls[f['call']]}" for f in outcome.top_findings(top)]
        print(f"{outcome.study_id}: " + "; ".join(items), flush=True)


def run_local(args: argparse.Namespace) -> int:
    """Score the scans in this process, ``args.chunk`` at a time; returns the exit status."""
    from ctvlp.predict import Predictor
    from ctvlp.predict.results import result_row, write_results

    try:
        predictor = Predictor.from_export(args.model, device=args.device, batch_size=args.batch_size,
                                          s3_endpoint_url=args.s3_endpoint_url)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    masks = args.mask or [None] * len(args.scans)
    t0, rows = time.perf_counter(), []
    for i in range(0, len(args.scans), args.chunk):
        scans = args.scans[i : i + args.chunk]
        for scan, outcome in zip(scans, predictor.predict_many(scans, masks[i : i + args.chunk])):
            print_findings(outcome, args.top)
            rows.append(result_row(scan, outcome, predictor.diseases))
    seconds = time.perf_counter() - t0
    table = write_results(args.out, rows, predictor.diseases)
    num_ok = int((table["status"] == "ok").sum())
    print(f"scored {num_ok} of {len(rows)} scans in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.2f} scans/s, "
          f"{predictor.model.device}); results: {args.out}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ray:
        try:
            from jobs.predict import run_ray  # the Ray edge lives with the other jobs
        except ImportError as exc:
            print(f"error: --ray needs the ctvlp repository's jobs/ on the path ({exc}); run from the "
                  "repository root, or `python jobs/predict.py` with the same arguments", file=sys.stderr)
            return 2
        return run_ray(args)
    return run_local(args)


if __name__ == "__main__":
    sys.exit(main())
