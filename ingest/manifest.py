"""The ingest manifest: one row per input study, built from CT-RATE's layout or read from a file.

CT-RATE as published (Hugging Face ``ibrahimhamamci/CT-RATE``): everything under ``dataset/``::

    dataset/{train,valid}/<patient>/<study>/<volume>.nii.gz
    dataset/radiology_text_reports/{train,validation}_reports.csv      (or .xlsx)
    dataset/metadata/{train,validation}_metadata.csv                   (or .xlsx)
    dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv (or .xlsx)

:func:`from_ctrate` takes the download root (the folder holding ``dataset/``) or ``dataset/``
itself, local or ``s3://``. Supplied masks, which CT-RATE does not ship, live beside ``dataset/``:
``<mask_dir>/<split>/<patient>/<study>/<volume>.nii.gz``. A split is read when its volume folder
or any of its tables exists, and then all three tables must exist (a missing one raises
FileNotFoundError naming the file). The earlier layout with the tables beside ``dataset/`` (which
only ctvlp's own synthetic corpus wrote) is not read; the error says how to move it.

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
meta           JSON of the metadata-table row (CT-RATE header repair); never written to shards
disease_labels JSON ``{label column: 0/1}`` from the labels table, or ``{}``
============== ===============================================================================

A manifest file's study ids must match :data:`STUDY_ID` (letters, digits, ``._-``, no path
separators, at most 200 characters): an empty or malformed id stops the load with an error naming
its row, since an id keys the shards, the quarantine table and resume. A row whose split is not a
known split keeps its raw value in ``split`` here; :func:`split_invalid_splits` sets it aside and
the pipeline quarantines it as ``invalid_split`` (the other rows are ingested).

Splits stay disjoint by patient: :func:`check_patient_splits` refuses a patient in two splits.
:func:`split_excluded` takes the spec's known-bad volumes out (the pipeline quarantines them).
Error messages name study ids only, never patient ids.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from ingest.storage import Storage, join

COLUMNS = [
    "study_id", "patient_id", "split", "image_uri", "image_format", "mask_uri",
    "findings", "impression", "meta", "disease_labels",
]
SPLITS = ("train", "valid", "test")
STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
# CT-RATE file names: <split>_<patient>_<study letter>_<reconstruction>.nii.gz
_CTRATE_NAME = re.compile(r"^(?P<split>[a-z]+)_(?P<pid>\d+)_(?P<study>[a-z]+)_(?P<rec>\d+)$")
# CT-RATE tables per source split: (reports, metadata, labels), relative to dataset/, without
# their extension: each is read from .csv, or from .xlsx when there is no .csv.
CTRATE_TABLES = {
    "train": ("radiology_text_reports/train_reports", "metadata/train_metadata",
              "multi_abnormality_labels/train_predicted_labels"),
    "valid": ("radiology_text_reports/validation_reports", "metadata/validation_metadata",
              "multi_abnormality_labels/valid_predicted_labels"),
}
TABLE_EXTENSIONS = (".csv", ".xlsx")


def strip_ext(name: str) -> str:
    base = posixpath.basename(name.rstrip("/"))
    for ext in (".nii.gz", ".nii"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def _read_table(storage: Storage, uri: str) -> pd.DataFrame:
    """A CSV, Parquet or .xlsx (first sheet) table; CSV and .xlsx cells as strings, "" = empty."""
    data = storage.read_bytes(uri)
    if uri.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    if uri.endswith(".xlsx"):
        return pd.read_excel(io.BytesIO(data), dtype=str, na_filter=False, engine="openpyxl")
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


def ctrate_dataset_dir(storage: Storage, uri: str) -> str:
    """The ``dataset/`` folder of a CT-RATE download, given the download root or that folder."""
    nested = join(uri, "dataset")
    return nested if storage.exists(nested) else uri.rstrip("/")


def _find_table(storage: Storage, dataset: str, stem: str) -> str | None:
    for ext in TABLE_EXTENSIONS:
        if storage.exists(uri := join(dataset, stem + ext)):
            return uri
    return None


def _missing_tables_error(storage: Storage, dataset: str, src: str, missing: list[str]) -> FileNotFoundError:
    expected = ", ".join(join(dataset, stem) + ".csv" for stem in missing)
    hint = ""
    beside = posixpath.dirname(dataset)
    if any(_find_table(storage, beside, stem) for stem in missing):
        hint = ("; the tables sit beside dataset/ (the layout ctvlp's synthetic corpus wrote before): "
                "move radiology_text_reports/, metadata/ and multi_abnormality_labels/ into dataset/, "
                "or regenerate the corpus")
    return FileNotFoundError(f"CT-RATE split {src!r} has volumes or tables but lacks {expected} "
                             f"(or .xlsx){hint}")


def _split_tables(storage: Storage, dataset: str, src: str) -> list[pd.DataFrame] | None:
    """``[reports, metadata, labels]`` of one CT-RATE split, or None when the split is absent."""
    stems = CTRATE_TABLES[src]
    found = [_find_table(storage, dataset, stem) for stem in stems]
    if not any(found) and not storage.exists(join(dataset, src)):
        return None
    missing = [stem for stem, uri in zip(stems, found) if uri is None]
    if missing:
        raise _missing_tables_error(storage, dataset, src, missing)
    tables = [_read_table(storage, uri) for uri in found]
    for uri, table in zip(found, tables):
        if "VolumeName" not in table.columns:
            raise ValueError(f"{uri} has no 'VolumeName' column (columns: {list(table.columns)[:6]})")
    return tables


def _ctrate_split(storage: Storage, dataset: str, src: str, mask_root: str) -> pd.DataFrame | None:
    """Manifest rows of one CT-RATE split (``train`` / ``valid``), or None when it is absent."""
    tables = _split_tables(storage, dataset, src)
    if tables is None:
        return None
    rep, met, lab = ({strip_ext(r["VolumeName"]): r for r in t.to_dict("records")} for t in tables)
    on_disk = {strip_ext(u) for u in storage.list_files(join(dataset, src), ".nii.gz")}
    names = sorted(set(rep) | set(met) | on_disk)  # a volume known to any source is a study
    rows = []
    for name in names:
        patient, rel = ctrate_paths(name)
        r, lb = rep.get(name, {}), lab.get(name, {})
        rows.append({
            "study_id": name, "patient_id": patient, "split": "test" if src == "valid" else "train",
            "image_uri": join(dataset, src, rel), "image_format": "nifti",
            "mask_uri": join(mask_root, src, rel) if mask_root else "",
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
    """Manifest of a CT-RATE download (local or s3://): ``root`` is the folder holding
    ``dataset/`` or ``dataset/`` itself; masks under ``<mask_dir>`` beside ``dataset/`` ("" =
    none). See the module docstring."""
    dataset = ctrate_dataset_dir(storage, root)
    mask_root = join(posixpath.dirname(dataset), mask_dir) if mask_dir else ""
    parts = [p for src in CTRATE_TABLES if (p := _ctrate_split(storage, dataset, src, mask_root)) is not None]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    if df.empty:
        raise ValueError(
            f"no CT-RATE studies under {root!r}: expected dataset/train/ or dataset/valid/ with "
            f"{CTRATE_TABLES['train'][0]}.csv and the other tables under dataset/ (point "
            "data.source_uri at the download root or at its dataset/ folder)"
        )
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
    for n, r in enumerate(raw.to_dict("records"), start=1):
        sid = _text(r["study_id"])
        if not STUDY_ID.match(sid):
            raise ValueError(
                f"manifest {uri!r} data row {n}: study_id {sid[:60]!r} is empty or malformed (want "
                "letters, digits, '.', '_', '-', starting with a letter or digit, at most 200 characters)")
        split = _SPLIT_ALIASES.get(_text(r["split"]).lower(), _text(r["split"]))  # invalid: kept raw
        image = _resolve(_text(r["image_uri"]), base)
        nifti = image.endswith(".nii") or image.endswith(".nii.gz")
        rows.append({
            "study_id": sid,
            "patient_id": _text(r.get("patient_id")) or sid,
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


def split_invalid_splits(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows with a known split, the others)``; the others get ``split = ""`` and their value
    in ``raw_split`` (for the quarantine detail). Both keep the manifest's order."""
    bad = ~df.split.isin(SPLITS)
    invalid = df[bad].assign(raw_split=df.split[bad], split="").reset_index(drop=True)
    return df[~bad].reset_index(drop=True), invalid


def split_excluded(df: pd.DataFrame, exclude: Iterable[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(kept rows, excluded rows, listed names not in the manifest)``.

    ``exclude`` holds study ids (CT-RATE VolumeNames, with or without ``.nii.gz``); every row of
    a listed study is excluded, duplicates included. Both frames keep the manifest's order.
    """
    wanted = {strip_ext(name.strip()) for name in exclude if name.strip()}
    hit = df.study_id.isin(wanted)
    unmatched = sorted(wanted - set(df.study_id[hit]))
    return df[~hit].reset_index(drop=True), df[hit].reset_index(drop=True), unmatched


def check_patient_splits(df: pd.DataFrame) -> None:
    """Raise ValueError when a patient has studies in two splits (names study ids, not patients)."""
    df = df[df.split.isin(SPLITS)]  # rows with an invalid split are quarantined, not checked
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
