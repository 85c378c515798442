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

Terse and US-style reports: abbreviations name anatomies and findings ("RLL", "GGO", "PTX", "CABG",
"AVR", "TEVAR", "AAA", "GEJ"), post-operative states are findings of their organ ("esophagectomy",
"gastric pull-through", "lobectomy", "stent graft"), and some words name an organ only by default
("effusion" is pleural, "nodule" pulmonary, "aneurysm" aortic): ``CLAIMED_BY_CONTEXT`` lists the
words of another organ that claim them in the same sentence. ``OTHER_STRUCTURES`` (lymph nodes,
bones, devices...) stop a sub-section label from lending its anatomy, ``LANDMARKS`` make what
follows a place rather than a subject, and ``COPULAS``, ``EXISTENCE_WORDS`` and
``VERDICT_PREPOSITIONS`` shape how far a verdict reaches (:mod:`ctvlp.reports.assertion`).
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
        "lingula", "lingular", "hemithorax", "hemithoraces", "pneumonectomy", "lobectomy",
        # parts and places named without "lung": lobes (RUL..LLL), bases, fissures, the periphery
        "rul", "rml", "rll", "lul", "lll", "airspace", "air space", "bibasilar", "bibasal",
        "biapical", "subpleural", "perihilar", "fissure", "fissures", "fissural", "perifissural",
        "centrilobular", "paraseptal", "pleuroparenchymal", "small airways", "small airway",
        "interstitial", "interstitium", "kerley", "airway", "airways",
        # places and findings of the lung named alone; another organ in the sentence claims them
        # (CLAIMED_BY_CONTEXT: "LV apical thrombus", "thyroid nodule", "liver: 1 cm nodule")
        "apical", "apices", "basilar", "basal", "bases", "nodule", "nodules", "micronodule",
        "micronodules", "opacity", "opacities", "infiltrate", "infiltrates", "granuloma", "granulomas",
        "scarring", "scar", "scars", "fibrosis", "fibrotic", "bronchogram", "bronchograms",
        "air bronchograms", "cavitary", "cavitation", "mucus plugging", "mucous plugging",
        "mucus plug", "mucus plugs", "mucoid impaction", "hyperinflation", "hyperinflated",
        "hyperexpanded", "hyperlucent", "bleb", "blebs", "pneumatocele",
        # findings that name the lung (US abbreviations: GGO, PTX, COPD, ILD)
        "ggo", "ggos", "ptx", "pneumothoraces", "hydropneumothorax", "hemothorax", "haemothorax",
        "empyema", "copd", "ild", "honeycombing", "bronchiolitis", "bronchitis", "bronchiolectasis",
        "bronchiectatic", "tree-in-bud", "air trapping", "pneumonitis", "bulla", "bullae", "bullous",
        "bilateral effusions", "bilateral effusion", "left effusion", "right effusion",
        # an effusion without an organ is pleural in a chest report, unless the sentence names the
        # pericardium or heart (CLAIMED_BY_CONTEXT)
        "effusion", "effusions",
        # post-operative lung
        "wedge resection", "segmentectomy", "bilobectomy", "pleurodesis", "decortication",
        "cardiopulmonary", "uip", "nsip", "pna", "atx",
    ),
    "heart": (
        "heart", "cardiac", "cardiomegaly", "pericardial", "pericardium", "coronary", "myocardial",
        "myocardium", "atrium", "atrial", "ventricle", "ventricular", "interventricular", "interatrial",
        "cardiothoracic ratio", "cardiothoracic index", "cardiomediastinal", "ctr", "lv", "rv", "la", "ra", "lvh",
        "aortic valve", "mitral", "mitral valve", "tricuspid", "tricuspid valve", "pulmonic valve",
        "pulmonary valve", "cardiac valve", "valvular", "epicardial", "cardiomyopathy", "pericarditis",
        "biventricular", "biatrial", "chf", "laa", "pci", "mitraclip", "pericardial window", "mechanical valve", "bioprosthetic valve", "valvuloplasty",
        "annuloplasty", "valve repair",
        "pericardial effusion", "pericardial effusions", "aortic stenosis", "aortic regurgitation",
        "aortic insufficiency", "aortic sclerosis", "aortic annulus", "agatston",
        "hemopericardium", "haemopericardium", "pneumopericardium",
        # coronary arteries by name, coronary disease
        "lad", "rca", "lcx", "circumflex", "left anterior descending", "cad",
        # post-operative heart: bypass grafts and valve replacements (US abbreviations)
        "cabg", "coronary artery bypass", "coronary bypass", "avr", "tavr", "tavi", "mvr",
        "valve replacement", "valve prosthesis", "prosthetic valve", "bentall",
        # both heart and lung ("no acute cardiopulmonary process")
        "cardiopulmonary",
    ),
    "esophagus": (
        "esophagus", "esophageal", "oesophagus", "oesophageal", "hiatal hernia", "hiatus hernia",
        "hiatal", "esophagectomy", "oesophagectomy", "esophagitis", "oesophagitis", "achalasia",
        "esoph", "paraesophageal hernia", "paraoesophageal hernia", "zenker", "zenkers",
        "gastroesophageal junction", "gastro-oesophageal junction", "esophagogastric junction",
        "oesophagogastric junction", "oesophago-gastric junction", "ge junction", "gej", "egj",
        # post-operative esophagus: resection, the gastric conduit, anti-reflux surgery
        "esophagogastrectomy", "oesophagogastrectomy", "ivor lewis", "gastric pull-through",
        "gastric pull-up", "gastric conduit", "fundoplication", "barrett", "barretts", "hh",
        "esophagogastric anastomosis", "esophagogastrostomy", "esophagojejunostomy",
    ),
    "aorta": (
        "aorta", "aortic", "aortas", "aort", "ao", "arterial wall calcification",
        "arterial wall calcifications", "aaa", "taa", "coarctation", "intramural hematoma",
        "intramural haematoma", "penetrating atherosclerotic ulcer", "intimal flap", "dissection flap",
        "type a dissection", "type b dissection",
        # post-operative aorta: endovascular and open repair
        "tevar", "evar", "endograft", "stent graft", "stent-graft", "bentall", "elephant trunk",
        # an aneurysm or dissection without a vessel is aortic in a chest report (CLAIMED_BY_CONTEXT)
        "aneurysm", "aneurysms", "aneurysmal", "dissection", "dissections",
    ),
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
    "pulmonary hypertension", "pulmonary arterial hypertension", "pulmonary artery hypertension",
    "pulmonary embolus", "pulmonary emboli", "pulmonary vasculature", "pulmonary vascular",
    "pulmonary venous", "pulmonary outflow", "pulmonary angiogram", "pulmonary angiography",
    # lobes of other organs
    "thyroid lobe", "thyroid lobes", "lobe of the thyroid", "lobes of the thyroid", "caudate lobe",
    "hepatic lobe", "lobe of the liver",
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
    "nodule", "nodules", "micronodule", "micronodules", "opacity", "opacities", "infiltrate",
    "infiltrates", "granuloma", "granulomas", "scarring", "scar", "scars", "fibrosis", "fibrotic",
    "bronchogram", "bronchograms", "air bronchograms", "cavitary", "cavitation", "mucus plugging",
    "mucous plugging", "mucus plug", "mucus plugs", "mucoid impaction", "hyperinflation",
    "hyperinflated", "hyperexpanded", "hyperlucent", "bleb", "blebs", "pneumatocele", "chf",
    "barrett", "barretts", "hh", "bilobectomy", "pleurodesis", "decortication", "uip", "nsip",
    "pna", "atx", "pci", "mitraclip", "pericardial window", "esophagogastric anastomosis",
    "esophagogastrostomy", "esophagojejunostomy", "elephant trunk", "aneurysm", "aneurysms", "aneurysmal", "dissection", "dissections",
    "valvuloplasty", "annuloplasty", "mechanical valve", "bioprosthetic valve", "valve repair",
    "effusion", "effusions", "pericardial effusion", "pericardial effusions", "aortic stenosis",
    "aortic regurgitation", "aortic insufficiency", "aortic sclerosis",
    "ggo", "ggos", "ptx", "pneumothoraces", "hydropneumothorax", "hemothorax", "haemothorax", "empyema",
    "copd", "ild", "honeycombing", "bronchiolitis", "bronchitis", "bronchiolectasis", "bronchiectatic",
    "tree-in-bud", "air trapping", "pneumonitis", "bulla", "bullae", "bullous", "bilateral effusions",
    "bilateral effusion", "left effusion", "right effusion", "wedge resection", "segmentectomy",
    "lvh", "cardiomyopathy", "pericarditis", "hemopericardium", "haemopericardium", "pneumopericardium",
    "cad", "cabg", "coronary artery bypass", "coronary bypass", "avr", "tavr", "tavi", "mvr",
    "valve replacement", "valve prosthesis", "prosthetic valve", "bentall",
    "esophagitis", "oesophagitis", "achalasia", "paraesophageal hernia", "paraoesophageal hernia",
    "zenker", "zenkers", "esophagogastrectomy", "oesophagogastrectomy", "ivor lewis",
    "gastric pull-through", "gastric pull-up", "gastric conduit", "fundoplication",
    "aaa", "taa", "coarctation", "intramural hematoma", "intramural haematoma",
    "penetrating atherosclerotic ulcer", "intimal flap", "dissection flap", "type a dissection",
    "type b dissection", "tevar", "evar", "endograft", "stent graft", "stent-graft",
})

# Post-operative states: findings of their organ however they are described ("the gastric conduit
# is unremarkable" still reports an esophagectomy; LABELS.md: postoperative findings are present).
POSTOPERATIVE: tuple[str, ...] = (
    "cabg", "coronary artery bypass", "coronary bypass", "avr", "tavr", "tavi", "mvr", "valve replacement",
    "valve prosthesis", "prosthetic valve", "mechanical valve", "bioprosthetic valve", "valvuloplasty",
    "annuloplasty", "valve repair", "bentall", "mitraclip", "pci", "pericardial window", "esophagectomy",
    "oesophagectomy", "esophagogastrectomy", "oesophagogastrectomy", "ivor lewis", "gastric pull-through",
    "gastric pull-up", "gastric conduit", "fundoplication", "esophagogastric anastomosis",
    "esophagogastrostomy", "esophagojejunostomy", "lobectomy", "bilobectomy", "pneumonectomy",
    "segmentectomy", "wedge resection", "pleurodesis", "decortication", "tevar", "evar", "endograft",
    "stent graft", "stent-graft", "elephant trunk",
)

PRE_NEGATIONS: tuple[str, ...] = (
    "no evidence of", "no evidence for", "no signs of", "no sign of", "negative for",
    "no suspicious", "no significant", "no definite", "no", "not", "without", "free of",
    "absence of", "absent", "denies", "neither", "nor", "rather than",
    "resolution of", "complete resolution of", "interval resolution of", "clearance of",
    "interval clearance of", "ruled out", "clear of",
    "free from", "devoid of", "lack of", "none of",
)

POST_NEGATIONS: tuple[str, ...] = (
    "is not seen", "are not seen", "was not seen", "were not seen", "not seen", "is not observed",
    "are not observed", "was not observed", "were not observed", "not observed", "not identified",
    "not detected", "not visualized", "not present", "is absent", "are absent", "unremarkable",
    "within normal limits", "within normal range", "normal", "normally", "natural", "is clear",
    "are clear", "clear", "intact", "preserved", "patent", "open", "of normal size",
    "no significant abnormalities", "no abnormality", "no abnormalities", "negative",
    "resolved", "has resolved", "have resolved", "no longer seen", "no longer visualized",
    "no longer visible", "no longer present", "no longer identified", "no longer",
    "not evident", "not appreciated", "not demonstrated", "not visualised", "not apparent",
    "none", "nil", "cleared", "has cleared", "have cleared", "is excluded", "was excluded",
    "are excluded", "were excluded", "within physiologic limits", "within physiological limits",
    "physiologic in amount", "is physiologic", "physiologic", "physiological",
    "upper limit of normal", "upper limits of normal",
    "upper normal limit", "high normal", "upper normal", "top normal", "top-normal", "unlikely", "less likely", "not likely", "normal finding", "normal variant", "anatomic variant",
)

# Hedges over what follows them ("possible X", "X may represent Y": X is stated, Y hedged).
HEDGES_PRE: tuple[str, ...] = (
    "may represent", "may be", "could represent", "could be", "might be", "suspicious for",
    "suspicion of", "suspicion for", "concerning for", "suggestive of", "suggesting", "possible",
    "possibly", "questionable", "equivocal", "versus", "differential diagnosis", "differential",
    "cannot exclude", "can not exclude", "cant exclude", "cannot rule out", "can not rule out",
    "cannot entirely exclude", "cannot completely exclude", "cannot definitely exclude",
    "not possible to exclude", "impossible to exclude", "difficult to exclude", "rule out",
    "worrisome for", "concern for", "question of", "query", "suspected", "possibility of",
    "potentially", "perhaps", "may reflect", "could reflect", "might reflect", "might represent",
    "may indicate", "could indicate", "may suggest", "suggest", "suggests", "consider",
)

# Hedges over what precedes them ("a small effusion cannot be excluded").
HEDGES_POST: tuple[str, ...] = tuple(
    f"{neg} {adverb}{verb}".replace("  ", " ")
    for neg in ("cannot be", "can not be", "cant be", "could not be", "not be", "not")
    for adverb in ("", "entirely ", "completely ", "totally ", "definitely ", "confidently ", "fully ",
                   "reliably ", "definitively ")
    for verb in ("excluded", "ruled out")
) + tuple(  # a hedge as the predicate: "an intimal flap is questionable"
    f"{copula} {adjective}" for copula in ("is", "are", "was", "were")
    for adjective in ("questionable", "possible", "suspected", "equivocal", "uncertain", "not certain", "queried")
)

# Qualifiers that state the finding (LABELS.md: "likely X" counts as present); removed before
# hedges are looked for, so "likely atelectasis" is a finding and "likely normal" is normal.
CONFIDENT: tuple[str, ...] = (
    "most likely", "likely", "probable", "probably", "consistent with", "compatible with",
    "in keeping with", "highly suspicious for", "very suspicious for", "presumed", "presumably",
    "favored", "favoured", "favor", "favour", "characteristic of", "diagnostic of", "typical of",
    "indicative of", "in line with",
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
    "study", "studies", "persistent", "persists", "persisting", "status quo", "as before",
)

# Words that carry no finding: a clause made only of these plus anatomy terms is a bare subject.
FILLER_WORDS: frozenset[str] = frozenset({
    "the", "a", "an", "both", "left", "right", "bilateral", "bilaterally", "and", "or", "of",
    "in", "on", "at", "main", "upper", "lower", "middle", "visualized", "imaged", "partially",
    "included", "sections", "structures", "its", "their", "also", "as", "well", "to", "be",
    "is", "are", "was", "were", "with", "which", "it", "all", "each", "some", "they", "them",
    "being", "been", "who", "whose", "r", "l", "rt", "lt",
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
    "base", "apex", "distal", "proximal", "mid", "anterior", "posterior",
    "lateral", "medial", "aerated", "expanded", "borderline", "limits", "limit", "than",
    "show", "shows", "showed", "demonstrates", "demonstrate", "demonstrated", "reveals", "reveal",
    "appears", "appear", "appeared", "seen", "noted", "observed", "identified", "detected", "found",
    "visualised", "evident", "present", "appreciated", "measures",
    "measure", "measured", "measuring", "mm", "cm", "x", "volume", "has", "have", "had", "sized",
    "for", "from", "into", "within", "about", "approximately", "this", "that", "these",
    "pacemaker", "lead", "leads", "wire", "wires", "catheter", "line", "tube", "port", "device",
    "valve", "valves", "space", "spaces", "ratio", "structure", "does", "do", "by", "suspicious",
    "suggestive", "current", "now", "again", "still", "place", "in-place", "described",
    "mentioned", "reported", "interval", "compared", "lumen",
    # measured properties and where or how a structure was looked at ("in the lung window")
    "thickness", "wall", "walls", "calibration", "index", "transverse", "measurement",
    "measurements", "calculated", "level", "third", "portion", "part", "region", "area",
    "when", "examined", "evaluated", "evaluation", "assessed", "assessment", "window", "windows",
    "axial", "image", "images", "dated", "date", "motion", "artifact", "artifacts", "streak",
    "limited", "limits", "degraded", "mediastinum", "mediastinal", "throughout", "fully",
    "symmetrically", "symmetric", "symmetrical", "grossly", "essentially", "overall", "largely",
    "branching", "conventional", "standard", "usual", "typical", "vessel", "vessels", "great",
    "origin", "origins", "pattern", "anatomy", "up", "branches", "major", "status", "post", "history", "known", "patient",
    "smooth", "regular", "midline", "decompressed", "performed", "because", "due", "contrast",
    # devices and where they lie (LABELS.md: devices belong to no anatomy)
    "aicd", "icd", "defibrillator", "pacer", "pacing", "generator", "tip", "terminates",
    "terminating", "positioned", "projects", "projecting", "overlying", "good", "satisfactory",
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
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
    "final impression", "addendum", "summary", "interpretation", "diagnosis", "result", "results",
    "comment", "comments", "report",  # UK reports conclude under "Comment:"
)
OTHER_SECTIONS: tuple[str, ...] = (
    "indication", "indications", "clinical indication", "history", "clinical history",
    "clinical information", "clinical details", "clinical data", "reason for exam",
    "reason for examination", "reason for study", "technique", "comparison", "comparisons",
    "procedure", "examination", "protocol", "exam", "hx", "clinical", "clinical question",
    "clinical notes", "indication for exam", "indication for study", "reason", "request",
    "prior", "priors", "prior studies", "contrast", "dose", "radiation dose", "recommendation",
    "recommendations", "technique and comparison", "reason for request",
)

# Predicates: a clause containing one of these states something (so a following split is safe).
PREDICATE_WORDS: frozenset[str] = frozenset({
    "is", "are", "was", "were", "shows", "show", "showed", "demonstrates", "demonstrated",
    "measures", "measuring", "measured", "contains", "seen", "noted", "observed", "present",
    "appears", "appear", "has", "have", "identified", "detected", "revealed", "enlarged",
    "found", "visualized", "evident",
})


# A term that means the lung only when the clause names no other lobed organ ("thyroid nodule in
# the right lobe"): term -> words that claim it for something else.
_CARDIAC = ("pericardial", "pericardium", "heart", "cardiac", "ventricle", "ventricular", "lv", "rv",
            "myocardial", "myocardium", "atrial", "septal", "septum", "coronary")
# Organs and structures other than the lung, whose nodules, opacities and lobes are their own.
_NOT_LUNG = _CARDIAC + (
    "thyroid", "thyroidal", "goiter", "goitre", "liver", "hepatic", "caudate", "adrenal", "renal",
    "kidney", "kidneys", "spleen", "splenic", "pancreas", "pancreatic", "breast", "breasts",
    "subcutaneous", "skin", "cutaneous", "muscle", "lymph", "node", "nodes", "nodal", "bone", "bones",
    "osseous", "esophagus", "esophageal", "oesophagus", "oesophageal", "gastric", "stomach", "bowel",
    "colon", "mediastinal", "mediastinum", "chest wall", "axillary", "soft tissue",
)
# Vessels and surgeries other than the aorta's ("pulmonary artery aneurysm", "lymph node dissection").
_OTHER_VESSELS = (
    "pulmonary", "artery", "arteries", "arterial", "splenic", "renal", "iliac", "subclavian", "carotid",
    "innominate", "brachiocephalic", "vertebral", "femoral", "popliteal", "hepatic", "mesenteric",
    "celiac", "cerebral", "intracranial", "venous", "vein", "lymph", "node", "nodes", "neck", "axillary",
    "bone", "cyst",
)
CLAIMED_BY_CONTEXT: dict[str, tuple[str, ...]] = {
    **{t: ("thyroid", "liver", "hepatic", "caudate", "goiter", "goitre", "thyroidal") for t in ("lobe", "lobes", "lobar")},
    **{t: _CARDIAC + ("joint", "knee", "shoulder", "hip") for t in ("effusion", "effusions")},
    **{t: _CARDIAC for t in ("apical", "apices", "basilar", "basal", "bases")},
    **{t: _NOT_LUNG for t in ("nodule", "nodules", "micronodule", "micronodules", "opacity", "opacities",
                             "infiltrate", "infiltrates")},
    **{t: ("trachea", "tracheal", "larynx", "laryngeal", "pharynx", "upper") for t in ("airway", "airways")},
    # LAD is also lymphadenopathy ("no mediastinal LAD")
    "lad": ("mediastinal", "hilar", "axillary", "lymph", "supraclavicular", "subcarinal", "paratracheal",
            "cervical", "bulky", "pathologic", "lymphadenopathy", "adenopathy"),
    **{t: _NOT_LUNG for t in ("granuloma", "granulomas", "scarring", "scar", "scars", "fibrosis", "fibrotic",
                             "cavitary", "cavitation")},
    **{t: _CARDIAC + _OTHER_VESSELS for t in ("aneurysm", "aneurysms", "aneurysmal", "dissection", "dissections")},
}

# Structures outside every anatomy of a grouping (LABELS.md: lymph nodes, devices, bones,
# thyroid, trachea, other vessels): a sentence that names one does not inherit a sub-section's
# anatomy ("HEART: Normal size. Pacemaker leads in place." says nothing more of the heart).
OTHER_STRUCTURES: tuple[str, ...] = (
    "lymph", "node", "nodes", "lymphadenopathy", "adenopathy", "thyroid", "goiter", "trachea",
    "tracheal", "bone", "bones", "osseous", "rib", "ribs", "vertebra", "vertebrae", "vertebral",
    "spine", "spinal", "sternum", "sternal", "sternotomy", "clavicle", "scapula", "shoulder",
    "soft tissue", "soft tissues", "chest wall", "breast", "breasts", "axilla", "axillary", "hila",
    "hilar", "hilum", "catheter", "tube", "pacemaker", "port", "device", "wires", "leads",
    "vena cava", "svc", "ivc", "azygos", "brachiocephalic", "subclavian", "carotid", "jugular",
    "diaphragm", "abdomen", "mediastinum", "mediastinal",
)

# What follows a normal verdict after one of these words says in what respect it is normal
# ("normal in size and enhancement", "normal for age", "normal throughout").
VERDICT_PREPOSITIONS: frozenset[str] = frozenset({"in", "for", "throughout", "as", "at", "to", "on", "by"})

# Prepositions that make what follows a landmark: "lymph node adjacent to the aortic arch" is
# about the node, not the aorta, when the part before names a subject of its own.
LANDMARKS: tuple[str, ...] = (
    "adjacent to", "abutting", "abuts", "near", "next to", "close to", "beside", "anterior to",
    "posterior to", "lateral to", "medial to", "superior to", "inferior to", "at the level of",
    "in contact with", "contacting",
)

# Copulas and verbs of a closing verdict ("heart contour, size are normal").
COPULAS: frozenset[str] = frozenset({
    "is", "are", "was", "were", "appear", "appears", "appeared", "seem", "seems", "remain", "remains",
})

# Predicates of existence: "no mass, nodule or infiltration was detected" still lists negated items.
EXISTENCE_WORDS: frozenset[str] = frozenset({
    "is", "are", "was", "were", "seen", "noted", "observed", "identified", "detected", "present",
    "demonstrated", "found", "visualized", "evident", "there",
})


def phrase_regex(phrases: tuple[str, ...] | frozenset[str] | list[str]) -> re.Pattern[str]:
    """One case-insensitive regex alternation of ``phrases`` on word boundaries, longest first.

    Spaces in a phrase match any run of whitespace or a hyphen ("ground glass" ~ "ground-glass").
    """
    ordered = sorted(set(phrases), key=len, reverse=True)
    parts = [r"[\s-]+".join(re.escape(w) for w in re.split(r"[\s-]+", p)) for p in ordered]
    return re.compile(r"(?<![\w-])(?:" + "|".join(parts) + r")(?![\w-])", re.IGNORECASE)
