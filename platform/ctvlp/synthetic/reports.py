"""Radiology reports for synthetic studies: Findings organised by organ, and an Impression.

What a report says is exactly what was planted (:class:`~ctvlp.synthetic.lesions.Finding`:
side, lobe, segment, size); everything else is stated normal. Style follows chest-abdomen-pelvis
reports: thorax first, then abdomen and pelvis; explicit normal statements, pertinent negatives
("No pleural effusion."), normal organs sometimes grouped in one sentence ("The spleen,
pancreas and adrenal glands are unremarkable."), synonyms (renal/kidney, hepatic/liver,
cholelithiasis/gallstone) and varied order. Uncertainty ("likely", "suggestive of") only ever
qualifies a planted finding, never a normal organ.

Vocabulary rule, so that a rule-based parser can recover per-anatomy labels: every sentence
names its organ with an ordinary term (organ name, adjective or a finding that names its organ,
e.g. "cardiomegaly"); an abnormal sentence names no other organ; normal statements use
negations or "normal/unremarkable/clear/patent/intact". Words that belong to another organ in
common lexicons are avoided ("parenchyma" and "lobe" outside the lung, "splenic vein").
"""

from __future__ import annotations

import numpy as np

from ctvlp.synthetic.lesions import Finding

THORAX = ("lung", "heart", "aorta", "esophagus")
ABDOMEN = ("liver", "gallbladder", "spleen", "pancreas", "adrenal gland", "kidney", "stomach",
           "small intestine", "colon", "portal vein", "bladder", "sacrum")

NOUN = {  # noun phrase for grouped normal statements
    "liver": "liver", "gallbladder": "gallbladder", "spleen": "spleen", "pancreas": "pancreas",
    "adrenal gland": "adrenal glands", "kidney": "kidneys", "stomach": "stomach",
    "small intestine": "small bowel", "colon": "colon", "bladder": "urinary bladder",
    "portal vein": "portal vein", "sacrum": "sacrum", "heart": "heart", "esophagus": "esophagus",
    "aorta": "aorta", "lung": "lungs",
}

NORMAL: dict[str, tuple[str, ...]] = {
    "lung": ("Both lungs are clear.", "Lung parenchyma is normal.", "No focal lesion is seen in either lung.",
             "The lungs are clear; no nodule, consolidation or emphysema."),
    "heart": ("Heart size is normal.", "The heart is normal in size.", "Cardiac size is within normal limits."),
    "aorta": ("The aorta is normal in caliber.", "No aortic aneurysm or calcification.",
              "The thoracic and abdominal aorta are of normal caliber."),
    "esophagus": ("The esophagus is normal in caliber.", "The esophagus is unremarkable.",
                  "No hiatal hernia; the esophagus is normal."),
    "liver": ("The liver is normal in size and attenuation.", "No focal liver lesion is seen.", "The liver is unremarkable."),
    "gallbladder": ("The gallbladder is unremarkable.", "No gallstones are seen.", "The gallbladder is normal."),
    "spleen": ("The spleen is normal in size.", "The spleen is unremarkable."),
    "pancreas": ("The pancreas is unremarkable.", "The pancreas is normal in size and attenuation."),
    "adrenal gland": ("Both adrenal glands are normal.", "The adrenal glands are unremarkable.", "No adrenal nodule."),
    "kidney": ("Both kidneys are normal in size; no renal calculi or cysts.", "The kidneys are unremarkable.",
               "No renal calculi or hydronephrosis."),
    "stomach": ("The stomach is unremarkable.", "No gastric wall thickening.", "The stomach is normal."),
    "small intestine": ("Small bowel loops are normal in caliber.", "No small bowel dilatation.",
                        "The small bowel is unremarkable."),
    "colon": ("The colon is unremarkable.", "No colonic wall thickening.", "The large bowel is normal."),
    "portal vein": ("The portal vein is patent.", "The portal vein is normal in caliber and patent."),
    "bladder": ("The urinary bladder is unremarkable.", "The bladder is normal."),
    "sacrum": ("The sacrum is intact.", "No sclerotic or lytic lesion is seen in the sacrum.", "The sacrum is unremarkable."),
}

PERTINENT_NEGATIVE: dict[str, tuple[str, ...]] = {  # negatives of one finding, said about the organ
    "Pleural effusion": ("No pleural effusion.", "No pleural effusion or pneumothorax."),
    "Lung nodule": ("No pulmonary nodule.",),
    "Pericardial effusion": ("No pericardial effusion.",),
    "Cardiomegaly": ("The heart is not enlarged.",),
    "Gallstone": ("No gallstones.",),
    "Kidney stone": ("No renal calculi.",),
    "Hiatal hernia": ("No hiatal hernia.",),
}

FINDINGS: dict[str, tuple[str, ...]] = {  # templates; fields come from Finding (see _fields)
    "Lung nodule": ("A {size} mm solid nodule is seen in the {loc}.", "There is a {size} mm pulmonary nodule in the {loc}.",
                    "A solid pulmonary nodule measuring {size} mm is noted in the {loc}."),
    "Emphysema": ("{Sev} {kind} emphysematous changes are present in both lungs.",
                  "There is {sev} {kind} emphysema, predominantly in the upper lobes.", "Both lungs show {sev} {kind} emphysema."),
    "Pleural effusion": ("{Effusion} measuring up to {size} mm in thickness.", "There is {a_effusion} ({size} mm)."),
    "Consolidation": ("Consolidation with air bronchograms is seen in the {loc}.", "There is an area of consolidation in the {loc}.",
                      "Dense consolidation in the {loc}, likely pneumonia."),
    "Cardiomegaly": ("The heart is enlarged (cardiomegaly).", "Cardiomegaly is present.", "{Sev} cardiomegaly is noted."),
    "Pericardial effusion": ("A {sev} pericardial effusion measuring {size} mm is present.",
                             "Pericardial fluid up to {size} mm in thickness is noted.", "There is a {sev} pericardial effusion."),
    "Hiatal hernia": ("A {sev} sliding hiatal hernia is seen at the distal esophagus.", "There is a {sev} hiatal hernia measuring {cm} cm.",
                      "Hiatal hernia is present, measuring {cm} cm."),
    "Arterial wall calcification": ("Atherosclerotic calcifications are seen in the wall of the {loc} aorta.",
                                    "Calcified atherosclerotic plaques in the {loc} aorta.", "There are aortic wall calcifications."),
    "Liver cyst": ("{Cysts} {cyst_verb} seen in the liver.", "There {cyst_verb} {cysts} in the liver, of fluid attenuation.",
                   "Hypodense hepatic {cyst_noun} measuring up to {size} mm."),
    "Fatty liver": ("The liver shows diffusely decreased attenuation, consistent with hepatic steatosis.",
                    "Diffuse fatty infiltration of the liver is noted.", "{Sev} hepatic steatosis with decreased liver attenuation."),
    "Splenomegaly": ("The spleen is enlarged, measuring {cm} cm in craniocaudal length.", "Splenomegaly with a craniocaudal span of {cm} cm.",
                     "{Sev} splenomegaly is present."),
    "Kidney stone": ("A {size} mm non-obstructing calculus is seen in the {loc} of the {side} kidney.",
                     "There is a {size} mm {side} renal calculus in the {loc}.", "{Side} nephrolithiasis with a {size} mm stone in the {loc}."),
    "Kidney cyst": ("A {size} mm simple cortical cyst is seen in the {loc} of the {side} kidney.", "There is a {size} mm {side} renal cyst.",
                    "A simple cyst measuring {size} mm arises from the {side} kidney."),
    "Gallstone": ("{Stones} in the gallbladder, the largest measuring {size} mm.", "Cholelithiasis with a {size} mm calcified gallstone.",
                  "A {size} mm calcified stone is seen in the gallbladder lumen."),
    "Bladder stone": ("A {size} mm calculus is seen in the urinary bladder.", "There is a {size} mm stone in the dependent bladder.",
                      "Urinary bladder calculus measuring {size} mm."),
    "Pancreatic atrophy": ("The pancreas is atrophic with fatty replacement.", "Diffuse pancreatic atrophy is noted.",
                           "Pancreatic volume is reduced, consistent with atrophy."),
    "Adrenal nodule": ("A {size} mm nodule is seen in the {side} adrenal gland{lipid}.", "There is a {size} mm {side} adrenal nodule{lipid}.",
                       "{Side} adrenal mass measuring {size} mm{lipid}."),
    "Colonic wall thickening": ("Segmental wall thickening of the {loc} measuring up to {size} mm.",
                                "There is circumferential wall thickening in the {loc} ({size} mm).", "The {loc} shows wall thickening of {size} mm."),
    "Small bowel dilatation": ("Dilated fluid-filled small bowel loops measuring up to {cm} cm in diameter.",
                               "The small bowel loops are dilated up to {cm} cm with air-fluid levels.",
                               "Small bowel dilatation is present, with jejunal loops up to {cm} cm."),
    "Portal vein thrombosis": ("{Pv_text}",),
    "Gastric wall thickening": ("{Stomach_text}",),
    "Sacral sclerosis": ("A {size} mm sclerotic lesion is seen in the {side_sacrum}.", "There is a sclerotic focus in the sacrum measuring {size} mm."),
}

IMPRESSION: dict[str, tuple[str, ...]] = {
    "Lung nodule": ("{Size} mm pulmonary nodule in the {loc}.", "Solid lung nodule in the {loc}."),
    "Emphysema": ("{Sev} pulmonary emphysema.", "Emphysema of both lungs."),
    "Pleural effusion": ("{Effusion}.",),
    "Consolidation": ("Consolidation in the {loc}, likely pneumonia.", "{Loc} consolidation."),
    "Cardiomegaly": ("Cardiomegaly.", "Enlarged heart."),
    "Pericardial effusion": ("{Sev} pericardial effusion.", "Pericardial effusion."),
    "Hiatal hernia": ("{Sev} hiatal hernia.", "Hiatal hernia."),
    "Arterial wall calcification": ("Aortic atherosclerosis.", "Atherosclerotic calcification of the aorta."),
    "Liver cyst": ("Simple hepatic cyst.", "Benign-appearing liver cyst."),
    "Fatty liver": ("Hepatic steatosis.", "Fatty liver."),
    "Splenomegaly": ("Splenomegaly.", "Enlarged spleen ({cm} cm)."),
    "Kidney stone": ("{Side} nephrolithiasis.", "Non-obstructing {side} renal calculus."),
    "Kidney cyst": ("{Side} renal cyst.", "Simple cyst of the {side} kidney."),
    "Gallstone": ("Cholelithiasis.", "Calcified gallstones."),
    "Bladder stone": ("Bladder calculus.", "Urinary bladder stone."),
    "Pancreatic atrophy": ("Pancreatic atrophy.", "Atrophic pancreas."),
    "Adrenal nodule": ("{Side} adrenal nodule{lipid}.",),
    "Colonic wall thickening": ("Wall thickening of the {loc}; endoscopic correlation is recommended.", "{Loc} wall thickening."),
    "Small bowel dilatation": ("Small bowel dilatation, suggestive of obstruction.", "Dilated small bowel loops."),
    "Portal vein thrombosis": ("Portal vein thrombosis.", "Thrombus in the portal vein."),
    "Gastric wall thickening": ("Gastric wall thickening; endoscopy is recommended.", "Thickening of the stomach wall."),
    "Sacral sclerosis": ("Sclerotic sacral lesion.", "Sacral sclerosis; correlate clinically."),
}

NO_FINDINGS_IMPRESSION = ("No acute abnormality.", "No significant abnormality.", "Unremarkable examination.")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fields(f: Finding) -> dict[str, str]:
    """Template fields of a finding (lower-case; ``_render`` adds capitalised variants)."""
    d, size = f.details, f.size_mm or 0
    side = f.side or ""
    out = {"size": f"{size:g}", "cm": f"{size / 10:.1f}", "loc": f.location or "", "side": side,
           "sev": str(d.get("severity", "")), "kind": str(d.get("kind", "")), "lipid": ""}
    if f.disease == "Pleural effusion":
        out["effusion"] = ("bilateral pleural effusions" if side == "bilateral"
                           else f"{out['sev']} {side}-sided pleural effusion")
        out["a_effusion"] = ("bilateral pleural effusions" if side == "bilateral"
                             else f"a {out['sev']} {side} pleural effusion")
    if f.disease == "Liver cyst":
        n = d.get("count", 1)
        out["cysts"] = f"a {size:g} mm simple cyst" if n == 1 else f"{n} simple cysts (largest {size:g} mm)"
        out["cyst_verb"], out["cyst_noun"] = ("is", "cyst") if n == 1 else ("are", "cysts")
    if f.disease == "Gallstone":
        n = d.get("count", 1)
        out["stones"] = "a calcified gallstone" if n == 1 else f"{n} calcified gallstones"
    if f.disease == "Adrenal nodule":
        out["lipid"] = ", likely a lipid-rich adenoma" if d.get("lipid_rich") else ", of soft-tissue attenuation"
    if f.disease == "Portal vein thrombosis":
        extent = "occlusive" if d.get("occlusive") else "partial"
        out["pv_text"] = (f"A {extent} filling defect in the portal vein is consistent with thrombosis."
                          if d.get("contrast") else f"The portal vein is hyperdense, suggestive of {extent} thrombosis.")
    if f.disease == "Gastric wall thickening":
        where = "diffuse wall thickening of the stomach" if f.location == "diffuse" else f"wall thickening of the {f.location}"
        out["stomach_text"] = f"There is {where} measuring up to {size:g} mm."
    if f.disease == "Sacral sclerosis":
        out["side_sacrum"] = f"{side} sacral ala" if side else "sacrum"
    return out


def _render(template: str, f: Finding) -> str:
    fields = _fields(f)
    fields.update({_cap(k): _cap(v) for k, v in list(fields.items())})
    return _cap(" ".join(template.format(**fields).split()))


def _anatomy_sentences(anatomy: str, findings: list[Finding], rng: np.random.Generator) -> list[str]:
    """Abnormal sentences of one anatomy, with an occasional pertinent negative."""
    out = [_render(str(rng.choice(FINDINGS[f.disease])), f) for f in findings]
    planted = {f.disease for f in findings}
    negatives = [d for d in PERTINENT_NEGATIVE if d not in planted and d in _DISEASES_OF.get(anatomy, ())]
    if negatives and rng.random() < 0.35:
        out.append(str(rng.choice(PERTINENT_NEGATIVE[str(rng.choice(negatives))])))
    return out


def _normal_block(normals: list[str], rng: np.random.Generator) -> list[str]:
    """Normal statements for ``normals``, some grouped into one sentence."""
    out, rest = [], list(normals)
    if len(rest) >= 3 and rng.random() < 0.5:
        k = int(rng.integers(2, min(4, len(rest)) + 1))
        group = [rest.pop(int(rng.integers(0, len(rest)))) for _ in range(k)]
        nouns = [NOUN[a] for a in group]
        out.append(f"The {', '.join(nouns[:-1])} and {nouns[-1]} are {rng.choice(['unremarkable', 'normal'])}.")
    for anatomy in rest:
        out.append(str(rng.choice(NORMAL[anatomy])))
        if anatomy == "lung" and rng.random() < 0.5:
            out.append(str(rng.choice(PERTINENT_NEGATIVE["Pleural effusion"])))
    rng.shuffle(out)
    return out


def _shuffle_lightly(items: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Keep the usual order but swap a few neighbours (radiologists vary the order a little)."""
    out = list(items)
    for _ in range(int(rng.integers(0, 4))):
        i = int(rng.integers(0, len(out) - 1))
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def write_report(findings: list[Finding], contrast: bool, rng: np.random.Generator) -> tuple[str, str]:
    """``(Findings_EN, Impressions_EN)`` of a study with the planted ``findings``."""
    by_anatomy: dict[str, list[Finding]] = {}
    for f in findings:
        by_anatomy.setdefault(f.anatomy, []).append(f)
    sentences = []
    if rng.random() < 0.5:
        sentences.append("Examination performed after intravenous contrast." if contrast
                         else "Non-contrast examination.")
    for block in (THORAX, ABDOMEN):
        order = _shuffle_lightly(block, rng)
        normals = [a for a in order if a not in by_anatomy]
        abnormal = [a for a in order if a in by_anatomy]
        pieces = [_anatomy_sentences(a, by_anatomy[a], rng) for a in abnormal]
        normal_sentences = _normal_block(normals, rng)
        # interleave: abnormal organs in their order, normal statements spread around them
        slots = [[s] for s in normal_sentences] + pieces
        idx = rng.permutation(len(slots)) if rng.random() < 0.5 else np.arange(len(slots))
        for i in idx:
            sentences += slots[int(i)]
    if not findings:
        return " ".join(sentences), str(rng.choice(NO_FINDINGS_IMPRESSION))
    items = [_render(str(rng.choice(IMPRESSION[f.disease])), f) for f in findings]
    if rng.random() < 0.5:
        return " ".join(sentences), " ".join(f"{i + 1}. {t}" for i, t in enumerate(items))
    return " ".join(sentences), " ".join(items)


def _diseases_of() -> dict[str, tuple[str, ...]]:
    from ctvlp.synthetic.lesions import DISEASE_ANATOMY

    out: dict[str, list[str]] = {}
    for disease, anatomy in DISEASE_ANATOMY.items():
        out.setdefault(anatomy, []).append(disease)
    return {k: tuple(v) for k, v in out.items()}


_DISEASES_OF = _diseases_of()
