"""Anatomy lexicon and assertion triggers for the rule-based report parser.

``ANATOMY_TERMS`` maps each anatomy name (the grouping's names, docs/DESIGN.md) to the phrases that
refer to it: names, adjectives (hepatic -> liver), parts (jejunum -> small intestine, lobe -> lung)
and findings that name their organ (cardiomegaly -> heart, cholelithiasis -> gallbladder).
``BLOCKERS`` are phrases that contain an anatomy word but mean something else ("portal venous
phase", "pulmonary artery"); they are masked before matching. Matching is case-insensitive on word
boundaries, longest phrase first, so "gall bladder" never also counts as "bladder".

Triggers follow NegEx (Chapman et al., J Biomed Inform 2001): pre-negations ("no", "without")
negate what follows them up to the end of their comma segment, post-negations ("is not seen",
"unremarkable") what precedes them in it. Hedges (``HEDGES_PRE`` "possible", "suspicious for";
``HEDGES_POST`` "cannot be excluded") make a segment uncertain unless it states a finding before
the hedge; the spec's uncertainty policy labels uncertain anatomies. ``CONFIDENT`` qualifiers
("likely", "consistent with") state the finding. ``PSEUDO_NEGATIONS`` and ``STABILITY`` look like
negations or findings but are neither ("no change in the nodule", "heart size is unchanged"): they
are removed before the segment's content is judged.
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
        "lingula", "lingular", "hemithorax", "pneumonectomy", "lobectomy",
    ),
    "heart": (
        "heart", "cardiac", "cardiomegaly", "pericardial", "pericardium", "coronary", "myocardial",
        "myocardium", "atrium", "atrial", "ventricle", "ventricular", "cardiothoracic",
        "aortic valve", "mitral", "mitral valve", "tricuspid", "tricuspid valve", "pulmonic valve",
        "cardiac valve", "valvular",
    ),
    "esophagus": (
        "esophagus", "esophageal", "oesophagus", "oesophageal", "hiatal hernia", "hiatus hernia",
        "hiatal", "esophagectomy", "oesophagectomy",
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
    "cystitis", "diverticulosis", "diverticulitis", "colitis", "gastritis", "pneumonectomy",
    "lobectomy", "esophagectomy", "oesophagectomy",
})

PRE_NEGATIONS: tuple[str, ...] = (
    "no evidence of", "no evidence for", "no signs of", "no sign of", "negative for",
    "no suspicious", "no significant", "no definite", "no", "not", "without", "free of",
    "absence of", "absent", "denies", "neither", "nor", "rather than",
    "resolution of", "ruled out",
)

POST_NEGATIONS: tuple[str, ...] = (
    "is not seen", "are not seen", "was not seen", "were not seen", "not seen", "is not observed",
    "are not observed", "was not observed", "were not observed", "not observed", "not identified",
    "not detected", "not visualized", "not present", "is absent", "are absent", "unremarkable",
    "within normal limits", "within normal range", "normal", "normally", "natural", "is clear",
    "are clear", "clear", "intact", "preserved", "patent", "open", "of normal size",
    "no significant abnormalities", "no abnormality", "no abnormalities", "negative",
    "resolved", "has resolved", "have resolved", "no longer seen", "no longer visualized",
    "no longer visible", "no longer present", "no longer identified",
)

# Hedges over what follows them ("possible X", "X may represent Y": X is stated, Y hedged).
HEDGES_PRE: tuple[str, ...] = (
    "may represent", "may be", "could represent", "could be", "might be", "suspicious for",
    "suspicion of", "suspicion for", "concerning for", "suggestive of", "suggesting", "possible",
    "possibly", "questionable", "equivocal", "versus", "differential diagnosis", "differential",
    "cannot exclude", "can not exclude", "rule out",
)

# Hedges over what precedes them ("a small effusion cannot be excluded").
HEDGES_POST: tuple[str, ...] = (
    "cannot be excluded", "can not be excluded", "cannot be ruled out", "can not be ruled out",
    "could not be excluded", "not excluded", "not ruled out", "not be excluded",
)

# Qualifiers that state the finding (LABELS.md: "likely X" counts as present); removed before
# hedges are looked for, so "likely atelectasis" is a finding and "likely normal" is normal.
CONFIDENT: tuple[str, ...] = (
    "most likely", "likely", "probable", "probably", "consistent with", "compatible with",
    "in keeping with", "highly suspicious for", "very suspicious for",
)

# "No suspicious nodule" is a negation, not a hedge: these become "no" before hedges are found.
NEGATED_HEDGES: tuple[str, ...] = ("no suspicious", "not suspicious", "no definite", "no possible")

# Finding and description words that a typo is corrected to besides the lexicon's own phrases
# (ctvlp.reports.normalise), and real words one edit away from a lexicon word, never corrected.
TYPO_WORDS: tuple[str, ...] = (
    "effusion", "effusions", "nodule", "nodules", "aneurysm", "aneurysmal", "calcification",
    "calcifications", "calcified", "hernia", "dilatation", "dilated", "thickening", "thickened",
    "opacity", "opacities", "enlarged", "enlargement", "dissection", "atherosclerosis",
    "atherosclerotic", "fibrosis", "infiltrate", "infiltrates", "granuloma", "plaque", "plaques",
    "clear", "normal", "unremarkable", "opacification",
)
KNOWN_WORDS: frozenset[str] = frozenset({
    "plural", "formal", "clean", "heard", "lunge", "lunges", "cleat", "nodal", "model", "models",
    "lobed", "globe", "atria", "treat", "there", "where", "these", "those", "module", "modules",
    "normals", "nodal",
})

PSEUDO_NEGATIONS: tuple[str, ...] = (
    "no significant change", "no significant interval change", "no interval change", "no change",
    "not changed", "no increase", "no decrease", "not only", "no further", "without change",
    "without significant change", "not significantly changed", "not appreciably changed",
    "not substantially changed", "not markedly changed", "no appreciable change",
    "no substantial change",
)

# Stability and comparison words: they say nothing about whether a finding exists ("stable
# cardiomegaly" is abnormal through "cardiomegaly", "heart size is stable" is normal).
STABILITY: tuple[str, ...] = (
    "unchanged", "stable", "stability", "again seen", "again noted", "again demonstrated",
    "redemonstrated", "redemonstration of", "similar", "compared to", "compared with",
    "in comparison with", "since", "prior", "previous", "previously", "examination", "exam",
    "study", "studies",
)

# Words that carry no finding: a clause made only of these plus anatomy terms is a bare subject.
FILLER_WORDS: frozenset[str] = frozenset({
    "the", "a", "an", "both", "left", "right", "bilateral", "bilaterally", "and", "or", "of",
    "in", "on", "at", "main", "upper", "lower", "middle", "visualized", "imaged", "partially",
    "included", "sections", "structures", "its", "their", "also", "as", "well", "to", "be",
    "is", "are", "was", "were", "with",
})

# Words that describe without asserting a finding: measured properties, locations, devices and
# verbs. Removed with FILLER_WORDS before a segment's affirmed content is judged, so "heart size
# is" or "coronary arteries show" alone state nothing.
NEUTRAL_WORDS: frozenset[str] = frozenset({
    "there", "size", "caliber", "calibre", "contour", "contours", "course", "appearance",
    "attenuation", "configuration", "diameter", "position", "shape", "silhouette", "dimensions",
    "artery", "arteries", "chamber", "chambers", "findings", "finding", "evidence", "signs", "sign",
    "any", "significant", "focal", "definite", "acute", "new", "demonstrable", "visible",
    "ascending", "descending", "thoracic", "abdominal", "arch", "root", "segment", "segments",
    "base", "bases", "apex", "apices", "distal", "proximal", "mid", "anterior", "posterior",
    "lateral", "medial", "aerated", "expanded", "borderline", "limits", "limit", "than",
    "show", "shows", "showed", "demonstrates", "demonstrate", "demonstrated", "reveals", "reveal",
    "appears", "appear", "appeared", "seen", "noted", "observed", "identified", "measures",
    "measure", "measured", "measuring", "mm", "cm", "x", "volume", "has", "have", "had", "sized",
    "for", "from", "into", "within", "about", "approximately", "this", "that", "these",
    "pacemaker", "lead", "leads", "wire", "wires", "catheter", "line", "tube", "port", "device",
    "valve", "valves", "space", "spaces", "ratio", "structure", "does", "do", "by", "suspicious",
    "suggestive", "current", "now", "again", "still", "place", "in-place", "described",
    "mentioned", "reported", "interval", "compared", "lumen",
})

# Degree and number words: a list item carrying one states its own finding ("no effusion,
# mild cardiomegaly"), so it does not continue a negated list.
DEGREE_WORDS: frozenset[str] = frozenset({
    "mild", "mildly", "moderate", "moderately", "severe", "severely", "small", "large", "minimal",
    "marked", "markedly", "extensive", "trace", "slight", "slightly", "tiny", "massive",
    "prominent", "numerous", "multiple", "scattered", "few", "several",
})

# Section headers of a whole report ("FINDINGS:", "Indication:"); only findings and impression
# describe the scan, the other sections are dropped before parsing.
REPORT_SECTIONS: tuple[str, ...] = (
    "findings", "finding", "impression", "impressions", "conclusion", "conclusions", "opinion",
)
OTHER_SECTIONS: tuple[str, ...] = (
    "indication", "indications", "clinical indication", "history", "clinical history",
    "clinical information", "clinical details", "clinical data", "reason for exam",
    "reason for examination", "reason for study", "technique", "comparison", "comparisons",
    "procedure", "examination", "protocol",
)

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
