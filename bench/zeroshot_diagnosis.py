"""Where does zero-shot diagnosis fail: the image side or the text side?

For one finished demo (or any run with local shards and a phase-2/phase-4 export), per disease:

* ``image zero-shot``: the evaluated score, softmax over the ("Not X.", "X.") prompt pair of the
  test image's anatomy embedding (as ``jobs/evaluate.py``, minus bootstrap and report);
* ``text zero-shot``: the same prompt pair scored against the embedding of the study's own
  anatomy *report text* instead of its image. Low here means the prompts do not separate the
  reports themselves, so no image model can do better through them;
* ``image probe``: a logistic head (``ctvlp.eval.probe``) on the frozen image embeddings, fitted
  on the train split. Low here means the embedding does not carry the finding at all;
* ``text probe``: the same head on the report-text embeddings (a ceiling for the text tower).

Usage: ``python bench/zeroshot_diagnosis.py --run demo_out/main [--phase 4] [--out bench/results]``
-> ``zeroshot_diagnosis.{json,md}``. Splits are read from ``<run>/shards/data/<split>-*.parquet``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from bench.alignment_budget import load_split  # noqa: E402
from ctvlp.eval.embed import EvalModel, embed_studies  # noqa: E402
from ctvlp.eval.probe import ProbeSet, fit_probe  # noqa: E402
from ctvlp.eval.zeroshot import PromptBank, label_matrix, pair_probability  # noqa: E402


def text_embeddings(model: EvalModel, samples: list[dict]) -> np.ndarray:
    """[S, M, E] embeddings of every study's per-anatomy report text (NaN where it has none)."""
    m, e = len(model.anatomies), int(model.spec.model.embed_dim)
    out = np.full((len(samples), m, e), np.nan, np.float32)
    for j in range(m):
        rows = [i for i, s in enumerate(samples) if s["texts"][j]]
        if rows:
            out[rows, j] = PromptBank.encode_texts(model, [samples[i]["texts"][j] for i in rows], j).numpy()
    return out


def zero_shot_scores(bank: PromptBank, embeds: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[S, D] prompt-pair scores of embeddings [S, M, E]; NaN where the anatomy is absent."""
    out = np.full((embeds.shape[0], len(bank.names)), np.nan)
    for k, name in enumerate(bank.names):
        j = bank.anatomy_index[name]
        rows = np.flatnonzero(present[:, j])
        v = torch.from_numpy(np.ascontiguousarray(embeds[rows, j]))
        out[rows, k] = pair_probability(v, bank.prompts[name], bank.tau).numpy()
    return out


def column_aucs(scores: np.ndarray, labels: np.ndarray) -> list[float | None]:
    aucs = []
    for k in range(labels.shape[1]):
        ok = np.isfinite(scores[:, k]) & np.isfinite(labels[:, k])
        y = labels[ok, k].astype(int)
        aucs.append(float(roc_auc_score(y, scores[ok, k])) if 0 < y.sum() < len(y) else None)
    return aucs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a demo output dir holding shards/ and runs/")
    ap.add_argument("--phase", type=int, default=4, choices=(2, 4), help="which export to diagnose")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    run, t0 = Path(args.run), time.time()
    exports = sorted(run.glob(f"runs/*phase{args.phase}-*/export"))
    if not exports:
        raise FileNotFoundError(f"no phase-{args.phase} export under {run / 'runs'}")
    model = EvalModel.from_export(exports[-1])
    diseases = model.spec.eval.disease_list(model.spec.data)
    bank = PromptBank(model, diseases)
    names, roi = bank.names, model.spec.data.eval_window
    anatomy_index = [bank.anatomy_index[n] for n in names]
    split = {s: load_split(run / "shards", s) for s in ("train", "test")}
    labels = {s: label_matrix([x["disease_labels"] for x in v], names) for s, v in split.items()}
    image = {s: embed_studies(model, v, roi) for s, v in split.items()}
    text = {s: text_embeddings(model, v) for s, v in split.items()}
    text_present = {s: np.isfinite(t[..., 0]) for s, t in text.items()}

    columns = {
        "image zero-shot": zero_shot_scores(bank, image["test"].embeds, image["test"].present),
        "text zero-shot": zero_shot_scores(bank, text["test"], text_present["test"]),
    }
    for what, emb, present in (("image probe", {s: image[s].embeds for s in image}, {s: image[s].present for s in image}),
                               ("text probe", text, text_present)):
        sets = {s: ProbeSet(emb[s], present[s], labels[s]) for s in split}
        columns[what] = fit_probe(sets["train"], names, anatomy_index, epochs=500).predict(sets["test"])
    table = {what: dict(zip(names, column_aucs(sc, labels["test"]))) for what, sc in columns.items()}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"run": str(run), "export": str(exports[-1]), "phase": args.phase, "seconds": round(time.time() - t0, 1),
              "num_train": len(split["train"]), "num_test": len(split["test"]), "auc": table}
    (out / "zeroshot_diagnosis.json").write_text(json.dumps(result, indent=1))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "# Zero-shot diagnosis: image side vs text side (bench/zeroshot_diagnosis.py)", "",
        f"Phase-{args.phase} export of a demo run ({len(split['train'])} train / {len(split['test'])} test "
        f"studies); AUC on the test split. Text columns score each study's own anatomy report text in "
        "place of its image; probes are logistic heads fitted on the train split.", "",
        "| disease | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    lines += [f"| {n} | " + " | ".join(fmt(table[w][n]) for w in table) + " |" for n in names]
    lines += ["| macro | " + " | ".join(fmt(float(np.mean([v for v in table[w].values() if v is not None])))
                                          for w in table) + " |", ""]
    (out / "zeroshot_diagnosis.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
