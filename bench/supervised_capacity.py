"""Can the demo's vision model learn a finding at all in a CPU budget? A supervised ceiling.

The demo spec's vision model (encoder + anatomy query pooling, from scratch) gets one logit per
disease on its anatomy's embedding and is trained with binary cross-entropy on the train split's
labels for a fixed wall-clock budget; the AUC is read on the test split. Direct labels are the
strongest signal the model could get, so a finding this cannot learn in the budget is not held
back by the report text or the contrastive loss, but by the vision side (architecture, input,
optimisation at this step count). Compare with the zero-shot table of the same shards
(`bench/zeroshot_diagnosis.py`).

Usage: ``python bench/supervised_capacity.py --run demo_out/main [--seconds 240]``
-> ``bench/results/supervised_capacity.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from bench.alignment_budget import load_split  # noqa: E402
from bench.zeroshot_diagnosis import column_aucs  # noqa: E402
from ctvlp.config import load_spec  # noqa: E402
from ctvlp.data.augment import random_crop  # noqa: E402
from ctvlp.models.visd import build_vision_model  # noqa: E402


def stacked_crops(run: Path, split: str, crop: tuple[int, int, int], names: list[str], seed: int):
    """Stacked crops of one split: image uint8 [S, 1, D, H, W], mask int64 [S, D, H, W], labels [S, K]."""
    samples = load_split(run / "shards", split)
    rng = np.random.default_rng(seed)
    crops = [random_crop(s["image"], s["mask"], crop, rng) for s in samples]
    image = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
    mask = torch.from_numpy(np.stack([c[1] for c in crops])).long()
    labels = torch.tensor([[float(s["disease_labels"].get(n, float("nan"))) for n in names] for s in samples])
    return image, mask, labels


def logits(model, head: torch.nn.Linear, image: torch.Tensor, mask: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """[B, K]: disease k's logit is a linear function of its anatomy's (unit-norm) embedding."""
    emb = model(image.float() / 255.0, mask)["embeds"][:, cols]  # [B, K, E]
    return (emb * head.weight[None]).sum(-1) * 10.0 + head.bias  # x10: unit-norm inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a demo output dir holding shards/")
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "specs" / "demo.yaml"))
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: --seconds decides)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    run, spec = Path(args.run), load_spec(args.spec)
    anatomies = json.loads((run / "shards" / "index.json").read_text())["anatomies"]
    diseases = spec.eval.disease_list(spec.data)
    names, cols = [d.name for d in diseases], [anatomies.index(d.anatomy) for d in diseases]
    crop = tuple(spec.data.crop_size)
    x_tr, m_tr, y_tr = stacked_crops(run, "train", crop, names, 0)
    x_te, m_te, y_te = stacked_crops(run, "test", crop, names, 1)

    model = build_vision_model(spec.model, len(anatomies), hu_window=spec.data.hu_window)
    head = torch.nn.Linear(spec.model.embed_dim, len(names))
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=args.lr)
    gen = torch.Generator().manual_seed(0)
    t0, steps, losses = time.time(), 0, []
    while (steps < args.steps) if args.steps else (time.time() - t0 < args.seconds):
        idx = torch.randint(0, len(x_tr), (args.batch_size,), generator=gen)
        y = y_tr[idx]
        known = ~torch.isnan(y)
        loss = F.binary_cross_entropy_with_logits(logits(model, head, x_tr[idx], m_tr[idx], cols)[known], y[known])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.item())
    elapsed = time.time() - t0
    model.eval()
    with torch.no_grad():
        scores = torch.cat([logits(model, head, x_te[i : i + 32], m_te[i : i + 32], cols)
                            for i in range(0, len(x_te), 32)]).numpy()
    auc = dict(zip(names, column_aucs(scores, y_te.numpy())))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run), "spec": args.spec, "seconds": round(elapsed, 1), "steps": steps, "batch_size": args.batch_size,
              "lr": args.lr, "threads": 2, "loss_first10": float(np.mean(losses[:10])),
              "loss_last10": float(np.mean(losses[-10:])), "num_train": len(x_tr), "num_test": len(x_te), "auc": auc}
    (out / "supervised_capacity.json").write_text(json.dumps(result, indent=1))
    zs_path = out / "zeroshot_diagnosis.json"
    zs = json.loads(zs_path.read_text())["auc"]["image zero-shot"] if zs_path.is_file() else {}
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["# Supervised ceiling of the demo's vision model (bench/supervised_capacity.py)", "",
             f"`{Path(args.spec).relative_to(ROOT) if Path(args.spec).is_relative_to(ROOT) else args.spec}`'s "
             "vision model from scratch + one logit per disease on its anatomy "
             f"embedding, BCE on the train split ({len(x_tr)} studies) for {elapsed:.0f} s "
             f"({steps} steps of {args.batch_size}, 2 threads); test AUC ({len(x_te)} studies). The "
             "zero-shot column is `zeroshot_diagnosis.json` (the demo's phase-4 model) when present.", "",
             "| disease | supervised | zero-shot |", "|---|---|---|"]
    lines += [f"| {n} | {fmt(auc[n])} | {fmt(zs.get(n))} |" for n in names]
    (out / "supervised_capacity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
