"""ctvlp.reports.measure: measurements against normal limits or the report's own reference range."""

from __future__ import annotations

import pytest

from ctvlp.reports.measure import lengths_mm, measured_abnormal, ratios, split_reference

# (segment, anatomies, expected): True at/over the limit, False measured within, None nothing measured
CASES = [
    # thoracic aorta: 40 mm by default, cm or mm
    ("Ascending aorta 4.7 cm", ["aorta"], True),
    ("Ascending aorta measures 47 mm", ["aorta"], True),
    ("Aortic root 4.0 cm", ["aorta"], True),  # at the limit
    ("Ascending aorta 3.9 cm", ["aorta"], False),
    ("Ascending aorta 45 x 44 mm", ["aorta"], True),
    ("Aortic root 3.9 x 3.8 cm", ["aorta"], False),
    # abdominal aorta: 30 mm
    ("The abdominal aorta measures 3.6 cm", ["aorta"], True),
    ("Infrarenal aorta 2.5 cm", ["aorta"], False),
    # the report's own reference range wins over the default
    ("Asc aorta 36 mm normal <40 mm", ["aorta"], False),
    ("Asc aorta 43 mm normal <40 mm", ["aorta"], True),
    ("Ascending aorta 4.1 cm normal <= 4.0 cm", ["aorta"], True),
    ("Ascending aorta 3.9cm ULN 4.0cm", ["aorta"], False),
    ("Ascending aorta 38 mm (<40 mm)", ["aorta"], False),
    ("Ascending aorta 4.0 cm, upper limits of normal", ["aorta"], False),  # the author's verdict
    # "up to" without "normal" is a measurement
    ("Ascending aorta measures up to 4.6 cm", ["aorta"], True),
    # cardiothoracic ratio: 0.5
    ("Cardiothoracic ratio is 0.62", ["heart"], True),
    ("The cardiothoracic index was calculated as 0.58", ["heart"], True),
    ("CTR 55%", ["heart"], True),
    ("Cardiothoracic ratio 0.45", ["heart"], False),
    ("The cardiothoracic ratio measured 0.44 normal < 0.50", ["heart"], False),
    # wall thicknesses
    ("Pericardial thickness is 2 mm", ["heart"], False),
    ("Pericardial thickness 6 mm", ["heart"], True),
    ("The interventricular septum measures 9 mm", ["heart"], False),
    ("Esophageal wall thickness measured 11 mm", ["esophagus"], True),
    ("Esophageal wall 3 mm", ["esophagus"], False),
    # nothing this module measures
    ("Small pericardial effusion measuring 8 mm", ["heart"], None),
    ("A mass 45x38 mm in the esophagus", ["esophagus"], None),
    ("A 6 mm nodule in the right upper lobe", ["lung"], None),
    ("Ascending aorta 4.7 cm", ["heart"], None),  # not about the anatomy asked
]


@pytest.mark.parametrize("text,anatomies,expected", CASES)
def test_measured_abnormal(text, anatomies, expected):
    assert measured_abnormal(text, anatomies) is expected


def test_reference_ranges_are_masked_and_read():
    masked, refs = split_reference("Asc aorta 36 mm (normal <40 mm), root 3.1 cm (normal range 2.0-3.7 cm).")
    assert "normal" not in masked and "40" not in masked and "36 mm" in masked and "3.1 cm" in masked
    assert refs == [(40.0, False, "mm"), (37.0, True, "mm")]
    assert split_reference("Nodules of 2-3 mm.") == ("Nodules of 2-3 mm.", [])  # a range measured, no reference


def test_lengths_and_ratios():
    assert lengths_mm("4.5 x 3.8 cm mass, 12 mm node, 45x38 mm") == [45.0, 38.0, 12.0, 45.0, 38.0]
    assert ratios("CTR 0.55; cardiothoracic ratio .48; cardio-thoracic index 61%") == [0.55, 0.48, 0.61]
