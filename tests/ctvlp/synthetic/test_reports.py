"""Report writer: every disease phrase renders, normal organs are stated normal, variation."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.diseases import SYNTHETIC
from ctvlp.synthetic.lesions import DISEASE_ANATOMY, Finding
from ctvlp.synthetic.reports import ABDOMEN, FINDINGS, IMPRESSION, NORMAL, THORAX, write_report

EXAMPLE = {  # one plausible finding per disease
    "Lung nodule": dict(location="right upper lobe", side="right", size_mm=8, details={"count": 1}),
    "Emphysema": dict(side="bilateral", details={"severity": "mild", "kind": "centrilobular"}),
    "Pleural effusion": dict(side="left", size_mm=20, details={"severity": "small"}),
    "Consolidation": dict(location="left lower lobe", side="left"),
    "Cardiomegaly": dict(details={"severity": "moderate"}),
    "Pericardial effusion": dict(size_mm=9, details={"severity": "small"}),
    "Hiatal hernia": dict(size_mm=40, details={"severity": "moderate"}),
    "Arterial wall calcification": dict(location="abdominal", details={"count": 3}),
    "Liver cyst": dict(size_mm=14, details={"count": 2}),
    "Fatty liver": dict(details={"severity": "moderate"}),
    "Splenomegaly": dict(size_mm=160, details={"severity": "moderate"}),
    "Kidney stone": dict(side="right", location="lower pole", size_mm=5),
    "Kidney cyst": dict(side="left", location="upper pole", size_mm=20),
    "Gallstone": dict(size_mm=9, details={"count": 2}),
    "Bladder stone": dict(size_mm=12, details={"count": 1}),
    "Pancreatic atrophy": dict(details={"fatty": True}),
    "Adrenal nodule": dict(side="left", size_mm=18, details={"lipid_rich": True}),
    "Colonic wall thickening": dict(location="sigmoid colon", size_mm=12),
    "Small bowel dilatation": dict(size_mm=38),
    "Portal vein thrombosis": dict(details={"contrast": True, "occlusive": False}),
    "Gastric wall thickening": dict(location="antrum", size_mm=15),
    "Sacral sclerosis": dict(side="right", size_mm=20),
}


def _finding(name: str) -> Finding:
    return Finding(name, DISEASE_ANATOMY[name], **EXAMPLE[name])


def test_every_disease_and_anatomy_has_phrases():
    names = {d.name for d in SYNTHETIC}
    assert set(FINDINGS) == set(IMPRESSION) == set(EXAMPLE) == names
    assert set(NORMAL) == set(THORAX) | set(ABDOMEN) == {d.anatomy for d in SYNTHETIC}


@pytest.mark.parametrize("disease", [d.name for d in SYNTHETIC])
def test_each_finding_is_reported_without_placeholders(disease):
    seen = set()
    for seed in range(12):
        findings, impression = write_report([_finding(disease)], contrast=True, rng=np.random.default_rng(seed))
        assert "{" not in findings + impression and "  " not in findings
        assert impression and "abnormality" not in impression.lower()
        seen.add(findings)
    assert len(seen) > 3  # order, grouping and synonyms vary


def test_reports_agree_with_rule_parser():
    """The project's rule parser recovers per-anatomy normal/abnormal from our reports (>= 0.95)."""
    rules = pytest.importorskip("ctvlp.reports.rules")
    anatomies = list(THORAX + ABDOMEN)
    parser = rules.RuleReportParser(anatomies)
    agree = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        chosen = [d.name for d in SYNTHETIC if rng.random() < 0.25]
        findings, impression = write_report([_finding(n) for n in chosen], contrast=bool(seed % 2), rng=rng)
        parsed = parser(findings, impression)  # {anatomy: (text, abnormal)}
        for a in anatomies:
            truth = int(any(DISEASE_ANATOMY[n] == a for n in chosen))
            agree.append(int(parsed[a][1]) == truth)
    assert np.mean(agree) >= 0.95
