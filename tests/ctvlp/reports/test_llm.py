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


# -- issue 21: the real path with a tiny causal LM, the uncertainty and failure policies ---------
CHEST4 = ["lung", "heart", "esophagus", "aorta"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from ctvlp.reports.llm import save_tiny_causal_lm

    return save_tiny_causal_lm(str(tmp_path_factory.mktemp("tiny_lm")))


@pytest.mark.parametrize("fallback", ["rules", "quarantine"])
def test_tiny_causal_lm_by_path_prompt_validation_and_policy(tiny_lm, fallback):
    """A real transformers model loaded by path: its (nonsense) replies fail validation, and the
    failure policy decides: the rule parser's output, or a failed result (ingest quarantines)."""
    from ctvlp.reports.llm import LLMReplyError

    parser = LLMReportParser(CHEST4, model_path=tiny_lm, fallback=fallback, max_new_tokens=8)
    seen = []
    generate = parser.generate_batch
    parser.generate_batch = lambda prompts: seen.extend(prompts) or generate(prompts)
    reports = [(FINDINGS, "Cardiomegaly."), ("Lungs are clear.", "")]
    results = parser.parse_batch(reports)
    assert len(seen) == 2 and "lung, heart, esophagus, aorta" in seen[0] and FINDINGS in seen[0]
    assert '"uncertain"' in seen[0] and "IMPRESSION: Cardiomegaly." in seen[0]
    assert parser.stats["fallback"] == 2 and parser.stats["llm"] == 0
    if fallback == "rules":
        assert [r.source for r in results] == ["rules", "rules"]
        assert results[0].parsed.as_dict() == parse_report(FINDINGS, "Cardiomegaly.", CHEST4)
    else:
        assert [(r.source, r.parsed) for r in results] == [("failed", None), ("failed", None)]
        with pytest.raises(LLMReplyError, match="llm_fallback=quarantine"):
            parser(FINDINGS, "")


def _answer(prompt: str) -> str:
    """Deterministic 'model': heart abnormal, lung hedged, the rest not mentioned."""
    assert "FINDINGS:" in prompt
    return json.dumps({"lung": {"abnormal": False, "uncertain": True, "text": "Possible small effusion."},
                       "heart": {"abnormal": True, "uncertain": False, "text": "Mild cardiomegaly."},
                       "esophagus": {"abnormal": False, "text": ""}, "aorta": {"abnormal": False, "text": ""}})


@pytest.mark.parametrize("policy,lung", [("abnormal", 1), ("unknown", -1), ("normal", 0)])
def test_happy_path_applies_the_uncertainty_policy(policy, lung):
    parser = LLMReportParser(CHEST4, batch_generate_fn=lambda ps: [_answer(p) for p in ps], uncertainty=policy)
    res = parser.parse_batch([("Mild cardiomegaly. Possible small effusion.", "")])[0]
    assert res.source == "llm" and res.parsed.mentioned == ["lung", "heart"]
    assert res.parsed.labels == {"lung": lung, "heart": 1, "esophagus": 0, "aorta": 0}
    assert res.parsed.texts["lung"].startswith("lung shows no significant") == (lung == 0)
    assert res.parsed.texts["aorta"] == "aorta shows no significant abnormalities."
