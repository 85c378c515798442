"""Abnormality catalogue: disease name -> the anatomy it belongs to and its zero-shot prompts.

Names are the labels-CSV column names (CT-RATE spelling where CT-RATE has the finding). Prompts
follow the released evaluation's pattern: a (negative, positive) pair ``("Not X.", "X.")``, with
optional extra pairs for an ensemble. The synthetic corpus generates exactly the ``SYNTHETIC``
diseases; ``CTRATE`` lists CT-RATE's 16 evaluated labels with the released ViSD prompts.
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

# CT-RATE's 18 labels less Medical material and Lymphadenopathy (not evaluated), with the released
# ViSD-Boost prompts (eval.py): "Not X." / "X.".
CTRATE: tuple[Disease, ...] = (
    Disease("Emphysema", "lung", (("Not Emphysema.", "Emphysema."),)),
    Disease("Atelectasis", "lung", (("Not Atelectatic.", "Atelectatic."),)),
    Disease("Lung nodule", "lung", (("Not Lung nodule.", "Lung nodule."),)),
    Disease("Lung opacity", "lung", (("Not Lung opacity.", "Lung opacity."),)),
    Disease("Pulmonary fibrotic sequela", "lung", (("Not Pulmonary fibrotic.", "Pulmonary fibrotic."),)),
    Disease("Pleural effusion", "lung", (("Not Pleural effusion.", "Pleural effusion."),)),
    Disease("Mosaic attenuation pattern", "lung", (("Not Mosaic attenuation pattern.", "Mosaic attenuation pattern."),)),
    Disease("Peribronchial thickening", "lung", (("Not Peribronchial thickening.", "Peribronchial thickening."),)),
    Disease("Consolidation", "lung", (("Not Consolidation.", "Consolidation."),)),
    Disease("Bronchiectasis", "lung", (("Not Bronchiectasis.", "Bronchiectasis."),)),
    Disease("Interlobular septal thickening", "lung", (("Not Interlobular septal thickening.", "Interlobular septal thickening."),)),
    Disease("Cardiomegaly", "heart", (("Not Cardiomegaly.", "Cardiomegaly."),)),
    Disease("Pericardial effusion", "heart", (("Not Pericardial effusion.", "Pericardial effusion."),)),
    Disease("Coronary artery wall calcification", "heart", (("Not Coronary artery wall calcification.", "Coronary artery wall calcification."),)),
    Disease("Hiatal hernia", "esophagus", (("Not Hiatal hernia.", "Hiatal hernia."),)),
    Disease("Arterial wall calcification", "aorta", (("Not Arterial wall calcification.", "Arterial wall calcification."),)),
)

DISEASE_PRESETS: dict[str, tuple[Disease, ...]] = {"synthetic": SYNTHETIC, "ctrate": CTRATE}
