"""Report stage of ingest: per-anatomy texts and labels, unreadable reports, the LLM actor pool.

``ingest.report_parser: rules`` parses each report inside the CPU stage (:func:`report_labels`).
``ingest.report_parser: llm`` adds a Ray Data actor pool before the CPU stage
(:func:`add_llm_stage`): each :class:`LLMReportActor` loads the causal LM once (a local directory
or a Hugging Face name, ``ingest.llm_path``; on a GPU with ``ingest.llm_num_gpus``), asks it for
per-anatomy JSON in batches, validates it and applies ``ingest.llm_fallback``; the outcome travels
to the CPU stage as a JSON column ``_report``.

Either way no unreadable report is written as all-normal: an empty report, one in a language
outside ``ingest.report_languages`` (:mod:`ctvlp.reports.readable`), one with no sentence about
any anatomy of the grouping, or a failed LLM reply under ``llm_fallback: quarantine`` is
quarantined as ``report_unparsed`` -- or, under ``report_unreadable: unknown``, written with every
label -1 (left out of the losses and the evaluation by :func:`ctvlp.data.decode_sample`); a failed
LLM reply is always quarantined, as that policy asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ctvlp.reports.readable import unreadable_reason
from ctvlp.reports.rules import Parsed, rule_parser
from ingest.quarantine import QuarantineError

UNKNOWN = -1


@dataclass(frozen=True)
class ReportConfig:
    """The spec's report keys (``ingest.report_*``, ``ingest.llm_*``) as plain values.

    ``llm_generate`` replaces loading ``llm_path`` with a picklable ``[prompt] -> [reply]``
    (tests and external servers); it is not a spec key.
    """

    parser: str = "rules"
    uncertainty: str = "abnormal"
    unreadable: str = "quarantine"
    languages: tuple[str, ...] = ("en",)
    llm_path: str | None = None
    llm_fallback: str = "rules"
    llm_num_actors: int = 1
    llm_num_gpus: float = 0.0
    llm_batch_size: int = 8
    llm_max_new_tokens: int = 768
    llm_generate: Callable[[list[str]], list[str]] | None = None

    @classmethod
    def from_spec(cls, ing: Any) -> ReportConfig:
        return cls(parser=ing.report_parser, uncertainty=ing.report_uncertainty,
                   unreadable=ing.report_unreadable, languages=tuple(ing.report_languages),
                   llm_path=ing.llm_path, llm_fallback=ing.llm_fallback, llm_num_actors=ing.llm_num_actors,
                   llm_num_gpus=ing.llm_num_gpus, llm_batch_size=ing.llm_batch_size,
                   llm_max_new_tokens=ing.llm_max_new_tokens)

    def fingerprint(self) -> dict[str, Any]:
        """What changes the written labels (for the resume check)."""
        return {"parser": self.parser, "uncertainty": self.uncertainty, "unreadable": self.unreadable,
                "languages": list(self.languages), "llm_path": self.llm_path if self.parser == "llm" else None,
                "llm_fallback": self.llm_fallback if self.parser == "llm" else None}


def _encode(parsed: Parsed | None, source: str, reason: str, anatomies: list[str]) -> str:
    if parsed is None:
        return json.dumps({"source": source, "reason": reason})
    return json.dumps({"source": source, "reason": reason, "mentioned": parsed.mentioned,
                       "texts": [parsed.texts[a] for a in anatomies], "labels": [parsed.labels[a] for a in anatomies]})


def _decode(blob: str, anatomies: list[str]) -> tuple[Parsed | None, str]:
    d = json.loads(blob)
    if "texts" not in d:
        return None, d.get("reason", "")
    return Parsed(dict(zip(anatomies, d["texts"])), dict(zip(anatomies, d["labels"])), d["mentioned"]), ""


def report_labels(rec: dict[str, Any], anatomies: list[str], cfg: ReportConfig) -> tuple[list[str], list[int]]:
    """Per-anatomy (texts, labels) of one manifest record, in the grouping's order.

    Labels: 1 abnormal, 0 normal, -1 unknown. Raises QuarantineError: ``missing_report`` (no
    findings and no impression) or ``report_unparsed`` (see the module doc; detail names the case).
    """
    findings, impression = rec.get("findings", ""), rec.get("impression", "")
    if not (findings or impression):
        raise QuarantineError("missing_report", "no findings and no impression")
    reason = unreadable_reason(findings, impression, cfg.languages)
    parsed = None
    if reason is None:
        if rec.get("_report"):  # from the LLM actor pool
            parsed, failed = _decode(rec["_report"], anatomies)
            if parsed is None:
                raise QuarantineError("report_unparsed", f"invalid LLM reply ({failed}), llm_fallback=quarantine")
        else:
            parsed = rule_parser(anatomies, cfg.uncertainty).parse(findings, impression)
        if not parsed.mentioned:
            reason = "no sentence about any anatomy of the grouping"
    if reason is not None:
        if cfg.unreadable == "quarantine":
            raise QuarantineError("report_unparsed", reason)
        return ["" for _ in anatomies], [UNKNOWN] * len(anatomies)
    return [parsed.texts[a] for a in anatomies], [int(parsed.labels[a]) for a in anatomies]


class LLMReportActor:
    """Ray Data actor UDF: adds ``_report`` (JSON: source, reason, texts, labels, mentioned).

    Reports that are missing or unreadable before parsing get ``""`` (the CPU stage quarantines
    them with the precise reason) and cost no generation.
    """

    def __init__(self, anatomies: list[str], cfg: ReportConfig):
        from ctvlp.reports.llm import LLMReportParser

        self.anatomies, self.cfg = list(anatomies), cfg
        self.parser = LLMReportParser(self.anatomies, model_path=cfg.llm_path, batch_generate_fn=cfg.llm_generate,
                                      uncertainty=cfg.uncertainty, fallback=cfg.llm_fallback,
                                      max_new_tokens=cfg.llm_max_new_tokens)

    def _wanted(self, rec: dict[str, Any]) -> bool:
        f, i = rec.get("findings", ""), rec.get("impression", "")
        return bool(f or i) and unreadable_reason(f, i, self.cfg.languages) is None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        recs = batch.to_dict("records")
        todo = [k for k, r in enumerate(recs) if self._wanted(r)]
        results = self.parser.parse_batch([(recs[k].get("findings", ""), recs[k].get("impression", "")) for k in todo])
        col = [""] * len(recs)
        for k, res in zip(todo, results):
            col[k] = _encode(res.parsed, res.source, res.reason, self.anatomies)
        out = batch.copy()
        out["_report"] = col
        return out


def add_llm_stage(ds: Any, anatomies: list[str], cfg: ReportConfig) -> Any:
    """Append the LLM actor pool (``llm_num_actors`` actors, ``llm_num_gpus`` GPUs each) to ``ds``."""
    kwargs: dict[str, Any] = {"num_gpus": cfg.llm_num_gpus} if cfg.llm_num_gpus > 0 else {"num_cpus": 1}
    return ds.map_batches(
        LLMReportActor, fn_constructor_kwargs={"anatomies": list(anatomies), "cfg": cfg},
        batch_size=cfg.llm_batch_size, batch_format="pandas", concurrency=cfg.llm_num_actors, **kwargs,
    )
