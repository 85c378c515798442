"""LLM report parser: a transformers causal LM asked for per-anatomy JSON, checked, rules as fallback.

The ViSD-Boost paper has Qwen judge each organ "completely healthy" vs "any abnormality"; its
prompt is unreleased (shared/research/method.md 5.4), so :data:`PROMPT` is ours. The model's
reply must be one JSON object ``{anatomy: {"abnormal": bool, "text": str}}`` with exactly the
requested anatomies (:mod:`ctvlp.reports.schema`); anything else (no JSON, bad types, missing or
extra anatomies, an abnormal anatomy without text) falls back to the rule parser. ``stats`` counts
both outcomes and the fallback reasons (codes only: report text never reaches logs).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ctvlp.reports.rules import NORMAL_TEMPLATE, RuleReportParser
from ctvlp.reports.schema import validate_for

GenerateFn = Callable[[str], str]

PROMPT = """You are a radiologist. Read the CT report below and, for each anatomy in this list:
{anatomies}
decide whether the report describes ANY abnormality of it ("abnormal": true; uncertain or
possible findings count as abnormal) or it is completely healthy or not mentioned ("abnormal":
false), and copy the report's sentences about it into "text" (empty string if none).
Answer with one JSON object and nothing else, with exactly these keys:
{{"<anatomy>": {{"abnormal": true|false, "text": "..."}}, ...}}

FINDINGS: {findings}
IMPRESSION: {impression}
"""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(reply: str) -> Any:
    """The JSON object in a model reply (inside a ``` fence, or from the first ``{`` to the last
    ``}``). Raises ValueError when there is none."""
    fenced = _FENCE.search(reply)
    body = fenced.group(1) if fenced else reply
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    return json.loads(body[start : end + 1])


def hf_generate_fn(model_path: str, max_new_tokens: int = 1024, device: str | None = None) -> GenerateFn:
    """Greedy chat generation with a local transformers causal LM (e.g. Qwen2.5-7B-Instruct)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", local_files_only=True)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()

    @torch.inference_mode()
    def generate(prompt: str) -> str:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = (ids["input_ids"] if hasattr(ids, "keys") else ids).to(model.device)
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    return generate


class LLMReportParser:
    """Per-anatomy texts and labels from a causal LM, validated, with the rule parser as fallback.

    Args:
        anatomies: ordered anatomy names (``spec.data.anatomies``).
        model_path: local transformers model directory (``spec.ingest.llm_path``); loaded once.
        generate_fn: ``prompt -> reply`` to use instead of loading ``model_path`` (tests, servers).
    """

    def __init__(self, anatomies: list[str], model_path: str | None = None, generate_fn: GenerateFn | None = None):
        if generate_fn is None:
            if not model_path:
                raise ValueError("LLMReportParser needs model_path (a local model dir) or generate_fn")
            generate_fn = hf_generate_fn(model_path)
        self.anatomies = list(anatomies)
        self.generate = generate_fn
        self.rules = RuleReportParser(self.anatomies)
        self.stats: Counter[str] = Counter()

    def prompt(self, findings: str | None, impression: str | None) -> str:
        return PROMPT.format(
            anatomies=", ".join(self.anatomies), findings=findings or "", impression=impression or ""
        )

    def _from_reply(self, reply: str) -> dict[str, tuple[str, int]]:
        parsed = validate_for(extract_json(reply), self.anatomies)
        out: dict[str, tuple[str, int]] = {}
        for name in self.anatomies:
            item = parsed[name]
            if item.abnormal and not item.text:
                raise ValueError(f"{name} is abnormal without text")
            template = NORMAL_TEMPLATE.format(anatomy=name)
            text = item.text if item.abnormal else " ".join(t for t in (template, item.text) if t)
            out[name] = (text, int(item.abnormal))
        return out

    def __call__(self, findings: str | None, impression: str | None) -> dict[str, tuple[str, int]]:
        """``{anatomy: (text, abnormal)}``, like :func:`ctvlp.reports.parse_report`."""
        reply = self.generate(self.prompt(findings, impression))
        try:
            result = self._from_reply(reply)
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            self.stats["fallback"] += 1
            self.stats[f"fallback:{type(exc).__name__}"] += 1
            return self.rules(findings, impression)
        self.stats["llm"] += 1
        return result
