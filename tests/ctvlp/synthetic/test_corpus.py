"""Must-show for the synthetic corpus, checked from the written files only.

Every volume and mask load and align; every positive label has an altered region inside the
named anatomy's mask (HU statistics or sizes inside the TotalSegmentator masks, compared with the
studies negative for that disease: positives and negatives must separate completely); the report
mentions every positive and states every other anatomy normal. Nothing here reads the generator's
own record: geometry and rescaling come from the metadata CSV, labels from the labels CSV.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ctvlp.anatomy import CHEST_ABDOMEN, ts_total_ids
from ctvlp.diseases import SYNTHETIC
from ctvlp.synthetic import generate_corpus

DISEASES = [d.name for d in SYNTHETIC]
ANATOMY_OF = {d.name: d.anatomy for d in SYNTHETIC}
IDS = ts_total_ids()
LUNG = [IDS[c] for c in CHEST_ABDOMEN["lung"]]
LOWER = [IDS["lung_lower_lobe_left"], IDS["lung_lower_lobe_right"]]


def _affine_from_meta(row: pd.Series) -> np.ndarray:
    """CT-RATE's fix: direction = (row, col, row x col) * spacing, origin = IPP, LPS -> RAS."""
    sx, sy = ast.literal_eval(row["XYSpacing"])
    cos = np.array(ast.literal_eval(row["ImageOrientationPatient"]), float)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = cos[:3] * sx, cos[3:] * sy
    lps[:3, 2] = np.cross(cos[:3], cos[3:]) * float(row["ZSpacing"])
    lps[:3, 3] = ast.literal_eval(row["ImagePositionPatient"])
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_corpus(root: Path, ctrate_headers: bool = False) -> list[dict]:
    """Every volume as RAS-canonical ``hu``/``mask`` arrays with labels, report and spacing."""
    out = []
    for split, stem, lstem in (("train", "train", "train"), ("valid", "validation", "valid")):
        meta = pd.read_csv(root / f"dataset/metadata/{stem}_metadata.csv").set_index("VolumeName")
        reports = pd.read_csv(root / f"dataset/radiology_text_reports/{stem}_reports.csv").set_index("VolumeName")
        labels = pd.read_csv(root / f"dataset/multi_abnormality_labels/{lstem}_predicted_labels.csv").set_index("VolumeName")
        assert list(labels.columns) == DISEASES
        assert set(meta.index) == set(reports.index) == set(labels.index)
        for name, row in meta.iterrows():
            vol = name[: -len(".nii.gz")]
            patient, study = vol.rsplit("_", 2)[0], vol.rsplit("_", 1)[0]
            rel = Path(split) / patient / study / name
            img, msk = nib.load(root / "dataset" / rel), nib.load(root / "masks" / rel)
            assert img.get_data_dtype() == np.int16 and msk.shape == img.shape
            assert np.allclose(msk.affine, img.affine)
            affine = _affine_from_meta(row)
            if ctrate_headers:
                assert np.allclose(img.affine, np.eye(4))
            else:
                assert np.allclose(img.affine, affine, atol=1e-3)
            hu = np.asarray(img.dataobj.get_unscaled(), np.float32) * row["RescaleSlope"] + row["RescaleIntercept"]
            can_img = nib.as_closest_canonical(nib.Nifti1Image(hu, affine))
            can_msk = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(msk.dataobj), affine))
            out.append({
                "name": name, "split": split, "patient": patient, "hu": np.asarray(can_img.dataobj),
                "mask": np.asarray(can_msk.dataobj).astype(np.uint8), "spacing": can_img.header.get_zooms()[:3],
                "labels": labels.loc[name].to_dict(),
                "report": f"{reports.loc[name, 'Findings_EN']} {reports.loc[name, 'Impressions_EN']}",
            })
    return out


# ---------------------------------------------------------------- image statistics per disease


def _m(v: dict, *names: str) -> np.ndarray:
    return np.isin(v["mask"], [IDS[n] for n in names])


def _ml(v: dict, m: np.ndarray) -> float:
    return float(m.sum() * np.prod(v["spacing"]) / 1000.0)


def _edt(m: np.ndarray, spacing) -> np.ndarray:
    return ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]


def _deep(v: dict, m: np.ndarray) -> np.ndarray:
    """Voxels deeper than a wall: farther than max(8 mm, one coarsest voxel) from the outside."""
    return _edt(m, v["spacing"]) > max(8.0, 1.05 * max(v["spacing"]))


def _lung_components(v: dict) -> list[tuple[float, float]]:
    """Dense (> -400 HU) lung components: (volume mL, fraction in the dependent 45 mm band)."""
    lung, lower = np.isin(v["mask"], LUNG), np.isin(v["mask"], LOWER)
    band = lower & (np.cumsum(lower, axis=1) * v["spacing"][1] <= 45.0 + v["spacing"][1])
    comps, n = ndimage.label(lung & (v["hu"] > -400))
    out = []
    for k in range(1, n + 1):
        c = comps == k
        out.append((_ml(v, c), float((c & band).sum() / c.sum())))
    return out


def _med(v: dict, m: np.ndarray) -> float:
    return float(np.median(v["hu"][m])) if m.any() else 0.0


def _cyst_clusters(v: dict, organ: np.ndarray, drop: float) -> int:
    low = organ & (v["hu"] < _med(v, organ) - drop)
    comps, n = ndimage.label(low)
    return int(np.bincount(comps.ravel())[1:].max()) if n else 0


def _ctr(v: dict) -> float:
    """Cardiothoracic ratio: widest left-right extent of the heart (fluid excluded, > 22 HU)
    over the widest extent of the lungs, over axial slices."""
    def width(m: np.ndarray) -> int:
        cols = np.flatnonzero(m.any(axis=(1, 2)))
        return int(cols[-1] - cols[0] + 1) if cols.size else 0

    heart, lung = _m(v, "heart") & (v["hu"] > 22), np.isin(v["mask"], LUNG)
    return max(width(heart[:, :, k : k + 1]) for k in range(heart.shape[2])) / max(
        width(lung[:, :, k : k + 1]) for k in range(lung.shape[2]))


STAT = {  # disease -> statistic from image + mask; larger = more abnormal
    "Lung nodule": lambda v: sum(ml <= 40.0 and fb < 0.5 for ml, fb in _lung_components(v)),
    "Emphysema": lambda v: float((v["hu"][np.isin(v["mask"], LUNG)] < -950).mean()),
    "Pleural effusion": lambda v: sum(ml for ml, fb in _lung_components(v) if fb >= 0.5),
    "Consolidation": lambda v: max([ml for ml, fb in _lung_components(v) if fb < 0.5] or [0.0]),
    "Cardiomegaly": lambda v: _ctr(v),
    "Pericardial effusion": lambda v: _med(v, ndimage.binary_erosion(_m(v, "heart")))
    - _med(v, _m(v, "heart") & ~ndimage.binary_erosion(_m(v, "heart"))),
    "Hiatal hernia": lambda v: float(_edt(_m(v, "esophagus"), v["spacing"]).max()),
    "Arterial wall calcification": lambda v: int((v["hu"][_m(v, "aorta")] > 350).sum()),
    "Liver cyst": lambda v: _cyst_clusters(v, _m(v, "liver"), 22.0),
    "Fatty liver": lambda v: _med(v, _m(v, "spleen")) - _med(v, _m(v, "liver")),
    "Splenomegaly": lambda v: _ml(v, _m(v, "spleen")) / _ml(v, _m(v, "liver")),
    "Kidney stone": lambda v: int((v["hu"][_m(v, "kidney_left", "kidney_right")] > 300).sum()),
    "Kidney cyst": lambda v: int(_m(v, "kidney_cyst_left", "kidney_cyst_right").sum()),
    "Gallstone": lambda v: int((v["hu"][_m(v, "gallbladder")] > 150).sum()),
    "Bladder stone": lambda v: int((v["hu"][_m(v, "urinary_bladder")] > 150).sum()),
    "Pancreatic atrophy": lambda v: -_ml(v, _m(v, "pancreas")),
    "Adrenal nodule": lambda v: max(float(_edt(_m(v, n), v["spacing"]).max()) for n in ("adrenal_gland_left", "adrenal_gland_right")),
    "Colonic wall thickening": lambda v: int((_deep(v, _m(v, "colon")) & (v["hu"] > -30)).sum()),
    "Small bowel dilatation": lambda v: float(_edt(_m(v, "small_bowel", "duodenum"), v["spacing"]).max()),
    "Portal vein thrombosis": lambda v: float(
        (np.abs(v["hu"][_m(v, "portal_vein_and_splenic_vein")] - _med(v, _m(v, "aorta"))) > 28).mean()),
    "Gastric wall thickening": lambda v: int((_deep(v, _m(v, "stomach")) & (v["hu"] > 25)).sum()),
    "Sacral sclerosis": lambda v: int((_deep(v, _m(v, "sacrum")) & (v["hu"] > 600)).sum()),
}


def disease_separation(volumes: list[dict]) -> dict[str, tuple[float, float, int]]:
    """Per disease: (lowest positive statistic, highest negative statistic, number of positives)."""
    out = {}
    for disease, stat in STAT.items():
        values = [(stat(v), v["labels"][disease]) for v in volumes]
        pos = [s for s, y in values if y == 1]
        neg = [s for s, y in values if y == 0]
        out[disease] = (min(pos) if pos else np.inf, max(neg) if neg else -np.inf, len(pos))
    return out


# ---------------------------------------------------------------- report text


ANATOMY_RE = {
    "lung": r"\blungs?\b|pulmonary|pleural|\blobes?\b|emphysem|consolidation",
    "heart": r"heart|cardiac|cardiomegaly|pericardial", "aorta": r"aort", "esophagus": r"esophag|hiatal",
    "liver": r"liver|hepatic", "gallbladder": r"gallbladder|gallstone|cholelithiasis",
    "spleen": r"spleen|splenomegaly", "pancreas": r"pancrea", "adrenal gland": r"adrenal",
    "kidney": r"kidney|\brenal|nephrolithiasis", "stomach": r"stomach|gastric|antrum",
    "small intestine": r"small bowel|jejun", "colon": r"colon|large bowel|cecum|rectum|sigmoid",
    "portal vein": r"portal", "bladder": r"(?<!gall)bladder", "sacrum": r"sacr",
}
FINDING_RE = {
    "Lung nodule": r"nodule", "Emphysema": r"emphysem", "Pleural effusion": r"pleural effusion",
    "Consolidation": r"consolidation", "Cardiomegaly": r"cardiomegaly|heart is enlarged|enlarged heart",
    "Pericardial effusion": r"pericardial (effusion|fluid)", "Hiatal hernia": r"hiatal hernia",
    "Arterial wall calcification": r"calcif|atherosclero", "Liver cyst": r"cyst", "Fatty liver": r"steatosis|fatty",
    "Splenomegaly": r"splenomegaly|spleen is enlarged|enlarged spleen", "Kidney stone": r"calcul|stone|nephrolithiasis",
    "Kidney cyst": r"cyst", "Gallstone": r"stone|cholelithiasis", "Bladder stone": r"calcul|stone",
    "Pancreatic atrophy": r"atroph", "Adrenal nodule": r"nodule|mass", "Colonic wall thickening": r"thickening",
    "Small bowel dilatation": r"dilat", "Portal vein thrombosis": r"thromb", "Gastric wall thickening": r"thickening",
    "Sacral sclerosis": r"scleros|sclerotic",
}
NORMAL_RE = r"\b(no|not|normal|unremarkable|clear|patent|intact|within normal limits)\b"


def report_problems(v: dict) -> list[str]:
    """Inconsistencies between the report text and the labels CSV row of one volume."""
    sentences = [s for s in re.split(r"(?<=[.])\s+", v["report"]) if s]
    problems = []
    for anatomy, pattern in ANATOMY_RE.items():
        about = [s for s in sentences if re.search(pattern, s, re.I)]
        abnormal = [s for s in about if not re.search(NORMAL_RE, s, re.I)]
        positives = [d for d in DISEASES if ANATOMY_OF[d] == anatomy and v["labels"][d] == 1]
        if not about:
            problems.append(f"{anatomy} never mentioned")
        if not positives and abnormal:
            problems.append(f"{anatomy} has no finding but the report says {abnormal}")
        for d in positives:
            if not any(re.search(FINDING_RE[d], s, re.I) for s in abnormal):
                problems.append(f"{d} positive but not reported")
    for s in sentences:  # an abnormal sentence speaks about one anatomy only
        if not re.search(NORMAL_RE, s, re.I):
            named = [a for a, p in ANATOMY_RE.items() if re.search(p, s, re.I)]
            if len(named) > 1:
                problems.append(f"abnormal sentence names {named}: {s!r}")
    return problems


# ---------------------------------------------------------------- tests


def _check(volumes: list[dict]) -> None:
    sep = disease_separation(volumes)
    bad = {d: s for d, s in sep.items() if s[2] > 0 and not s[0] > s[1]}
    assert not bad, f"positives not separated from negatives (min pos, max neg, n pos): {bad}"
    problems = {v["name"]: p for v in volumes if (p := report_problems(v))}
    assert not problems, f"report/label mismatches: {dict(list(problems.items())[:5])}"
    by_patient = {}
    for v in volumes:
        by_patient.setdefault(v["patient"], set()).add(v["split"])
    assert all(len(s) == 1 for s in by_patient.values())


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate_corpus(root, 60, seed=7, preset="tiny", prevalence="balanced", balanced_rate=0.3)
    return root


def test_tiny_corpus_findings_visible_and_reported(tiny_corpus):
    volumes = read_corpus(tiny_corpus)
    assert len(volumes) >= 60
    _check(volumes)
    sep = disease_separation(volumes)
    assert sum(n > 0 for *_, n in sep.values()) >= 20  # nearly every disease has positives


@pytest.mark.slow
def test_few_hundred_studies_findings_visible_and_reported(tmp_path):
    generate_corpus(tmp_path, 300, seed=11, preset="tiny", prevalence="balanced", balanced_rate=0.3)
    volumes = read_corpus(tmp_path)
    _check(volumes)
    assert all(n >= 10 for *_, n in disease_separation(volumes).values())


def test_demo_plan_tops_up_test_positives_and_keeps_patients_in_one_split():
    from ctvlp.synthetic import get_preset, plan_corpus

    plans = plan_corpus(300, seed=0, preset=get_preset("demo"))
    test = [p for p in plans if p.split == "test"]
    assert all(sum(d in p.diseases for p in test) >= 20 for d in DISEASES)
    split_of = {}
    for p in plans:
        assert split_of.setdefault(p.patient_index, p.split) == p.split
    assert max(p.study for p in plans) >= 1  # some patients have follow-up studies
    with pytest.raises(ValueError, match="min_test_positives"):
        plan_corpus(30, seed=0, preset=get_preset("demo"))


def test_bad_arguments_fail_with_clear_messages(tmp_path):
    from ctvlp.synthetic import get_preset

    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown preset field"):
        get_preset("tiny", voxels=3)
    with pytest.raises(ValueError, match="num_studies"):
        generate_corpus(tmp_path, 0)
    with pytest.raises(ValueError, match="layout"):
        generate_corpus(tmp_path, 2, layout="flat")
