"""LLM report parser: a transformers causal LM asked for per-anatomy JSON, validated, with a policy.

The ViSD-Boost paper has Qwen judge each organ "completely healthy" vs "any abnormality"; its
prompt is unreleased (shared/research/method.md 5.4), so :data:`PROMPT` is ours. The model's
reply must be one JSON object ``{anatomy: {"abnormal": bool, "uncertain": bool, "text": str}}``
with exactly the requested anatomies (:mod:`ctvlp.reports.schema`); anything else (no JSON, bad
types, missing or extra anatomies, an abnormal or uncertain anatomy without text) is a failed
reply. On failure the ``fallback`` policy (``ingest.llm_fallback``) either parses the report with
the rules (``"rules"``, as before issue 21) or marks it failed (``"quarantine"``: ingest
quarantines it as ``report_unparsed``). Hedged findings ("uncertain" and not "abnormal") are
labelled by the same uncertainty policy as the rule parser (``ingest.report_uncertainty``), and
the prompt carries the same text the rule parser reads: the findings and impression of a report
pasted whole with its headers (:func:`ctvlp.reports.normalise.report_sections`).
``stats`` counts the outcomes and the failure reasons (codes only: report text never reaches logs).

Ingest runs it in a Ray Data actor pool (``ingest.reports``); :func:`hf_batch_generate_fn` loads a
local model directory or a Hugging Face name once per actor and generates greedily in batches.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ctvlp.reports.normalise import report_sections
from ctvlp.reports.rules import NORMAL_TEMPLATE, UNCERTAINTY_POLICIES, Parsed, RuleReportParser
from ctvlp.reports.schema import validate_for

GenerateFn = Callable[[str], str]
BatchGenerateFn = Callable[[list[str]], list[str]]

PROMPT = """You are a radiologist. Read the CT report below and, for each anatomy in this list:
{anatomies}
decide whether the report states ANY abnormality of it ("abnormal": true), only raises a hedged
one such as "possible", "suspicious for" or "cannot be excluded" ("abnormal": false,
"uncertain": true), or it is completely healthy or not mentioned (both false), and copy the
report's sentences about it into "text" (empty string if none). Stable or unchanged findings,
post-operative states (bypass grafts, valve replacement, stent graft, esophagectomy, lobectomy),
calcification and a measurement beyond normal are abnormal; "heart size is unchanged" alone, a
resolved finding and a physiologic amount of fluid are not.
Answer with one JSON object and nothing else, with exactly these keys:
{{"<anatomy>": {{"abnormal": true|false, "uncertain": true|false, "text": "..."}}, ...}}

FINDINGS: {findings}
IMPRESSION: {impression}
"""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class LLMReplyError(ValueError):
    """The model's reply failed validation and the fallback policy is ``quarantine``."""


def extract_json(reply: str) -> Any:
    """The JSON object in a model reply (inside a ``` fence, or from the first ``{`` to the last
    ``}``). Raises ValueError when there is none."""
    fenced = _FENCE.search(reply)
    body = fenced.group(1) if fenced else reply
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the reply")
    return json.loads(body[start : end + 1])


def hf_batch_generate_fn(model: str, max_new_tokens: int = 768, device: str | None = None) -> BatchGenerateFn:
    """Greedy batched generation with a transformers causal LM: a local directory (read with
    ``local_files_only``) or a Hugging Face name (e.g. ``Qwen/Qwen2.5-7B-Instruct``). The chat
    template is used when the tokenizer has one; prompts are left-padded."""
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = os.path.isdir(model)
    tok = AutoTokenizer.from_pretrained(model, local_files_only=local)
    tok.padding_side = "left"  # decoder-only: new tokens follow the prompt's last real token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto", local_files_only=local)
    lm.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()

    def render(prompt: str) -> str:
        if tok.chat_template:
            return tok.apply_chat_template([{"role": "user", "content": prompt}],
                                           add_generation_prompt=True, tokenize=False)
        return prompt

    @torch.inference_mode()
    def generate(prompts: list[str]) -> list[str]:
        enc = tok([render(p) for p in prompts], return_tensors="pt", padding=True).to(lm.device)
        enc.pop("token_type_ids", None)  # BERT-style tokenizers add them; causal LMs take none
        out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    return generate


def hf_generate_fn(model_path: str, max_new_tokens: int = 1024, device: str | None = None) -> GenerateFn:
    """One prompt at a time (:func:`hf_batch_generate_fn` with a batch of one)."""
    batch = hf_batch_generate_fn(model_path, max_new_tokens, device)
    return lambda prompt: batch([prompt])[0]


@dataclass
class LLMResult:
    """One report's outcome: ``parsed`` (None when failed), ``source`` "llm" | "rules" | "failed"
    and ``reason`` (the exception type of a failed reply, "" otherwise)."""

    parsed: Parsed | None
    source: str
    reason: str = ""


class LLMReportParser:
    """Per-anatomy texts and labels from a causal LM, validated, with a failure policy.

    Args:
        anatomies: ordered anatomy names (``spec.data.anatomies``).
        model_path: local model directory or Hugging Face name (``spec.ingest.llm_path``); loaded once.
        generate_fn: ``prompt -> reply`` to use instead of loading ``model_path`` (tests, servers).
        batch_generate_fn: ``[prompt] -> [reply]``; used by :meth:`parse_batch` when given.
        uncertainty: label of hedged-only anatomies, as :class:`RuleReportParser`.
        fallback: "rules" (parse a failed reply's report with the rules) or "quarantine".
        max_new_tokens: reply budget when the model is loaded here.
    """

    def __init__(self, anatomies: list[str], model_path: str | None = None, generate_fn: GenerateFn | None = None,
                 batch_generate_fn: BatchGenerateFn | None = None, uncertainty: str = "abnormal",
                 fallback: str = "rules", max_new_tokens: int = 768):
        if fallback not in ("rules", "quarantine"):
            raise ValueError(f"ingest.llm_fallback must be 'rules' or 'quarantine', got {fallback!r}")
        if generate_fn is None and batch_generate_fn is None:
            if not model_path:
                raise ValueError("LLMReportParser needs model_path (a model dir or name) or generate_fn")
            batch_generate_fn = hf_batch_generate_fn(model_path, max_new_tokens)
        self.anatomies = list(anatomies)
        self.generate_batch = batch_generate_fn or (lambda prompts: [generate_fn(p) for p in prompts])
        self.rules = RuleReportParser(self.anatomies, uncertainty=uncertainty)
        self.uncertainty, self.fallback = uncertainty, fallback
        self.stats: Counter[str] = Counter()

    def prompt(self, findings: str | None, impression: str | None) -> str:
        """The prompt for one report: its findings and impression sections only, as the rule parser
        reads them (:func:`ctvlp.reports.normalise.report_sections` drops indication, history,
        technique and comparison lines of a report pasted whole)."""
        return PROMPT.format(anatomies=", ".join(self.anatomies), findings=report_sections(findings or ""),
                             impression=report_sections(impression or ""))

    def _from_reply(self, reply: str) -> Parsed:
        parsed = validate_for(extract_json(reply), self.anatomies)
        texts, labels, mentioned = {}, {}, []
        for name in self.anatomies:
            item = parsed[name]
            if (item.abnormal or item.uncertain) and not item.text:
                raise ValueError(f"{name} is abnormal or uncertain without text")
            label = 1 if item.abnormal else UNCERTAINTY_POLICIES[self.uncertainty] if item.uncertain else 0
            template = NORMAL_TEMPLATE.format(anatomy=name)
            texts[name] = item.text if label != 0 else " ".join(t for t in (template, item.text) if t)
            labels[name] = label
            if item.text or item.abnormal or item.uncertain:
                mentioned.append(name)
        return Parsed(texts, labels, mentioned)

    def _outcome(self, reply: str, findings: str | None, impression: str | None) -> LLMResult:
        try:
            result = LLMResult(self._from_reply(reply), "llm")
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            reason = type(exc).__name__
            self.stats["fallback"] += 1
            self.stats[f"fallback:{reason}"] += 1
            if self.fallback == "quarantine":
                return LLMResult(None, "failed", reason)
            return LLMResult(self.rules.parse(findings, impression), "rules", reason)
        self.stats["llm"] += 1
        return result

    def parse_batch(self, reports: list[tuple[str | None, str | None]]) -> list[LLMResult]:
        """One :class:`LLMResult` per ``(findings, impression)``, from one generate call."""
        if not reports:
            return []
        replies = self.generate_batch([self.prompt(f, i) for f, i in reports])
        if len(replies) != len(reports):
            raise RuntimeError(f"generate returned {len(replies)} replies for {len(reports)} prompts")
        return [self._outcome(r, f, i) for r, (f, i) in zip(replies, reports)]

    def __call__(self, findings: str | None, impression: str | None) -> dict[str, tuple[str, int]]:
        """``{anatomy: (text, label)}``, like :func:`ctvlp.reports.parse_report`.

        Raises:
            LLMReplyError: the reply was invalid and ``fallback`` is "quarantine".
        """
        res = self.parse_batch([(findings, impression)])[0]
        if res.parsed is None:
            raise LLMReplyError(f"invalid LLM reply ({res.reason}) and ingest.llm_fallback=quarantine")
        return res.parsed.as_dict()


def save_tiny_causal_lm(out_dir: str, seed: int = 0) -> str:
    """The debug flavour: a 2-layer GPT-2 (random weights, ~0.2 M parameters) with the tiny BERT
    WordPiece tokenizer of :mod:`ctvlp.models.text`, saved to ``out_dir`` without any download.

    Its replies are nonsense (and always ``max_new_tokens`` long); it exercises loading by path,
    the prompt, batched generation and the failure policy on CPU in seconds (tests,
    ``bench/llm_parser.py``). Returns ``out_dir``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ctvlp.models.text import build_tokenizer

    tok = build_tokenizer("tiny")
    # No end-of-sequence token: every reply runs to max_new_tokens, so a benchmark pays the full
    # reply budget whatever the random weights prefer.
    cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=64, n_layer=2, n_head=2,
                     bos_token_id=tok.cls_token_id, eos_token_id=None, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
