"""Throughput of the LLM report parser's actor (reports/s per actor) on CPU with the tiny model.

Runs :class:`ingest.reports.LLMReportActor` -- the class the ``ingest.report_parser=llm`` actor
pool runs -- in this process on one torch thread (an actor holds one CPU), with the debug-size
causal LM (:func:`ctvlp.reports.llm.save_tiny_causal_lm`: 2-layer GPT-2, ~0.2 M parameters,
loaded by path), over report texts of the labelled dev set. The debug model has no
end-of-sequence token, so every reply is exactly ``--max-new-tokens`` long (a chest-grouping JSON
reply is ~150-250 tokens). The figure measures the pipeline's own path (prompting,
tokenising, generation, validation, the rule fallback) on CPU, not a 7B model on a GPU.

Usage: ``python bench/llm_parser.py`` -> bench/results/llm_parser.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ctvlp.anatomy import CHEST  # noqa: E402
from ctvlp.reports.llm import save_tiny_causal_lm  # noqa: E402
from ctvlp.reports.score import read_labelled  # noqa: E402
from ingest.reports import LLMReportActor, ReportConfig  # noqa: E402

OUT = ROOT / "bench/results/llm_parser"


def measure(model: str, texts: list[str], batch_size: int, max_new_tokens: int) -> dict:
    cfg = ReportConfig(parser="llm", llm_path=model, llm_fallback="rules", llm_batch_size=batch_size,
                       llm_max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    actor = LLMReportActor(list(CHEST), cfg)
    load_s = time.perf_counter() - t0
    frame = pd.DataFrame({"findings": texts, "impression": [""] * len(texts)})
    t0 = time.perf_counter()
    for i in range(0, len(frame), batch_size):
        actor(frame.iloc[i : i + batch_size])
    sec = time.perf_counter() - t0
    return {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_reports": len(texts),
            "load_s": round(load_s, 2), "seconds": round(sec, 2), "reports_per_s": round(len(texts) / sec, 3),
            "fallbacks": int(actor.parser.stats["fallback"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-reports", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = read_labelled(ROOT / "tests/ctvlp/reports/labelled/dev.tsv")
    texts = [r["text"] for r in rows[: args.num_reports]]
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_causal_lm(tmp)
        results = [measure(model, texts, b, args.max_new_tokens) for b in (1, 8)]
    env = {"torch": torch.__version__, "threads": 1, "cpu": platform.processor() or platform.machine()}
    OUT.with_suffix(".json").write_text(json.dumps({"env": env, "results": results}, indent=1) + "\n")
    lines = ["# LLM report parser: reports/s per actor (CPU, tiny causal LM)", "",
             f"`python bench/llm_parser.py`: `LLMReportActor` in-process, 1 torch thread, torch {env['torch']}, "
             f"the debug-size GPT-2 loaded by path, {args.num_reports} dev-set reports, exactly "
             f"{args.max_new_tokens} new tokens per reply (its replies are invalid, so each report also "
             "pays the rule-parser fallback). Measured on a shared 2-core machine under load (other "
             "jobs running): the pipeline's own path on CPU, not a 7B-on-GPU forecast.", "",
             "| batch size | reports | load s | seconds | reports/s per actor |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['num_reports']} | {r['load_s']} | {r['seconds']} | {r['reports_per_s']} |"
              for r in results]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
