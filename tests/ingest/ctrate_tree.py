"""CT-RATE as published, in miniature: a few phantom volumes and the three tables under ``dataset/``.

Layout and column names follow the Hugging Face repository ``ibrahimhamamci/CT-RATE``::

    dataset/{train,valid}/<patient>/<study>/<volume>.nii.gz
    dataset/radiology_text_reports/{train,validation}_reports.csv
    dataset/metadata/{train,validation}_metadata.csv
    dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv

Volumes carry CT-RATE's wrong headers (identity affine, no scaling, stored = HU + 1024), so only
the metadata table has the truth; masks (which CT-RATE does not ship) sit in ``masks/`` beside
``dataset/`` on the volume's header. ``KNOWN_BAD`` is listed in the tables but has no file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctvlp.diseases import CTRATE
from ctvlp.transforms.io import nifti_bytes
from tests.ingest.corpus import phantom

# volume -> (split dir, findings, impression); train_1 has two reconstructions of one study
VOLUMES = {
    "train_1_a_1": ("train", "Heart size is enlarged. The lungs are clear.", "Cardiomegaly."),
    "train_1_a_2": ("train", "Heart size is enlarged. The lungs are clear.", "Cardiomegaly."),
    "train_2_a_1": ("train", "Emphysema in both upper lobes. Heart size is normal.", "Emphysema."),
    "train_3_b_1": ("train", "No pleural effusion. Heart size is normal.", "No acute findings."),
    "valid_1_a_1": ("valid", "Consolidation in the right lower lobe.", "Pneumonia."),
}
KNOWN_BAD = "train_1267_a_4"  # in the tables only, as HLIP's exclusion list has it
SPACING = (0.9, 0.9, 2.5)  # x, y, z mm: what the metadata says
TABLES = {  # CT-RATE split dir -> (reports, metadata, labels) paths under dataset/
    "train": ("radiology_text_reports/train_reports.csv", "metadata/train_metadata.csv",
              "multi_abnormality_labels/train_predicted_labels.csv"),
    "valid": ("radiology_text_reports/validation_reports.csv", "metadata/validation_metadata.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv"),
}


def _metadata_row(name: str, shape: tuple[int, int, int]) -> dict[str, object]:
    """A metadata row with CT-RATE's column names (a subset of its ~40 DICOM-derived columns)."""
    return {
        "VolumeName": f"{name}.nii.gz", "Manufacturer": "SIEMENS", "SeriesDescription": "Thorax 1.5 B30f",
        "PatientSex": "M", "PatientAge": "061Y", "ReconstructionDiameter": 350.0, "ConvolutionKernel": "B30f",
        "Rows": shape[1], "Columns": shape[0], "NumberofSlices": shape[2],
        "XYSpacing": f"[{SPACING[0]}, {SPACING[1]}]", "ZSpacing": SPACING[2],
        "RescaleIntercept": -1024.0, "RescaleSlope": 1.0, "RescaleType": "HU",
        "ImagePositionPatient": "[-14.4, -13.5, -30.0]", "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
        "StudyDate": "20200101",
    }


def _labels_row(name: str, impression: str) -> dict[str, object]:
    positive = {"Cardiomegaly.": "Cardiomegaly", "Emphysema.": "Emphysema", "Pneumonia.": "Consolidation"}
    return {"VolumeName": f"{name}.nii.gz", **{d.name: int(positive.get(impression) == d.name) for d in CTRATE}}


def build_ctrate_tree(root: Path) -> Path:
    """Write the tree under ``root`` (the download root, holding ``dataset/`` and ``masks/``)."""
    rows: dict[str, dict[str, list[dict]]] = {s: {"reports": [], "metadata": [], "labels": []} for s in TABLES}
    for i, (name, (split, findings, impression)) in enumerate(VOLUMES.items()):
        img, mask = phantom(i)
        patient, study = name.rsplit("_", 2)[0], name.rsplit("_", 1)[0]
        for folder, data in (("dataset", (img + 1024).astype(np.int16)), ("masks", mask)):
            path = root / folder / split / patient / study / f"{name}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(nifti_bytes(data, np.eye(4)))  # CT-RATE's header: 1 mm, no origin
        rows[split]["reports"].append({
            "VolumeName": f"{name}.nii.gz", "ClinicalInformation_EN": "Not given.",
            "Technique_EN": "Non-contrast chest CT.", "Findings_EN": findings, "Impressions_EN": impression,
        })
        rows[split]["metadata"].append(_metadata_row(name, img.shape))
        rows[split]["labels"].append(_labels_row(name, impression))
    rows["train"]["reports"].append({"VolumeName": f"{KNOWN_BAD}.nii.gz", "Findings_EN": "x", "Impressions_EN": "x"})
    for split, paths in TABLES.items():
        for kind, rel in zip(("reports", "metadata", "labels"), paths):
            (root / "dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows[split][kind]).to_csv(root / "dataset" / rel, index=False)
    return root


def reports_to_xlsx(root: Path) -> None:
    """Replace the report tables by .xlsx files, as some CT-RATE releases and users ship them."""
    for paths in TABLES.values():
        csv = root / "dataset" / paths[0]
        pd.read_csv(csv, dtype=str, keep_default_na=False).to_excel(csv.with_suffix(".xlsx"), index=False)
        csv.unlink()
