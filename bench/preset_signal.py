"""Is a finding's signal in the shards at all? Organ-mask voxel statistics against the labels.

For each finding of the corpus, four statistics of the stored uint8 image inside its anatomy's
mask (mean, 99.5th and 1st percentile, voxel count) are scored as classifiers of the finding's label
over every study of ``--split``; the table gives each statistic's AUC and the best one (chosen on
the same studies: an optimistic, model-free reading of how visible the finding is in what the
model is fed). Next to it, optionally, the supervised head's test AUC (``bench/supervised_capacity.py``)
and a zero-shot column (``bench/compare_preset.py``'s results): a finding that a voxel statistic
separates but the supervised head does not is lost in the model (its resolution or pooling), not in
the data; one that no statistic separates is not in the shards.

Usage: ``python bench/preset_signal.py --shards S [--supervised J] [--tag T]``
-> ``bench/results/preset_signal.{md,json}`` (one section per tag, the JSON keyed by tag).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from bench.alignment_budget import load_split  # noqa: E402

STATS = {
    "mean": lambda v: float(v.mean()),
    "p99.5": lambda v: float(np.percentile(v, 99.5)),
    "p1": lambda v: float(np.percentile(v, 1)),
    "voxels": lambda v: float(v.size),
}


def auc(y: np.ndarray, x: np.ndarray) -> float:
    """ROC AUC (scikit-learn's); NaN without both classes."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, x)) if 0 < y.sum() < len(y) else float("nan")


def finding_signal(samples: list[dict], anatomies: list[str], finding_anatomy: dict[str, str]) -> dict:
    """``{finding: {stat: AUC, "best": (stat, AUC)}}`` over ``samples`` (decoded shard rows)."""
    out = {}
    for finding, organ in finding_anatomy.items():
        if organ not in anatomies:
            continue
        label_id = anatomies.index(organ) + 1
        ys, xs = [], {k: [] for k in STATS}
        for s in samples:
            y = s["disease_labels"].get(finding)
            voxels = s["image"][s["mask"] == label_id].astype(np.float32)
            if y is None or not np.isfinite(float(y)) or voxels.size == 0:
                continue
            ys.append(float(y))
            for k, fn in STATS.items():
                xs[k].append(fn(voxels))
        y = np.asarray(ys)
        row = {k: auc(y, np.asarray(v)) for k, v in xs.items()}
        # a statistic separates in either direction (a cyst lowers the minimum)
        best = max(row, key=lambda k: abs(row[k] - 0.5) if np.isfinite(row[k]) else -1)
        row["best"] = (best, max(row[best], 1 - row[best]))
        row["n"], row["positives"] = len(y), int(y.sum())
        out[finding] = row
    return out


def markdown(tag: str, shards: str, split: str, signal: dict, supervised: dict | None, load: float) -> str:
    lines = [f"## {tag}", "", f"`{shards}`, {split} split; 1-min load average {load:.1f}. Best statistic: the",
             "largest separation in either direction (AUC shown as max(AUC, 1 - AUC)).", "",
             "| finding | n (pos) | mean | p99.5 | p1 | voxels | best | supervised head |",
             "|---|---|---|---|---|---|---|---|"]
    for f, r in signal.items():
        sup = supervised.get(f) if supervised else None
        lines.append(f"| {f} | {r['n']} ({r['positives']}) | " + " | ".join(f"{r[k]:.3f}" for k in STATS)
                     + f" | {r['best'][0]} {r['best'][1]:.3f} | " + (f"{sup:.3f}" if sup is not None else "-") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--supervised", default=None, help="supervised_capacity.json of the same shards")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    from ctvlp.synthetic.lesions import DISEASE_ANATOMY

    shards = Path(args.shards)
    anatomies = json.loads((shards / "index.json").read_text())["anatomies"]
    signal = finding_signal(load_split(shards, args.split), anatomies, DISEASE_ANATOMY)
    supervised = json.loads(Path(args.supervised).read_text())["auc"] if args.supervised else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "preset_signal.json"
    record = json.loads(store.read_text()) if store.is_file() else {}
    record[args.tag] = {"shards": str(shards), "split": args.split, "signal": signal, "supervised": supervised,
                        "load_avg": os.getloadavg()[0]}
    store.write_text(json.dumps(record, indent=1))
    md = ["# Is each finding in the shards? (bench/preset_signal.py)", "",
          "Organ-mask voxel statistics of the stored image as label classifiers, beside the supervised",
          "head's test AUC: separable by a statistic but not by the head = lost in the model; by neither",
          "= not in the data.", ""]
    for tag, r in record.items():
        md.append(markdown(tag, r["shards"], r["split"], r["signal"], r["supervised"], r["load_avg"]))
    (out / "preset_signal.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
