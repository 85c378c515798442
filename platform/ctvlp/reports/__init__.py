"""Report -> per-anatomy text and label (1 abnormal, 0 normal, -1 unknown).

``parse_report(findings, impression, anatomies, uncertainty) -> {anatomy: (text, label)}`` is the
default rule parser (:mod:`ctvlp.reports.rules`; text clean-up in :mod:`ctvlp.reports.normalise`,
negation and hedges in :mod:`ctvlp.reports.assertion`, measurements in :mod:`ctvlp.reports.measure`);
:class:`ctvlp.reports.llm.LLMReportParser` is the causal-LM backend that validates its JSON
(:mod:`ctvlp.reports.schema`) and falls back to the rules or fails, by policy.
:mod:`ctvlp.reports.readable` spots reports no parser can read (empty, another language);
:mod:`ctvlp.reports.score` scores a parser on the labelled sets. Normal template:
``"{anatomy} shows no significant abnormalities."``.
"""

from ctvlp.reports.rules import NORMAL_TEMPLATE, RuleReportParser, parse_report

__all__ = ["NORMAL_TEMPLATE", "RuleReportParser", "parse_report"]
