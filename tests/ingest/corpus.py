"""A tiny ingest corpus with every fault planted, as local files plus a manifest CSV.

The corpus is made here (not by ``ctvlp.synthetic``) so that each fault is planted exactly and the
expected quarantine reason is known per study; the slow test runs the synthetic CT-RATE corpus.
Volumes are ~32^3 int16 HU phantoms with TotalSegmentator ids for the chest grouping (lung lobes,
heart, esophagus, aorta); masks share the image's affine.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from ctvlp import anatomy
from ctvlp.transforms.io import dicom_series_bytes, nifti_bytes
from ingest.process import StageConfig

TS = anatomy.ts_total_ids()
REPORT = ("Findings: The lungs are clear. Heart size is enlarged. No pleural effusion.",
          "Cardiomegaly.")
# study id -> expected quarantine reason; every other manifest row is written.
FAULTS = {
    "f_truncated": "truncated",
    "f_not3d": "not_3d",
    "f_nan": "nonfinite",
    "f_notct": "not_ct",
    "f_spacing": "bad_spacing",
    "f_emptymask": "empty_mask",
    "f_misaligned": "mask_mismatch",
    "f_noreport": "missing_report",
    "f_nomask": "missing_mask",
    "f_missing_object": "unreadable",
    "f_garbage": "unreadable",
    "f_dicom_mr": "not_ct",
    # issue 21: precise reasons for bad scans, and unreadable reports
    "f_two_slices": "too_small",
    "f_narrow_fov": "too_small",
    "f_zero_spacing": "bad_spacing",
    "f_dicom_zero_spacing": "bad_spacing",
    "f_oblique": "oblique",
    "f_mask_labels": "mask_labels",
    "f_bad_split": "invalid_split",
    "f_report_dot": "report_unparsed",
    "f_report_german": "report_unparsed",
    "f_report_no_anatomy": "report_unparsed",
    # issue 20: DICOM as hospitals store it (more cases: tests/ctvlp/transforms/test_dicom.py)
    "f_dicom_localizer_only": "dicom_series",
    "f_dicom_missing_slices": "missing_slices",
}
# Identifying DICOM tags (PS3.15 basic profile) written into every DICOM study of the corpus: none
# of these values may reach shards, indexes, quarantine rows or logs.
PHI = {"PatientName": "Canary^Phileas", "PatientID": "PID-9731-CANARY", "PatientBirthDate": "19450203",
       "AccessionNumber": "ACC-CANARY-55", "InstitutionName": "Canary General Hospital",
       "ReferringPhysicianName": "Dr^Canary", "StudyDate": "20240229", "StudyID": "STUDY-CANARY",
       "SeriesDescription": "CHEST CANARY PROTOCOL", "OperatorsName": "Tech^Canary"}
NUM_GOOD = 6  # g0..g5, plus the DICOM study "g_dicom" and the slightly oblique "g_oblique"
OBLIQUE_SMALL_DEG, OBLIQUE_LARGE_DEG = 3.0, 20.0
UNREADABLE_REPORTS = {  # study id -> (findings, impression)
    "f_report_dot": (".", ""),
    "f_report_german": ("Raumforderung von 3 cm im rechten Oberlappen der Lunge, verdaechtig auf "
                        "Malignitaet. Kein Pleuraerguss.", "Verdacht auf Bronchialkarzinom."),
    "f_report_no_anatomy": ("Liver cyst. Degenerative changes of the spine.", "No acute findings."),
}


def zero_spacing_nifti(array_xyz: np.ndarray) -> bytes:
    """A NIfTI whose only geometry is pixdim (no qform, no sform) with a zero slice spacing: what
    a broken converter writes. nibabel refuses to write one, so pixdim[3] is patched in the bytes."""
    import gzip
    import struct

    import nibabel as nib

    img = nib.Nifti1Image(array_xyz, None)
    img.header.set_zooms((0.9, 0.9, 2.5))
    raw = bytearray(img.to_bytes())
    raw[76 + 3 * 4 : 76 + 4 * 4] = struct.pack("<f", 0.0)  # pixdim[3] (little-endian float32)
    return gzip.compress(bytes(raw), compresslevel=1)


def tilted(affine: np.ndarray, degrees: float) -> np.ndarray:
    """``affine`` rotated by ``degrees`` about the world x axis (an oblique acquisition)."""
    t = np.radians(degrees)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rot @ affine


def phantom(seed: int, shape=(32, 30, 24)) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU [X, Y, Z], raw TS-id mask uint8 [X, Y, Z]) with all 4 chest anatomies."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, -1000, np.int16)
    x, y, z = shape
    img[3 : x - 3, 3 : y - 3, 1 : z - 1] = 30
    img += rng.integers(-15, 15, shape).astype(np.int16)
    img[x // 2, y // 2, z // 2] = 800  # bone-like voxel: a plausible CT range
    mask = np.zeros(shape, np.uint8)
    o = int(rng.integers(0, 3))
    mask[5 + o : 13 + o, 5:25, 3:20] = TS["lung_upper_lobe_left"]
    mask[17:27, 5:25, 3:20] = TS["lung_lower_lobe_right"]
    mask[14:17, 10:18, 6:16] = TS["heart"]
    mask[14:16, 20:22, 2:22] = TS["esophagus"]
    mask[18:20, 12:14, 2:22] = TS["aorta"]
    return img, mask


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_fault_corpus(root: Path) -> list[dict[str, str]]:
    """Write the corpus under ``root``; returns the manifest rows (also written as manifest.csv)."""
    aff = np.diag([0.9, 0.9, 2.5, 1.0])
    rows = []

    def add(sid, img_bytes=None, mask_bytes=None, report=REPORT, split="train", patient=None,
            image_name=None):
        image_name = image_name or f"images/{sid}.nii.gz"
        if img_bytes is not None:
            _write(root / image_name, img_bytes)
        mask_name = f"masks/{sid}.nii.gz" if mask_bytes is not None else ""
        if mask_bytes is not None:
            _write(root / mask_name, mask_bytes)
        rows.append({"study_id": sid, "patient_id": patient or f"p_{sid}", "split": split,
                     "image_uri": image_name, "mask_uri": mask_name,
                     "findings": report[0], "impression": report[1]})

    for i in range(NUM_GOOD):
        img, mask = phantom(i)
        add(f"g{i}", nifti_bytes(img, aff), nifti_bytes(mask, aff),
            split=["train", "train", "train", "valid", "test", "test"][i], patient=f"p{i // 2}_{i}")
    img, mask = phantom(100)
    files = dicom_series_bytes(img, aff, tags=PHI)
    for k, b in enumerate(files):
        _write(root / f"dicom/g_dicom/slice{k:03d}.dcm", b)
    add("g_dicom", None, nifti_bytes(mask, aff), image_name="dicom/g_dicom/")
    add("g_dicom", None, None, image_name="dicom/g_dicom/")  # duplicate id -> quarantined

    img, mask = phantom(7)
    good_img, good_mask = nifti_bytes(img, aff), nifti_bytes(mask, aff)
    add("f_truncated", good_img[: len(good_img) // 2], good_mask)
    add("f_not3d", nifti_bytes(img[:, :, :1].squeeze()[..., None, None].repeat(2, -1), aff), good_mask)
    add("f_nan", nifti_bytes(np.where(mask > 0, np.nan, img.astype(np.float32)), aff), good_mask)
    add("f_notct", nifti_bytes((img // 10 + 200).astype(np.int16), aff), good_mask)
    big = np.diag([0.9, 0.9, 45.0, 1.0])
    add("f_spacing", nifti_bytes(img, big), nifti_bytes(mask, big))
    add("f_emptymask", good_img, nifti_bytes(np.where(mask > 0, TS["liver"], 0).astype(np.uint8), aff))
    add("f_misaligned", good_img, nifti_bytes(mask[:-2], aff))
    add("f_noreport", good_img, good_mask, report=("", ""))
    add("f_nomask", good_img, None)
    add("f_missing_object", None, good_mask, image_name="images/does_not_exist.nii.gz")
    add("f_garbage", b"this is not a volume at all" * 20, good_mask)
    mr = dicom_series_bytes(img, aff, modality="MR")
    for k, b in enumerate(mr):
        _write(root / f"dicom/f_dicom_mr/slice{k:03d}.dcm", b)
    add("f_dicom_mr", None, good_mask, image_name="dicom/f_dicom_mr/")
    _add_issue21_faults(root, add, img, mask, aff)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def _zero_pixel_spacing(dicom: bytes) -> bytes:
    """One DICOM slice with PixelSpacing 0 \\ 0."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom))
    ds.PixelSpacing = [0.0, 0.0]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _add_issue21_faults(root: Path, add, img: np.ndarray, mask: np.ndarray, aff: np.ndarray) -> None:
    """Bad scans with a precise reason, a slightly oblique good scan, unreadable reports."""
    add("f_two_slices", nifti_bytes(img[:, :, 10:12], aff), nifti_bytes(mask[:, :, 10:12], aff))
    add("f_narrow_fov", nifti_bytes(img[:12], aff), nifti_bytes(mask[:12], aff))
    add("f_zero_spacing", zero_spacing_nifti(img), zero_spacing_nifti(mask))
    for k, b in enumerate(dicom_series_bytes(img, aff)):
        _write(root / f"dicom/f_dicom_zero_spacing/slice{k:03d}.dcm", _zero_pixel_spacing(b))
    add("f_dicom_zero_spacing", None, nifti_bytes(mask, aff), image_name="dicom/f_dicom_zero_spacing/")
    for sid, deg in (("g_oblique", OBLIQUE_SMALL_DEG), ("f_oblique", OBLIQUE_LARGE_DEG)):
        add(sid, nifti_bytes(img, tilted(aff, deg)), nifti_bytes(mask, tilted(aff, deg)))
    add("f_mask_labels", nifti_bytes(img, aff), nifti_bytes(np.where(mask > 0, 200, 0).astype(np.uint8), aff))
    add("f_bad_split", nifti_bytes(img, aff), nifti_bytes(mask, aff), split="training-set")
    for sid, report in UNREADABLE_REPORTS.items():
        add(sid, nifti_bytes(img, aff), nifti_bytes(mask, aff), report=report)
    scouts = dicom_series_bytes(img[:, :, :3], aff, tags={**PHI, "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    for k, b in enumerate(scouts):
        _write(root / f"dicom/f_dicom_localizer_only/slice{k:03d}.dcm", b)
    add("f_dicom_localizer_only", None, nifti_bytes(mask, aff), image_name="dicom/f_dicom_localizer_only/")
    for k, b in enumerate(dicom_series_bytes(img, aff, tags=PHI)):
        if not 8 <= k < 11:  # three slices lost: a 4-slice gap
            _write(root / f"dicom/f_dicom_missing_slices/slice{k:03d}.dcm", b)
    add("f_dicom_missing_slices", None, nifti_bytes(mask, aff), image_name="dicom/f_dicom_missing_slices/")


def upload_dir(s3_client, local: Path, bucket: str, prefix: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local)}", Body=p.read_bytes())


def tiny_stage(storage=None) -> StageConfig:
    from ingest.storage import Storage

    return StageConfig(
        grouping=anatomy.CHEST, spacing=(3.0, 1.5, 1.5), hu_window=(-1150.0, 350.0),
        crop_margin=(1, 2, 2), min_size=(12, 20, 20), codec="zstd", codec_level=3,
        text_name_or_path="tiny", max_length=64, storage=storage or Storage(),
        # the phantoms are ~29 x 27 x 60 mm: the spec's defaults are for real chest CT
        min_slices=8, min_extent_mm=(20.0, 20.0, 20.0), max_oblique_deg=5.0,
    )
