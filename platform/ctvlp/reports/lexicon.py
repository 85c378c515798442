"""Anatomy lexicon and assertion triggers for the rule-based report parser.

``ANATOMY_TERMS`` maps each anatomy name (the grouping's names, docs/DESIGN.md) to the phrases that
refer to it: names, adjectives (hepatic -> liver), parts (jejunum -> small intestine, lobe -> lung)
and findings that name their organ (cardiomegaly -> heart, cholelithiasis -> gallbladder).
``BLOCKERS`` are phrases that contain an anatomy word but mean something else ("portal venous
phase", "pulmonary artery"); they are masked before matching. Matching is case-insensitive on word
boundaries, longest phrase first, so "gall bladder" never also counts as "bladder".

Triggers follow NegEx (Chapman et al., J Biomed Inform 2001): pre-negations ("no", "without")
negate what follows, post-negations ("is not seen", "unremarkable") what precedes, within a clause.
Uncertain mentions (``UNCERTAIN``) count as abnormal and override negation ("cannot be excluded").
``PSEUDO_NEGATIONS`` look like negations but are not ("no change in the nodule").
"""

from __future__ import annotations

import re

ANATOMY_TERMS: dict[str, tuple[str, ...]] = {
    "lung": (
        "lung", "lungs", "pulmonary", "pleural", "pleura", "lobe", "lobes", "lobar", "lobular",
        "interlobular", "bronchus", "bronchi", "bronchial", "bronchiectasis", "peribronchial",
        "bronchiolar", "parenchyma", "parenchymal", "emphysema", "emphysematous", "atelectasis",
        "atelectatic", "consolidation", "consolidations", "pneumothorax", "pneumonia",
        "ground-glass", "ground glass", "lung nodule", "pulmonary nodule", "mosaic attenuation",
        "lingula", "lingular", "hemithorax",
    ),
    "heart": (
        "heart", "cardiac", "cardiomegaly", "pericardial", "pericardium", "coronary", "myocardial",
        "myocardium", "atrium", "atrial", "ventricle", "ventricular", "cardiothoracic",
    ),
    "esophagus": (
        "esophagus", "esophageal", "oesophagus", "oesophageal", "hiatal hernia", "hiatus hernia",
        "hiatal",
    ),
    "aorta": ("aorta", "aortic", "aortas", "arterial wall calcification", "arterial wall calcifications"),
    "liver": (
        "liver", "hepatic", "hepatomegaly", "hepatosteatosis", "steatosis", "hepatocellular",
        "intrahepatic", "fatty liver",
    ),
    "gallbladder": (
        "gallbladder", "gall bladder", "gallstone", "gallstones", "cholelithiasis", "cholecystitis",
        "cholecystectomy",
    ),
    "spleen": ("spleen", "splenic", "splenomegaly"),
    "pancreas": ("pancreas", "pancreatic", "pancreatitis"),
    "kidney": (
        "kidney", "kidneys", "renal", "nephrolithiasis", "hydronephrosis", "perirenal",
        "pelvicalyceal", "nephrolithiasis",
    ),
    "adrenal gland": ("adrenal", "adrenals", "adrenal gland", "adrenal glands", "suprarenal"),
    "bladder": ("bladder", "urinary bladder", "vesical", "cystitis"),
    "colon": (
        "colon", "colonic", "sigmoid", "rectum", "rectal", "rectosigmoid", "cecum", "caecum",
        "cecal", "large bowel", "large intestine", "diverticulosis", "diverticulitis", "colitis",
    ),
    "small intestine": (
        "small intestine", "small intestinal", "small bowel", "jejunum", "jejunal", "ileum",
        "ileal", "duodenum", "duodenal", "terminal ileum",
    ),
    "stomach": ("stomach", "gastric", "gastritis", "antrum", "antral", "fundus"),
    "portal vein": ("portal vein", "portal veins", "portal", "splenic vein", "portal venous", "mesenteric vein"),
    "sacrum": ("sacrum", "sacral"),
}

# Phrases that contain an anatomy term but refer to something else; masked before matching.
BLOCKERS: tuple[str, ...] = (
    "portal venous phase", "portal phase", "pulmonary artery", "pulmonary arteries",
    "pulmonary trunk", "pulmonary vein", "pulmonary veins", "pulmonary embolism",
    "sacroiliac", "renal artery", "renal arteries", "gastroesophageal reflux",
    # CT-RATE's "When examined in the lung parenchyma window; ..." names a display setting.
    "lung parenchyma window", "parenchyma window", "parenchymal window", "lung window",
)

# Terms that are findings in themselves: a clause made only of them still states an abnormality.
FINDING_TERMS: frozenset[str] = frozenset({
    "bronchiectasis", "emphysema", "emphysematous", "atelectasis", "atelectatic", "consolidation",
    "consolidations", "pneumothorax", "pneumonia", "ground-glass", "ground glass", "lung nodule",
    "pulmonary nodule", "mosaic attenuation", "cardiomegaly", "hiatal hernia", "hiatus hernia",
    "arterial wall calcification", "arterial wall calcifications", "hepatomegaly", "hepatosteatosis",
    "steatosis", "fatty liver", "gallstone", "gallstones", "cholelithiasis", "cholecystitis",
    "cholecystectomy", "splenomegaly", "pancreatitis", "nephrolithiasis", "hydronephrosis",
    "cystitis", "diverticulosis", "diverticulitis", "colitis", "gastritis",
})

PRE_NEGATIONS: tuple[str, ...] = (
    "no evidence of", "no evidence for", "no signs of", "no sign of", "negative for",
    "no suspicious", "no significant", "no definite", "no", "not", "without", "free of",
    "absence of", "absent", "denies", "neither", "nor", "rather than", "resolved",
    "resolution of", "ruled out",
)

POST_NEGATIONS: tuple[str, ...] = (
    "is not seen", "are not seen", "was not seen", "were not seen", "not seen", "is not observed",
    "are not observed", "was not observed", "were not observed", "not observed", "not identified",
    "not detected", "not visualized", "not present", "is absent", "are absent", "unremarkable",
    "within normal limits", "within normal range", "normal", "normally", "natural", "is clear",
    "are clear", "clear", "intact", "preserved", "patent", "open", "of normal size",
    "no significant abnormalities", "no abnormality", "no abnormalities", "negative",
)

UNCERTAIN: tuple[str, ...] = (
    "cannot be excluded", "can not be excluded", "cannot be ruled out", "can not be ruled out",
    "could not be excluded", "not excluded", "not ruled out", "may represent", "may be",
    "suspicious for", "suspicion of", "suspicious", "suggestive of", "suggesting",
    "concerning for", "possible", "possibly", "probable", "probably", "likely", "questionable",
    "equivocal", "versus", "differential diagnosis", "consistent with", "compatible with",
)

PSEUDO_NEGATIONS: tuple[str, ...] = (
    "no significant change", "no significant interval change", "no interval change", "no change",
    "not changed", "no increase", "no decrease", "not only", "no further", "without change",
    "without significant change", "not significantly changed",
)

# Words that carry no finding: a clause made only of these plus anatomy terms is a bare subject.
FILLER_WORDS: frozenset[str] = frozenset({
    "the", "a", "an", "both", "left", "right", "bilateral", "bilaterally", "and", "or", "of",
    "in", "on", "at", "main", "upper", "lower", "middle", "visualized", "imaged", "partially",
    "included", "sections", "structures", "its", "their", "also", "as", "well", "to", "be",
    "is", "are", "was", "were", "with",
})

# Predicates: a clause containing one of these states something (so a following split is safe).
PREDICATE_WORDS: frozenset[str] = frozenset({
    "is", "are", "was", "were", "shows", "show", "showed", "demonstrates", "demonstrated",
    "measures", "measuring", "measured", "contains", "seen", "noted", "observed", "present",
    "appears", "appear", "has", "have", "identified", "detected", "revealed", "enlarged",
})


def phrase_regex(phrases: tuple[str, ...] | frozenset[str] | list[str]) -> re.Pattern[str]:
    """One case-insensitive regex alternation of ``phrases`` on word boundaries, longest first.

    Spaces in a phrase match any run of whitespace or a hyphen ("ground glass" ~ "ground-glass").
    """
    ordered = sorted(set(phrases), key=len, reverse=True)
    parts = [r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", p)) for p in ordered]
    return re.compile(r"(?<![\w-])(?:" + "|".join(parts) + r")(?![\w-])", re.IGNORECASE)
