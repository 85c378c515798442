"""Build a sample run report (all five pictures + tables) and render it in headless Chromium.

Synthetic inputs stand in for a run: 22 diseases (ctvlp.diseases.SYNTHETIC) over ``--scans``
test scans with noisy scores, anatomy embeddings, token activations, codebook counts and a loss
curve. Times each stage, then loads the page in Chromium and reads back how many images decoded
(the report's own load script writes it on <body>), and takes a full-page screenshot.

    .venv/bin/python bench/report_render.py [--scans 300] [--out bench/results]

Writes <out>/report_render.json (timings, images loaded/total, macro AUC), report_render.md and
report_render.png (the screenshot). Needs Chromium (Debian: apt-get install -y chromium).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from ctvlp.diseases import SYNTHETIC  # noqa: E402
from ctvlp.eval import plots  # noqa: E402
from ctvlp.eval.metrics import evaluate, frames_from_arrays  # noqa: E402
from ctvlp.eval.report import write_report  # noqa: E402


def _inputs(n: int, rng: np.random.Generator) -> dict:
    names = [d.name for d in SYNTHETIC]
    y = (rng.random((n, len(names))) < 0.25).astype(float)
    s = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1)
    s[rng.random(y.shape) < 0.05] = np.nan  # scans missing the anatomy
    anatomies = list(dict.fromkeys(d.anatomy for d in SYNTHETIC))
    emb_anat = np.repeat(anatomies[:6], 80)
    abnormal = rng.random(len(emb_anat)) < 0.3
    emb = rng.normal(size=(len(emb_anat), 32)) + 2.5 * abnormal[:, None] * rng.normal(size=(1, 32))
    counts = rng.poisson(rng.gamma(0.5, 4, size=(len(anatomies), 100)))
    steps = np.arange(200)
    loss = {"itc_loss": list(zip(steps, 4 * np.exp(-steps / 60) + 0.1 * rng.random(200), strict=True))}
    return {"names": names, "y": y, "s": s, "anatomies": anatomies, "emb": emb, "emb_anat": emb_anat,
            "abnormal": abnormal, "counts": counts, "loss": loss}


def _chromium(args: list[str], cwd: str) -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        raise SystemExit("no Chromium found: apt-get install -y chromium")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={cwd}/profile", "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scans", type=int, default=300)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _inputs(args.scans, np.random.default_rng(0))
    amap = {d.name: d.anatomy for d in SYNTHETIC}
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        lab, sco = frames_from_arrays([f"scan_{i}" for i in range(args.scans)], data["names"], data["y"], data["s"])
        result = evaluate(lab, sco, amap, n_bootstrap=1000, seed=0)
        timings["metrics_with_1000_bootstrap_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        images = {
            "ROC curves per anatomy": plots.plot_roc_curves(lab, sco, amap, f"{tmp}/roc.png"),
            "t-SNE of anatomy embeddings (Fig. 3)": plots.plot_tsne(data["emb"], data["abnormal"], data["emb_anat"],
                                                                    f"{tmp}/tsne.png"),
            "Token activations (Fig. 5)": plots.plot_activation_histograms(
                np.random.default_rng(1).normal(size=20000), np.random.default_rng(2).laplace(scale=0.3, size=20000),
                f"{tmp}/act.png"),
            "Codebook usage": plots.plot_codebook_usage(data["counts"], data["anatomies"], f"{tmp}/codebook.png"),
            "Training loss": plots.plot_loss_curves(data["loss"], f"{tmp}/loss.png"),
        }
        timings["plots_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        page = write_report(f"{tmp}/report", "Sample run report", result, images, "name: sample\nseed: 0\n",
                            {"scans": args.scans})
        timings["report_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        dom = _chromium(["--dump-dom", page.as_uri()], tmp)
        timings["chromium_dump_dom_s"] = time.perf_counter() - t0
        _chromium(["--window-size=1280,6000", f"--screenshot={out / 'report_render.png'}", page.as_uri()], tmp)
        size_kb = page.stat().st_size / 1024
    m = re.search(r'data-images-loaded="(\d+)"[^>]*data-images-total="(\d+)"', dom)
    loaded, total = (int(m.group(1)), int(m.group(2))) if m else (0, len(images))
    record = {"scans": args.scans, "diseases": len(data["names"]), "images_loaded": loaded, "images_total": total,
              "report_kb": round(size_kb, 1), "macro_auc": result.summary["macro"]["auc"],
              "macro_auc_ci": result.summary["macro_auc_ci"], **{k: round(v, 2) for k, v in timings.items()}}
    (out / "report_render.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "report_render.md").write_text("\n".join(f"- {k}: {v}" for k, v in record.items()) + "\n")
    print(json.dumps(record, indent=2))
    if loaded != total:
        raise SystemExit(f"only {loaded}/{total} images loaded in Chromium")


if __name__ == "__main__":
    main()
