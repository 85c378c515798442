"""Report -> per-anatomy text and normal/abnormal label.

``parse_report(findings, impression, anatomies) -> {anatomy: (text, abnormal)}`` is the default
rule parser (:mod:`ctvlp.reports.rules`); :class:`ctvlp.reports.llm.LLMReportParser` is the
pluggable causal-LM backend that validates its JSON (:mod:`ctvlp.reports.schema`) and falls back
to the rules. Normal template: ``"{anatomy} shows no significant abnormalities."``.
"""

from ctvlp.reports.rules import NORMAL_TEMPLATE, RuleReportParser, parse_report

__all__ = ["NORMAL_TEMPLATE", "RuleReportParser", "parse_report"]
