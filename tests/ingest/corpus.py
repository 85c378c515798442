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
    "f_missing_object": "unreadable",
    "f_garbage": "unreadable",
    "f_dicom_mr": "not_ct",
}
NUM_GOOD = 6  # g0..g5, plus the DICOM study "g_dicom"


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
    files = dicom_series_bytes(img, aff)
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
    add("f_missing_object", None, good_mask, image_name="images/does_not_exist.nii.gz")
    add("f_garbage", b"this is not a volume at all" * 20, good_mask)
    mr = dicom_series_bytes(img, aff, modality="MR")
    for k, b in enumerate(mr):
        _write(root / f"dicom/f_dicom_mr/slice{k:03d}.dcm", b)
    add("f_dicom_mr", None, good_mask, image_name="dicom/f_dicom_mr/")
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


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
    )
