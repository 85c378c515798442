"""ctvlp.reports.llm: JSON validation and rule fallback, driven by a fake generate function."""

from __future__ import annotations

import json

import pytest

from ctvlp.reports import parse_report
from ctvlp.reports.llm import LLMReportParser, extract_json
from ctvlp.reports.schema import validate_for

ANATOMIES = ["lung", "heart"]
FINDINGS, IMPRESSION = "Mild cardiomegaly. No pleural effusion.", ""
VALID = {"lung": {"abnormal": False, "text": "No pleural effusion."}, "heart": {"abnormal": True, "text": "Mild cardiomegaly."}}


class FakeLM:
    """Returns canned replies in turn and records the prompts it was given."""

    def __init__(self, *replies: str):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.replies.pop(0)


def test_valid_json_is_used_and_counted():
    lm = FakeLM("Sure! ```json\n" + json.dumps(VALID) + "\n```")
    parser = LLMReportParser(ANATOMIES, generate_fn=lm)
    out = parser(FINDINGS, IMPRESSION)
    assert out == {
        "lung": ("lung shows no significant abnormalities. No pleural effusion.", 0),
        "heart": ("Mild cardiomegaly.", 1),
    }
    assert parser.stats["llm"] == 1 and parser.stats["fallback"] == 0
    assert "lung, heart" in lm.prompts[0] and FINDINGS in lm.prompts[0]


@pytest.mark.parametrize(
    "reply,reason",
    [
        ("I cannot answer that.", "ValueError"),  # no JSON at all
        ('{"lung": {"abnormal": false, "text": "x"},}', "JSONDecodeError"),  # broken JSON
        (json.dumps({"lung": VALID["lung"]}), "ValueError"),  # an anatomy missing
        (json.dumps({**VALID, "liver": VALID["lung"]}), "ValueError"),  # an unknown anatomy
        (json.dumps({**VALID, "heart": {"abnormal": "yes", "text": "x"}}), "ValidationError"),  # not a bool
        (json.dumps({**VALID, "heart": {"abnormal": True}}), "ValidationError"),  # text missing
        (json.dumps({**VALID, "heart": {"abnormal": True, "text": "  "}}), "ValueError"),  # abnormal, no text
    ],
)
def test_invalid_output_falls_back_to_rules_and_is_counted(reply, reason):
    parser = LLMReportParser(ANATOMIES, generate_fn=FakeLM(reply))
    out = parser(FINDINGS, IMPRESSION)
    assert out == parse_report(FINDINGS, IMPRESSION, ANATOMIES)
    assert parser.stats["fallback"] == 1 and parser.stats["llm"] == 0
    assert parser.stats[f"fallback:{reason}"] == 1


def test_counts_accumulate_over_calls():
    parser = LLMReportParser(ANATOMIES, generate_fn=FakeLM(json.dumps(VALID), "nope", json.dumps(VALID)))
    for _ in range(3):
        parser(FINDINGS, IMPRESSION)
    assert (parser.stats["llm"], parser.stats["fallback"]) == (2, 1)


def test_extract_json_and_schema_helpers():
    assert extract_json('text {"a": 1} more') == {"a": 1}
    with pytest.raises(ValueError, match="no JSON"):
        extract_json("nothing here")
    assert validate_for(VALID, ANATOMIES)["heart"].abnormal is True
    with pytest.raises(ValueError, match="missing"):
        validate_for({"lung": VALID["lung"]}, ANATOMIES)


def test_needs_a_model_or_a_generate_function():
    with pytest.raises(ValueError, match="model_path"):
        LLMReportParser(ANATOMIES)
