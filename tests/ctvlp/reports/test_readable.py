"""ctvlp.reports.readable: empty reports and other languages (offline langdetect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctvlp.reports.readable import unreadable_reason
from ctvlp.reports.score import read_labelled

CASES = [
    (".", "", "empty"),
    ("", "-", "empty"),
    ("N/A", "", "empty"),
    ("Raumforderung von 3 cm im rechten Oberlappen der Lunge, verdaechtig auf Malignitaet.", "", "language de"),
    ("Masse de 3 cm dans le lobe superieur droit du poumon, suspecte de malignite.", "", "language fr"),
    ("Sag akciger ust lobda 3 cm kitle izlendi. Plevral efuzyon yok.", "", "language tr"),
    ("Lungs clear. Heart normal. Aorta normal caliber. No effusion.", "", None),
    ("No pleural effusion.", "", None),  # langdetect says "fr" for this one: too short to judge
    ("Liver cyst.", "", None),  # readable; "no anatomy of the grouping" is the caller's call
]


@pytest.mark.parametrize("findings,impression,reason", CASES)
def test_unreadable_reason(findings, impression, reason):
    assert unreadable_reason(findings, impression, ["en"]) == reason


def test_no_english_labelled_item_is_flagged():
    here = Path(__file__).parent / "labelled"
    for name in ("dev.tsv", "heldout.tsv", "independent_tune.tsv", "independent_heldout.tsv",
                 "independent_heldout2.tsv"):
        for row in read_labelled(here / name):
            assert unreadable_reason(row["text"], None) is None, row["text"]


def test_allowed_languages_come_from_the_spec():
    german = "Raumforderung von 3 cm im rechten Oberlappen der Lunge, verdaechtig auf Malignitaet."
    assert unreadable_reason(german, "", ["en", "de"]) is None
