"""Abnormality catalogue: disease name -> the anatomy it belongs to and its zero-shot prompts.

Names are the labels-CSV column names (CT-RATE spelling where CT-RATE has the finding). Prompts
follow the released evaluation's pattern: a (negative, positive) pair ``("Not X.", "X.")``, with
optional extra pairs for an ensemble. The synthetic corpus generates exactly the ``SYNTHETIC``
diseases.

``CTRATE`` holds all 18 columns of CT-RATE's ``multi_abnormality_labels`` tables, in that file's
order, each on an anatomy of the ``chest`` grouping: the default of a CT-RATE run (data preset
``ctrate-chest``). ``CTRATE_TABLE1`` is the 16 of them that the paper's Table 1 averages (it
leaves out Medical material and Lymphadenopathy); choose it with ``eval.diseases=ctrate-table1``
to compare with the paper's CT-RATE figure. The 16 keep the released ViSD-Boost prompts
(``eval.py``); the two extra labels have no released prompt or organ, so theirs are ours: the
window on the heart for Medical material (chest CT devices are mostly pacemaker leads, valves,
sternal wires and central lines that end in the right atrium) and the window on the aorta, which
spans the mediastinum and hila, for Lymphadenopathy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Disease:
    """One abnormality: labels-CSV column ``name``, owning ``anatomy``, prompt pairs (neg, pos)."""

    name: str
    anatomy: str
    prompts: tuple[tuple[str, str], ...] = field(default=())

    def prompt_pairs(self) -> tuple[tuple[str, str], ...]:
        if self.prompts:
            return self.prompts
        return ((f"Not {self.name.lower()}.", f"{self.name}."),)


def _d(name: str, anatomy: str, *extra: tuple[str, str]) -> Disease:
    base = (f"Not {name.lower()}.", f"{name}.")
    return Disease(name, anatomy, (base, *extra))


# The synthetic corpus plants these; every anatomy of the chest-abdomen grouping has at least one.
SYNTHETIC: tuple[Disease, ...] = (
    _d("Lung nodule", "lung"),
    _d("Emphysema", "lung"),
    _d("Pleural effusion", "lung"),
    _d("Consolidation", "lung"),
    _d("Cardiomegaly", "heart"),
    _d("Pericardial effusion", "heart"),
    _d("Hiatal hernia", "esophagus"),
    _d("Arterial wall calcification", "aorta"),
    _d("Liver cyst", "liver"),
    _d("Fatty liver", "liver"),
    _d("Splenomegaly", "spleen"),
    _d("Kidney stone", "kidney"),
    _d("Kidney cyst", "kidney"),
    _d("Gallstone", "gallbladder"),
    _d("Bladder stone", "bladder"),
    _d("Pancreatic atrophy", "pancreas"),
    _d("Adrenal nodule", "adrenal gland"),
    _d("Colonic wall thickening", "colon"),
    _d("Small bowel dilatation", "small intestine"),
    _d("Portal vein thrombosis", "portal vein"),
    _d("Gastric wall thickening", "stomach"),
    _d("Sacral sclerosis", "sacrum"),
)

def _released(name: str, anatomy: str, word: str | None = None) -> Disease:
    """A CT-RATE label with the released prompt pair ``("Not W.", "W.")`` (W defaults to the name)."""
    w = word or name
    return Disease(name, anatomy, ((f"Not {w}.", f"{w}."),))


# CT-RATE's 18 label columns in the order of its labels table (fVLM eval.py:141).
CTRATE: tuple[Disease, ...] = (
    _released("Medical material", "heart"),  # ours: not in the released evaluation
    _released("Arterial wall calcification", "aorta"),
    _released("Cardiomegaly", "heart"),
    _released("Pericardial effusion", "heart"),
    _released("Coronary artery wall calcification", "heart"),
    _released("Hiatal hernia", "esophagus"),
    _released("Lymphadenopathy", "aorta"),  # ours: not in the released evaluation
    _released("Emphysema", "lung"),
    _released("Atelectasis", "lung", "Atelectatic"),
    _released("Lung nodule", "lung"),
    _released("Lung opacity", "lung"),
    _released("Pulmonary fibrotic sequela", "lung", "Pulmonary fibrotic"),
    _released("Pleural effusion", "lung"),
    _released("Mosaic attenuation pattern", "lung"),
    _released("Peribronchial thickening", "lung"),
    _released("Consolidation", "lung"),
    _released("Bronchiectasis", "lung"),
    _released("Interlobular septal thickening", "lung"),
)

# Paper Table 1: "lymphadenopathy" and "medical material" are excluded from the comparison.
NOT_IN_TABLE1 = ("Medical material", "Lymphadenopathy")
CTRATE_TABLE1: tuple[Disease, ...] = tuple(d for d in CTRATE if d.name not in NOT_IN_TABLE1)

DISEASE_PRESETS: dict[str, tuple[Disease, ...]] = {
    "synthetic": SYNTHETIC, "ctrate": CTRATE, "ctrate-table1": CTRATE_TABLE1,
}
