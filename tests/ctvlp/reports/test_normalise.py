"""ctvlp.reports.normalise: sections, line wraps, enumerations, abbreviations, double negations."""

from __future__ import annotations

import pytest

from ctvlp.reports.normalise import (
    expand_abbreviations,
    join_line_wraps,
    normalise,
    report_sections,
    split_enumerations,
)

# (text, expected) per rule of expand_abbreviations
ABBREVIATIONS = [
    ("s/p CABG.", "status post CABG."),
    ("S/P AVR.", "status post AVR."),
    ("Opacity c/w pneumonia.", "Opacity consistent with pneumonia."),
    ("RLL opacity, r/o pneumonia.", "RLL opacity, rule out pneumonia."),
    ("Aorta normal w/o dissection.", "Aorta normal without dissection."),
    ("Cardiomegaly w/ small effusion.", "Cardiomegaly with small effusion."),
    ("Hx of CAD, h/o MI.", "Hx of CAD, history of MI."),
    ("CT w/contrast.", "CT with contrast."),
    ("Heart size WNL.", "Heart size within normal limits."),
    ("Heart: nl size.", "Heart: normal size."),
    ("Heart: nml. Esophagus: unrem.", "Heart: normal. Esophagus: unremarkable."),
    ("Findings not inconsistent with pneumonia.", "Findings consistent with pneumonia."),
    ("Atelectasis vs. pneumonia.", "Atelectasis versus pneumonia."),
    ("Asc aorta 4.1 cm, desc aorta 2.5 cm.", "ascending aorta 4.1 cm, descending aorta 2.5 cm."),
    ("Bilat effusions, b/l atelectasis.", "bilateral effusions, bilateral atelectasis."),
    ("?PE", "possible PE"),
    ("Clinical question: ? pneumothorax", "Clinical question: possible pneumothorax"),
    ("Is there effusion? No.", "Is there effusion? No."),  # a question mark after a word is no hedge
    # double negations say what they mean
    ("The lungs are not without emphysema.", "The lungs are with emphysema."),
    ("The aortic wall is not free of plaque.", "The aortic wall is with plaque."),
    ("The esophagus is not unremarkable.", "The esophagus is abnormal."),
    ("The heart is not entirely normal.", "The heart is abnormal."),
    ("The lungs are not clear.", "The lungs are abnormal."),
    ("Pneumonia is not unlikely.", "Pneumonia is possible."),
    ("Coronary calcium score 0.", "no coronary calcification."),
    ("Agatston score of 0.", "no coronary calcification."),
    ("Coronary calcium score 0.5.", "Coronary calcium score 0.5."),
    # negating and hyphenated prefixes
    ("Non-dilated aorta, nonaneurysmal root.", "not dilated aorta, not aneurysmal root."),
    ("Noncalcified nodule.", "Noncalcified nodule."),  # a nodule still
    ("Post-esophagectomy changes.", "Post esophagectomy changes."),
    ("Normal-caliber aorta, well-aerated lungs.", "Normal caliber aorta, well aerated lungs."),
]


@pytest.mark.parametrize("text,expected", ABBREVIATIONS)
def test_expand_abbreviations(text, expected):
    assert expand_abbreviations(text) == expected


SECTIONS = [
    # only findings and impression are kept
    ("INDICATION: ? pneumothorax\nFINDINGS: Lungs clear.", "Lungs clear."),
    ("HISTORY: aneurysm.\nFINDINGS: Normal heart.\nIMPRESSION: No acute findings.",
     "Normal heart.\nNo acute findings."),
    # headers inside a line, after a sentence
    ("INDICATION: r/o PE. FINDINGS: Lungs clear. IMPRESSION: Normal.", "Lungs clear.\nNormal."),
    ("Comparison: None. Findings: No effusion.", "No effusion."),
    # combined and longer headers
    ("CLINICAL HISTORY/INDICATION: CAD.\nFINDINGS: Cardiomegaly.", "Cardiomegaly."),
    ("REASON FOR EXAM: dyspnea\nTECHNIQUE: axial images\nIMPRESSION:\n1. Cardiomegaly.", "1. Cardiomegaly."),
    ("FINDINGS/IMPRESSION: Cardiomegaly.", "Cardiomegaly."),
    # an all-capitals title before the first header is no finding
    ("CT ANGIOGRAPHY CHEST FOR AORTIC DISSECTION\nFINDINGS: Normal aorta.", "Normal aorta."),
    # no findings header: an indication is its line, the lines after it are the findings
    ("INDICATION: ? pneumothorax\nLungs clear.\nNo effusion.", "Lungs clear.\nNo effusion."),
    ("TECHNIQUE:\nAxial images.\nLungs clear.", "Lungs clear."),
    # no header: all of it
    ("Lungs clear. History of CABG.", "Lungs clear. History of CABG."),
    # a word that is a header name inside a sentence is no header
    ("Comparison with prior shows no change.", "Comparison with prior shows no change."),
]


@pytest.mark.parametrize("text,expected", SECTIONS)
def test_report_sections(text, expected):
    assert report_sections(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("There is moderate\ncardiomegaly.", "There is moderate cardiomegaly."),
    ("AORTA:\nNormal caliber.", "AORTA: Normal caliber."),  # a label line labels the next one
    ("Lungs:\n- Mild emphysema.", "Lungs: - Mild emphysema."),
    ("Lungs clear.\nHeart normal.", "Lungs clear.\nHeart normal."),
])
def test_join_line_wraps(text, expected):
    assert join_line_wraps(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("1) No effusion 2) Cardiomegaly", "No effusion\nCardiomegaly"),
    ("IMPRESSION: 1. No effusion 2. Small hiatal hernia", "IMPRESSION:\nNo effusion\nSmall hiatal hernia"),
    ("Aorta 4.5 cm. Heart normal.", "Aorta 4.5 cm. Heart normal."),  # decimals stay
])
def test_split_enumerations(text, expected):
    assert split_enumerations(text) == expected


def test_normalise_runs_every_step_in_order():
    text = "INDICATION: r/o PE\nFINDINGS: s/p CABG. Lungs not without\nemphysema. 1) Cardiomegally"
    assert normalise(text) == "status post CABG. Lungs with emphysema.\ncardiomegaly"
