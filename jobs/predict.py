"""Many scans through a trained export with Ray Data: the batch edge of ``ctvlp.predict``.

``python jobs/predict.py --model EXPORT SCAN [SCAN ...] [--mask M ...] --out results.csv
[--workers N] [--gpus-per-worker G]`` (or ``python -m ctvlp.predict --ray ...``: the same
arguments). The scans become a Ray dataset of (scan, mask) rows; :class:`PredictorActor` (one per
``--workers``, each loading the export once, on a GPU when ``--gpus-per-worker`` > 0) scores a
chunk of rows at a time with ``ctvlp.Predictor.predict_many``; the driver writes the same results
table as the one-process CLI (:mod:`ctvlp.predict.results`), in the order the scans were given.
Scan paths must be readable where the actors run (one machine, or a shared filesystem).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

import numpy as np  # noqa: E402


class PredictorActor:
    """``map_batches`` callable class: rows ``scan``, ``mask`` ("" = none), ``index`` -> rows
    ``index``, ``row`` (one results-table row as JSON)."""

    def __init__(self, model: str, device: str, batch_size: int, s3_endpoint_url: str | None, num_threads: int):
        import torch

        from ctvlp.predict import Predictor

        torch.set_num_threads(max(1, num_threads))
        self.predictor = Predictor.from_export(model, device=device, batch_size=batch_size,
                                               s3_endpoint_url=s3_endpoint_url)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ctvlp.predict.results import result_row

        scans = [str(s) for s in batch["scan"]]
        masks = [str(m) or None for m in batch["mask"]]
        outcomes = self.predictor.predict_many(scans, masks)
        rows = [json.dumps(result_row(s, o, self.predictor.diseases), allow_nan=True) for s, o in zip(scans, outcomes)]
        return {"index": batch["index"], "row": np.asarray(rows)}


def run_ray(args) -> int:
    """Score ``args.scans`` with ``args.workers`` actors (arguments of ``ctvlp.predict``'s parser)."""
    import ray

    from ctvlp.export import resolve_export
    from ctvlp.predict.predictor import export_diseases
    from ctvlp.predict.results import write_results
    from jobs import common

    diseases = [d.name for d in export_diseases(resolve_export(args.model, s3_endpoint_url=args.s3_endpoint_url))[0]]
    common.init_ray()
    masks = args.mask or [""] * len(args.scans)
    items = [{"index": i, "scan": str(s), "mask": str(m or "")} for i, (s, m) in enumerate(zip(args.scans, masks))]
    gpu = args.gpus_per_worker > 0
    ds = ray.data.from_items(items).map_batches(
        PredictorActor, batch_size=args.chunk, batch_format="numpy", concurrency=args.workers,
        fn_constructor_kwargs=dict(model=args.model, device="cuda" if gpu else "cpu", batch_size=args.batch_size,
                                   s3_endpoint_url=args.s3_endpoint_url, num_threads=1),
        num_gpus=args.gpus_per_worker if gpu else 0, num_cpus=1)
    t0 = time.perf_counter()
    found = {int(i): json.loads(r) for b in ds.iter_batches(batch_format="numpy") for i, r in zip(b["index"], b["row"])}
    seconds = time.perf_counter() - t0
    rows = [found[i] for i in range(len(items))]
    table = write_results(args.out, rows, diseases)
    num_ok = int((table["status"] == "ok").sum())
    print(f"scored {num_ok} of {len(rows)} scans in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):.2f} scans/s, "
          f"Ray Data, {args.workers} {'GPU' if gpu else 'CPU'} actor(s)); results: {args.out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from ctvlp.predict.__main__ import parse_args

    return run_ray(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
