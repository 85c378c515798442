"""Why does the boost (phases 3-4) add little? The two suspects of issue 23, measured on one run.

The VQ-VAE of phase 3 models normal level-4 tokens; phase 4 feeds it tokens and adds what it
cannot reconstruct. Two mismatches between the tokens phase 3 learned from and those phase 4
gives it:

1. **present vs intact.** ``jobs/tokens.py`` caches one evaluation window per *present* anatomy,
   so anatomies cut by the scan's edge count as normal examples too, while every loss of phases
   1, 2 and 4 uses *intact* anatomies only. Measured: the share of cached instances that are not
   intact in their window, and the normality AUC (reconstruction error, abnormal vs normal) of
   intact and cut instances apart.
2. **encoder mode.** Phase 3 encodes with the frozen phase-2 encoder in eval mode (BatchNorm with
   running statistics); phase 4 reconstructs from the encoder in train mode (batch statistics,
   ``boosted_forward`` inside ``training_step``), and evaluation is in eval mode again. Measured:
   the relative change of the level-4 tokens between the two modes on the same windows, and the
   normality AUC of the reconstruction error in each mode (windows batched as phase 4 batches).

The windows are those of ``jobs/tokens.py`` and the evaluation (``study_windows``), on the split
given. Writes ``bench/results/boost_diagnosis.{json,md}`` (``--out``).

Usage: ``python bench/boost_diagnosis.py --spec jobs/specs/compare.yaml data.shards_uri=S
storage.root=R [seed=1] --split test``: the run is the comparison's ``full`` row of that spec
(its phase-2 and phase-3 exports).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]


@torch.no_grad()
def instance_errors(vision, vqvae, samples: list[dict], roi, batch_size: int, train_mode: bool) -> dict:
    """Per (study, present anatomy) window: reconstruction MSE of its level-4 tokens, its label,
    whether it is intact in the window, and the level-4 tokens (for the mode comparison)."""
    from ctvlp.eval.embed import study_windows
    from ctvlp.models.boost import encode_tokens, level4_instances
    from ctvlp.models.vqvae import masked_mse

    vision = copy.deepcopy(vision).train(train_mode)  # train mode would move the running statistics
    vqvae.eval()
    groups: dict[tuple, list] = defaultdict(list)  # window shape -> [(study, [j, ...], image, mask)]
    for i, sample in enumerate(samples):
        for js, img, msk in study_windows(sample, roi):
            groups[img.shape].append((i, js, img, msk))
    out = {"error": [], "abnormal": [], "intact": [], "tokens": []}
    for windows in groups.values():
        for b0 in range(0, len(windows), batch_size):
            chunk = windows[b0:b0 + batch_size]
            image = torch.from_numpy(np.stack([c[2] for c in chunk]))[:, None]
            mask = torch.from_numpy(np.stack([c[3] for c in chunk]))
            enc = encode_tokens(vision, image, mask)
            select = torch.zeros(enc["intact"].shape, dtype=torch.bool)
            for b, (_, js, _, _) in enumerate(chunk):
                select[b, js] = True
            t, tm, a, s = level4_instances(enc["tokens"][-1].float(), enc["flags"][-1], select)
            recon = vqvae(t, tm, a, update_codebook=False).recon
            for n in range(t.shape[0]):
                i = chunk[int(s[n])][0]
                out["error"].append(float(masked_mse(recon[n:n + 1], t[n:n + 1], tm[n:n + 1])))
                out["abnormal"].append(int(samples[i]["abnormal"][int(a[n])]))
                out["intact"].append(bool(enc["intact"][s[n], a[n]]))
                out["tokens"].append(t[n][tm[n]])
    return out


def auc(y, s) -> float:
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(y), np.asarray(s)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def main(argv=None) -> int:
    from ctvlp.config import load_spec
    from ctvlp.eval.embed import EvalModel
    from ctvlp.export import load_part
    from ctvlp.models.vqvae import build_vqvae
    from jobs.compare import method_spec
    from jobs.plan import export_uri, resolve_phase

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "specs" / "compare.yaml"))
    ap.add_argument("--seed", type=int, default=0, help="the full row's seed k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per forward (phase 4: 8 per worker)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from bench.alignment_budget import load_split

    spec = method_spec(load_spec(args.spec, args.overrides), "full", args.seed)
    vision = EvalModel.from_export(export_uri(resolve_phase(spec, 2), 2)).parts["vision"]  # phase 3's encoder
    vqvae = build_vqvae(spec.model, spec.data.num_anatomies)
    load_part(vqvae, "vqvae", export_uri(resolve_phase(spec, 3), 3))
    samples = load_split(Path(spec.data.shards_uri), args.split)
    modes = {m: instance_errors(vision, vqvae, samples, spec.data.eval_window, args.batch_size, m == "train")
             for m in ("eval", "train")}
    ev, tr = modes["eval"], modes["train"]
    shift = [float((b - a).norm() / a.norm().clamp_min(1e-8)) for a, b in zip(ev["tokens"], tr["tokens"])]
    intact = np.array(ev["intact"])
    result = {
        "run": export_uri(resolve_phase(spec, 3), 3), "split": args.split, "instances": len(intact),
        "load_avg": os.getloadavg()[0],
        "not_intact_share": float(1 - intact.mean()),
        "normality_auc_eval_mode": auc(ev["abnormal"], ev["error"]),
        "normality_auc_eval_mode_intact": auc(np.array(ev["abnormal"])[intact], np.array(ev["error"])[intact]),
        "normality_auc_eval_mode_cut": auc(np.array(ev["abnormal"])[~intact], np.array(ev["error"])[~intact]),
        "normality_auc_train_mode": auc(tr["abnormal"], tr["error"]),
        "token_shift_train_vs_eval_median": float(np.median(shift)),
        "recon_error_eval_mode_median": float(np.median(ev["error"])),
        "recon_error_train_mode_median": float(np.median(tr["error"])),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "boost_diagnosis.json").write_text(json.dumps(result, indent=1))
    lines = ["# Boost diagnosis (bench/boost_diagnosis.py)", "",
             f"Run: `{result['run']}` (the comparison's `full` row, seed {args.seed}); {args.split} split, "
             f"{result['instances']} (study, anatomy) windows; load average {result['load_avg']:.1f}.", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result.items() if isinstance(v, float) and k != "load_avg"]
    (out / "boost_diagnosis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
