"""ctvlp.reports.assertion: the status of one clause (its anatomies given), rule by rule."""

from __future__ import annotations

import pytest

from ctvlp.anatomy import CHEST
from ctvlp.reports import RuleReportParser

ASSERTION = RuleReportParser(list(CHEST)).assertion

# (clause, anatomies, expected status)
CASES = [
    # negation scope: pre- and post-negations, a verdict before its noun, a qualified verdict
    ("No pleural effusion", ["lung"], "normal"),
    ("Pleural effusion is not seen", ["lung"], "normal"),
    ("Thoracic aorta is calcified, not dilated", ["aorta"], "abnormal"),
    ("Resolved RLL consolidation", ["lung"], "normal"),
    ("The aorta is normal in diameter and enhancement", ["aorta"], "normal"),
    ("Heart size is normal for age", ["heart"], "normal"),
    ("The esophagus is normally distended", ["esophagus"], "normal"),
    ("Normal caliber aorta with mild plaque", ["aorta"], "abnormal"),
    ("Normal heart size and contour", ["heart"], "normal"),
    ("Unremarkable heart and no pericardial effusion", ["heart"], "normal"),
    # stability is neither finding nor negation
    ("Heart size is unchanged", ["heart"], "normal"),
    ("Cardiomegaly, not significantly changed", ["heart"], "abnormal"),
    # hedges, before and after what they hedge
    ("Possible small left pleural effusion", ["lung"], "uncertain"),
    ("A small pericardial effusion cannot be entirely excluded", ["heart"], "uncertain"),
    ("An intimal flap is questionable", ["aorta"], "uncertain"),
    ("Esophageal wall thickening, may reflect underdistention", ["esophagus"], "abnormal"),
    # negated lists, also closed by a verb of existence
    ("No nodule, consolidation or effusion", ["lung"], "normal"),
    ("and no mass, nodule or infiltration was detected", ["lung"], "normal"),
    ("No pleural effusion, mild cardiomegaly", ["heart"], "abnormal"),
    # closing verdicts
    ("Pericardial thickness is 2 mm, normal", ["heart"], "normal"),
    ("Trace pericardial fluid, within physiologic limits", ["heart"], "normal"),
    ("Mediastinal main vascular structures, heart contour, size are normal", ["heart"], "normal"),
    ("Nodule in the RUL, the lungs are clear", ["lung"], "abnormal"),
    # measurements and reference ranges
    ("Ascending aorta 4.3 cm", ["aorta"], "abnormal"),
    ("Ascending aorta 36 mm normal <40 mm", ["aorta"], None),
    ("Ascending aorta 43 mm normal <40 mm", ["aorta"], "abnormal"),
    # nothing said
    ("Heart size", ["heart"], None),
]


@pytest.mark.parametrize("clause,anatomies,expected", CASES)
def test_status(clause, anatomies, expected):
    assert ASSERTION.status(clause, anatomies) == expected


def test_list_items_and_shared_verdicts():
    assert ASSERTION.list_item("nodule or infiltration was detected")
    assert not ASSERTION.list_item("cardiomegaly is present")
    assert ASSERTION.shared_verdict("Pleural effusion", " and pneumothorax were not observed, nor pericardial effusion")
    assert not ASSERTION.shared_verdict("Mild cardiomegaly", " and lungs are clear")
