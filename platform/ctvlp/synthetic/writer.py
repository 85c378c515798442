"""CT-RATE layout on disk: names, NIfTI volumes and masks, metadata/report/label CSVs.

The layout of CT-RATE as published (Hugging Face ``ibrahimhamamci/CT-RATE``: everything under
``dataset/``), so that ingest reads a synthetic corpus through the same adapter as a real
download. Root = ``--out``, ``<d>`` the dataset split directory::

    dataset/<d>/<patient>/<study>/<volume>.nii.gz        int16 stored values
    dataset/radiology_text_reports/{train,validation,test}_reports.csv
    dataset/metadata/{train,validation,test}_metadata.csv
    dataset/multi_abnormality_labels/{train,valid,test}_predicted_labels.csv
    masks/<d>/<patient>/<study>/<volume>.nii.gz          uint8 TotalSegmentator v2 "total" ids
    corpus.json                                          what was generated (counts, mapping)

Masks (which CT-RATE does not ship) and ``corpus.json`` sit beside ``dataset/``.

Names follow CT-RATE: volume ``train_12_a_1`` of study ``train_12_a`` of patient ``train_12``.
Geometry follows CT-RATE's metadata: ``ImageOrientationPatient`` (row, column cosines, LPS),
``ImagePositionPatient`` (LPS mm of voxel (0, 0, 0)), ``XYSpacing`` ``"[x, y]"`` and
``ZSpacing``; slice direction = row x column. The NIfTI affine (RAS) is rebuilt from exactly
these rounded numbers, so repairing a header from the CSV reproduces it. With
``ctrate_headers`` the files carry what CT-RATE's carry instead: an identity affine (1 mm, no
orientation, zero origin) and no scaling, so stored values read raw and only the CSV has the
truth. Masks always share their volume's header.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from ctvlp.diseases import SYNTHETIC

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DATASET_DIR = "dataset"  # volumes and the three table families, as CT-RATE publishes them
# split -> (dataset dir / name prefix, reports+metadata file stem, labels file stem)
SPLIT_FILES = {"train": ("train", "train", "train"), "valid": ("valid", "validation", "valid"),
               "test": ("test", "test", "test")}
# corpus layout -> {our split: CT-RATE split it is written as}
LAYOUTS = {"ctrate": {"train": "train", "test": "valid"},
           "three-way": {"train": "train", "valid": "valid", "test": "test"}}
LABEL_COLUMNS = [d.name for d in SYNTHETIC]
METADATA_COLUMNS = [
    "VolumeName", "Manufacturer", "PatientSex", "PatientAge", "ReconstructionDiameter", "ConvolutionKernel",
    "SliceThickness", "Rows", "Columns", "NumberofSlices", "XYSpacing", "ZSpacing", "RescaleIntercept",
    "RescaleSlope", "ImageOrientationPatient", "ImagePositionPatient",
]


def _proper_orientations() -> tuple[tuple[str, str, str], ...]:
    """Axial orientations whose slice axis is row x column (a right-handed LPS frame)."""
    out = []
    for first in ("L", "R", "A", "P"):
        for second in ("A", "P") if first in "LR" else ("L", "R"):
            for third in ("S", "I"):
                t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt((first, second, third)))
                if np.linalg.det(inv_ornt_aff(t, (4, 4, 4))[:3, :3]) > 0:
                    out.append((first, second, third))
    return tuple(out)


ORIENTATIONS = _proper_orientations()  # ("L","P","S") is the usual DICOM axial order


def volume_name(split_dir: str, patient: int, study: int, recon: int) -> tuple[str, str, str]:
    """``(patient, study, volume)`` names, e.g. ``("train_12", "train_12_a", "train_12_a_1")``."""
    patient_name = f"{split_dir}_{patient}"
    study_name = f"{patient_name}_{chr(ord('a') + study)}"
    return patient_name, study_name, f"{study_name}_{recon}"


def volume_paths(root: Path, split_dir: str, patient: int, study: int, recon: int) -> tuple[Path, Path]:
    """``(image path, mask path)`` of a volume."""
    p, s, v = volume_name(split_dir, patient, study, recon)
    rel = Path(split_dir) / p / s / f"{v}.nii.gz"
    return root / DATASET_DIR / rel, root / "masks" / rel


def orient(canonical: np.ndarray, affine_ras: np.ndarray, codes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a RAS-ordered ``[X, Y, Z]`` array to ``codes``; returns (array, its affine)."""
    t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes))
    return apply_orientation(canonical, t), affine_ras @ inv_ornt_aff(t, canonical.shape)


def dicom_geometry(affine_ras: np.ndarray) -> dict[str, object]:
    """CT-RATE metadata geometry of an axial RAS affine (rounded as written to the CSV)."""
    lps = LPS_TO_RAS @ affine_ras
    spacing = np.round(np.linalg.norm(lps[:3, :3], axis=0), 6)
    row, col = np.round(lps[:3, 0] / spacing[0], 6), np.round(lps[:3, 1] / spacing[1], 6)
    if not np.allclose(np.cross(row, col) * spacing[2], lps[:3, 2], atol=1e-4):
        raise ValueError("slice axis is not row x column: not a CT-RATE-expressible orientation")
    position = np.round(lps[:3, 3], 3)
    return {
        "XYSpacing": f"[{spacing[0]:g}, {spacing[1]:g}]", "ZSpacing": float(spacing[2]),
        "ImageOrientationPatient": "[" + ", ".join(f"{v:g}" for v in np.concatenate([row, col]) + 0.0) + "]",
        "ImagePositionPatient": "[" + ", ".join(f"{v:g}" for v in position + 0.0) + "]",
        "_affine": affine_from_geometry(row, col, spacing, position),
    }


def affine_from_geometry(row: np.ndarray, col: np.ndarray, spacing: np.ndarray, position: np.ndarray) -> np.ndarray:
    """RAS affine of DICOM geometry: columns row*sx, col*sy, (row x col)*sz, origin, LPS->RAS."""
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = row * spacing[0], col * spacing[1], np.cross(row, col) * spacing[2]
    out[:3, 3] = position
    return LPS_TO_RAS @ out


def quantize(hu: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """HU -> int16 stored values, ``hu = stored * slope + intercept`` (HU clipped to -1024..3071)."""
    stored = np.rint((np.clip(hu, -1024.0, 3071.0) - intercept) / slope)
    return np.clip(stored, -32768, 32767).astype(np.int16)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray, scaling: tuple[float, float] | None) -> None:
    """Write one NIfTI (gzip). ``scaling`` = (slope, intercept) in the header, or None (raw)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    if scaling is not None:
        img.header.set_slope_inter(*scaling)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def table_paths(ctrate_split: str) -> dict[str, str]:
    """``{"reports" | "metadata" | "labels": path relative to the root}`` of a CT-RATE split
    (``train``, ``valid`` or, in the three-way layout, ``test``)."""
    _, stem, label_stem = SPLIT_FILES[ctrate_split]
    return {"reports": f"{DATASET_DIR}/radiology_text_reports/{stem}_reports.csv",
            "metadata": f"{DATASET_DIR}/metadata/{stem}_metadata.csv",
            "labels": f"{DATASET_DIR}/multi_abnormality_labels/{label_stem}_predicted_labels.csv"}


def write_tables(root: Path, rows: dict[str, dict[str, list[dict]]], layout: str) -> dict[str, list[str]]:
    """Write the three CSV families for every split; returns {split: [relative paths]}."""
    columns = {"reports": ["VolumeName", "Findings_EN", "Impressions_EN"], "metadata": METADATA_COLUMNS,
               "labels": ["VolumeName", *LABEL_COLUMNS]}
    written: dict[str, list[str]] = {}
    for split, ctrate_split in LAYOUTS[layout].items():
        tables = {rel: (rows[split][kind], columns[kind]) for kind, rel in table_paths(ctrate_split).items()}
        for rel, (table, cols) in tables.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(table, columns=cols).to_csv(root / rel, index=False)
        written[split] = sorted(tables)
    return written


def write_summary(root: Path, summary: dict) -> None:
    (root / "corpus.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
