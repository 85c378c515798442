"""CLI: ``python -m ctvlp.synthetic --out DIR --num-studies N --seed S [--preset tiny|demo|realistic]``."""

from __future__ import annotations

import argparse
import json
import sys

from ctvlp.synthetic.corpus import generate_corpus
from ctvlp.synthetic.presets import PRESETS
from ctvlp.synthetic.writer import LAYOUTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctvlp.synthetic", description=__doc__)
    ap.add_argument("--out", required=True, help="corpus root directory")
    ap.add_argument("--num-studies", type=int, required=True, help="number of studies")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed (same seed, same bytes)")
    ap.add_argument("--preset", "--size", dest="preset", default="tiny", choices=sorted(PRESETS),
                    help="size/difficulty preset (default: tiny)")
    ap.add_argument("--layout", default="ctrate", choices=sorted(LAYOUTS),
                    help="ctrate: dataset/{train,valid} (valid = test split); three-way: train/valid/test")
    ap.add_argument("--ctrate-headers", action="store_true",
                    help="write headers wrong the way CT-RATE's are (truth only in the metadata CSV)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes")
    ap.add_argument("--min-test-positives", type=int, default=None,
                    help="override the preset: every disease positive in at least this many test studies")
    args = ap.parse_args(argv)
    overrides = {} if args.min_test_positives is None else {"min_test_positives": args.min_test_positives}
    try:
        summary = generate_corpus(args.out, args.num_studies, args.seed, args.preset, args.layout,
                                  args.ctrate_headers, args.workers, **overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    brief = {s: {k: v[k] for k in ("written_as", "patients", "studies", "volumes")} for s, v in summary["splits"].items()}
    print(json.dumps({"out": args.out, "seconds": summary["seconds"], "splits": brief}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
