"""The ingest manifest: one row per input study, built from CT-RATE's layout or read from a file.

Normalised columns (all strings; empty string = absent):

============== ===============================================================================
study_id       CT-RATE ``VolumeName`` without extension, or the manifest's ``study_id``
patient_id     CT-RATE: ``<split>_<n>`` from the VolumeName; manifest: ``patient_id`` or study_id
split          ``train`` / ``valid`` / ``test`` (CT-RATE ``valid`` -> test; valid carved from train)
image_uri      a NIfTI file, or a DICOM series prefix (any URI not ending in .nii / .nii.gz)
image_format   ``nifti`` / ``dicom``
mask_uri       a NIfTI mask of TotalSegmentator v2 ``total`` ids aligned with the image, or ""
findings       report findings (or the whole report)
impression     report impression
meta           JSON of the metadata-CSV row (CT-RATE header repair); never written to shards
disease_labels JSON ``{label column: 0/1}`` from the labels CSV, or ``{}``
============== ===============================================================================

Splits stay disjoint by patient: :func:`check_patient_splits` refuses a patient in two splits.
Error messages name study ids only, never patient ids.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from typing import Any

import numpy as np
import pandas as pd

from ingest.storage import Storage, join

COLUMNS = [
    "study_id", "patient_id", "split", "image_uri", "image_format", "mask_uri",
    "findings", "impression", "meta", "disease_labels",
]
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
# CT-RATE file names: <split>_<patient>_<study letter>_<reconstruction>.nii.gz
_CTRATE_NAME = re.compile(r"^(?P<split>[a-z]+)_(?P<pid>\d+)_(?P<study>[a-z]+)_(?P<rec>\d+)$")
# CT-RATE tables per source split: (reports, metadata, labels), relative to the root.
_CTRATE_TABLES = {
    "train": ("radiology_text_reports/train_reports.csv", "metadata/train_metadata.csv",
              "multi_abnormality_labels/train_predicted_labels.csv"),
    "valid": ("radiology_text_reports/validation_reports.csv", "metadata/validation_metadata.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv"),
}


def strip_ext(name: str) -> str:
    base = posixpath.basename(name.rstrip("/"))
    for ext in (".nii.gz", ".nii"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _read_table(storage: Storage, uri: str) -> pd.DataFrame:
    data = storage.read_bytes(uri)
    if uri.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()


def ctrate_paths(volume_name: str) -> tuple[str, str]:
    """``train_12_a_1`` -> (patient ``train_12``, relative path ``train_12/train_12_a/train_12_a_1.nii.gz``)."""
    m = _CTRATE_NAME.match(volume_name)
    if m is None:
        raise ValueError(f"not a CT-RATE VolumeName: {volume_name!r} (want <split>_<n>_<letter>_<n>)")
    patient = f"{m['split']}_{m['pid']}"
    study = f"{patient}_{m['study']}"
    return patient, f"{patient}/{study}/{volume_name}.nii.gz"


def _ctrate_split(storage: Storage, root: str, src: str, mask_dir: str) -> pd.DataFrame:
    reports_uri, meta_uri, labels_uri = (join(root, p) for p in _CTRATE_TABLES[src])
    reports = _read_table(storage, reports_uri) if storage.exists(reports_uri) else pd.DataFrame()
    meta = _read_table(storage, meta_uri) if storage.exists(meta_uri) else pd.DataFrame()
    labels = _read_table(storage, labels_uri) if storage.exists(labels_uri) else pd.DataFrame()
    by_name = lambda df: {strip_ext(r["VolumeName"]): r for r in df.to_dict("records")} if len(df) else {}
    rep, met, lab = by_name(reports), by_name(meta), by_name(labels)
    on_disk = {strip_ext(u) for u in storage.list_files(join(root, "dataset", src), ".nii.gz")}
    names = sorted(set(rep) | set(met) | on_disk)  # a volume known to any source is a study
    rows = []
    for name in names:
        patient, rel = ctrate_paths(name)
        r, lb = rep.get(name, {}), lab.get(name, {})
        rows.append({
            "study_id": name, "patient_id": patient, "split": "test" if src == "valid" else "train",
            "image_uri": join(root, "dataset", src, rel), "image_format": "nifti",
            "mask_uri": join(root, mask_dir, src, rel) if mask_dir else "",
            "findings": _text(r.get("Findings_EN")), "impression": _text(r.get("Impressions_EN")),
            "meta": json.dumps({k: _text(v) for k, v in met.get(name, {}).items()}),
            "disease_labels": json.dumps({k: int(float(v)) for k, v in lb.items()
                                          if k != "VolumeName" and _text(v) != ""}),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def carve_valid(df: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Move a seeded ``fraction`` of train patients (all their studies) to ``valid``.

    Patients are sorted, then permuted with ``numpy.random.default_rng(seed)``: the same corpus
    and seed give the same split on every run and every machine.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"valid fraction must be in (0, 1), got {fraction}")
    patients = np.array(sorted(df.loc[df.split == "train", "patient_id"].unique()))
    if len(patients) < 2:
        return df
    num_valid = max(1, int(round(fraction * len(patients))))
    chosen = set(np.random.default_rng(seed).permutation(patients)[:num_valid])
    out = df.copy()
    out.loc[(out.split == "train") & out.patient_id.isin(chosen), "split"] = "valid"
    return out


def from_ctrate(storage: Storage, root: str, *, valid_fraction: float, seed: int,
                mask_dir: str = "masks") -> pd.DataFrame:
    """Manifest of a CT-RATE-layout root (local or s3://). See the module docstring."""
    parts = [_ctrate_split(storage, root, src, mask_dir) for src in _CTRATE_TABLES]
    df = pd.concat(parts, ignore_index=True)
    if df.empty:
        raise ValueError(f"no CT-RATE studies under {root!r}: expected dataset/, "
                         "radiology_text_reports/ and metadata/")
    return carve_valid(df, valid_fraction, seed)


def _resolve(uri: str, base: str) -> str:
    if not uri or uri.startswith("s3://") or uri.startswith("/"):
        return uri
    return join(base, uri)


def from_table(storage: Storage, uri: str) -> pd.DataFrame:
    """Manifest from a CSV/Parquet file (columns in the module docstring; relative URIs resolve
    against the manifest's folder)."""
    raw = _read_table(storage, uri)
    missing = {"study_id", "image_uri", "split"} - set(raw.columns)
    if missing:
        raise ValueError(f"manifest {uri!r} lacks columns {sorted(missing)}")
    if "report" not in raw.columns and not {"findings", "impression"} <= set(raw.columns):
        raise ValueError(f"manifest {uri!r} needs a 'report' column or 'findings' + 'impression'")
    base = posixpath.dirname(uri)
    rows = []
    for r in raw.to_dict("records"):
        split = _SPLIT_ALIASES.get(_text(r["split"]).lower())
        if split is None:
            raise ValueError(f"study {r['study_id']!r}: split {r['split']!r} not in {SPLITS}")
        image = _resolve(_text(r["image_uri"]), base)
        nifti = image.endswith(".nii") or image.endswith(".nii.gz")
        rows.append({
            "study_id": _text(r["study_id"]),
            "patient_id": _text(r.get("patient_id")) or _text(r["study_id"]),
            "split": split, "image_uri": image, "image_format": "nifti" if nifti else "dicom",
            "mask_uri": _resolve(_text(r.get("mask_uri")), base),
            "findings": _text(r.get("findings", r.get("report"))),
            "impression": _text(r.get("impression")),
            "meta": "{}", "disease_labels": _text(r.get("disease_labels")) or "{}",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def split_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(first occurrences, later duplicates)`` by study_id, both in manifest order."""
    dup = df.study_id.duplicated(keep="first")
    return df[~dup].reset_index(drop=True), df[dup].reset_index(drop=True)


def check_patient_splits(df: pd.DataFrame) -> None:
    """Raise ValueError when a patient has studies in two splits (names study ids, not patients)."""
    per_patient = df.groupby("patient_id").split.nunique()
    leaking = per_patient[per_patient > 1].index
    if len(leaking):
        studies = sorted(df[df.patient_id.isin(leaking)].study_id)[:6]
        raise ValueError(
            f"{len(leaking)} patient(s) have studies in more than one split (e.g. studies "
            f"{studies}): splits must be disjoint by patient; fix the manifest's split column"
        )


def build_manifest(storage: Storage, source_uri: str, fmt: str, *, valid_fraction: float = 0.1,
                   seed: int = 0, mask_dir: str = "masks") -> pd.DataFrame:
    """Build or read the manifest (``fmt`` = ``ctrate`` | ``csv`` | ``parquet``), checks included.

    Duplicated study ids are kept here (the pipeline quarantines the later ones); a patient in
    two splits raises ValueError.
    """
    if fmt == "ctrate":
        df = from_ctrate(storage, source_uri, valid_fraction=valid_fraction, seed=seed,
                         mask_dir=mask_dir)
    elif fmt in ("csv", "parquet"):
        df = from_table(storage, source_uri)
    else:
        raise ValueError(f"manifest format must be ctrate, csv or parquet, got {fmt!r}")
    check_patient_splits(df)
    return df
