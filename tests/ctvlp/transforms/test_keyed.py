"""ctvlp.transforms.keyed: the row functions ingest calls, on a tiny phantom."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ctvlp.anatomy import CHEST, ts_total_ids
from ctvlp.transforms import array as A
from ctvlp.transforms import io
from ctvlp.transforms.keyed import VolumePrep, decode_row, map_rows, prepare_row, process_row

IDS = ts_total_ids()
AFFINE = np.diag([-1.6, -1.6, 4.0, 1.0])  # LPS-stored, like CT-RATE after repair
PREP = VolumePrep(
    spacing=(6.0, 3.2, 3.2), hu_window=(-1000.0, 1000.0), crop_margin=(1, 1, 1),
    min_size=(4, 8, 8), grouping=CHEST,
)


def _phantom():
    img = np.full((32, 30, 16), -1000, np.int16)  # [X, Y, Z]
    img[4:28, 4:26, 2:14] = 40
    img[10:12, 10:12, 5:7] = 700  # bone
    raw = np.zeros(img.shape, np.uint8)
    raw[6:14, 8:20, 4:12] = IDS["lung_upper_lobe_left"]
    raw[16:22, 10:16, 6:10] = IDS["heart"]
    raw[24:26, 5:7, 3:5] = IDS["liver"]  # not in the chest grouping: dropped
    return img, raw


def _row(**kw):
    img, raw = _phantom()
    row = {"study_id": "s1", "image": io.nifti_bytes(img, AFFINE), "mask": io.nifti_bytes(raw, AFFINE)}
    row.update(kw)
    return row


def test_process_row_matches_the_pure_functions():
    img, raw = _phantom()
    out = process_row(_row(), PREP)
    # The same chain, spelled out.
    c_img, sp = A.to_canonical(img, AFFINE)
    c_msk, _ = A.to_canonical(A.group_mask(raw, PREP.lut), AFFINE)
    r_img, new_sp = A.resample(c_img, sp, PREP.spacing)
    r_msk, _ = A.resample(c_msk, sp, PREP.spacing, mode="nearest")
    e_img, e_msk, off = A.crop_to_anatomies(A.hu_to_uint8(r_img, -1000, 1000), r_msk, (1, 1, 1), (4, 8, 8))
    np.testing.assert_array_equal(out["image"], e_img)
    np.testing.assert_array_equal(out["mask"], e_msk)
    boxes, counts = A.anatomy_boxes(e_msk, 4)
    np.testing.assert_array_equal(out["boxes"], boxes)
    np.testing.assert_array_equal(out["voxel_counts"], counts)
    assert out["image"].dtype == np.uint8 and out["mask"].dtype == np.uint8
    assert list(out["shape"]) == list(e_img.shape) and out["meta"]["crop_offset_DHW"] == list(off)
    np.testing.assert_allclose(out["spacing"], new_sp, rtol=1e-6)
    assert (counts[:2] > 0).all() and (counts[2:] == 0).all()  # lung, heart present; others absent
    assert "image_xyz" not in out and out["study_id"] == "s1"
    json.dumps(out["meta"])  # the meta column must be JSON-serialisable


def test_decode_row_repairs_header_and_rescales_from_meta():
    img, raw = _phantom()
    stored = (img.astype(np.int32) + 1024).astype(np.int16)  # CT-RATE stores raw values
    meta = {"XYSpacing": "[1.6, 1.6]", "ZSpacing": 4.0, "ImageOrientationPatient": "[1,0,0,0,1,0]",
            "ImagePositionPatient": "[0, 0, 0]", "RescaleSlope": 1, "RescaleIntercept": -1024}
    row = {"image": io.nifti_bytes(stored, np.eye(4)), "mask": io.nifti_bytes(raw, np.eye(4)), "meta": json.dumps(meta)}
    prep = dataclasses.replace(PREP, repair_headers=True)
    out = decode_row(row, prep)
    np.testing.assert_array_equal(out["image_xyz"], img)
    np.testing.assert_allclose(out["affine"], AFFINE)
    assert out["source"]["header_repaired"] and out["mask_xyz"] is not None


def test_map_rows_quarantines_bad_rows_and_keeps_good_ones():
    img, raw = _phantom()
    bad_nan = io.nifti_bytes(np.full((8, 8, 8), np.nan, np.float32), AFFINE)
    rows = [
        _row(),
        _row(study_id="junk", image=b"junk"),
        _row(study_id="nan", image=bad_nan, mask=None),
        _row(study_id="nomask", mask=None),
        _row(study_id="shifted", mask=io.nifti_bytes(raw, AFFINE + np.eye(4) * 0.5)),
        _row(study_id="empty", mask=io.nifti_bytes(np.zeros_like(raw), AFFINE)),
    ]
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    out = map_rows(batch, lambda r: process_row(r, PREP))
    assert out["error_kind"] == ["", "unreadable", "nonfinite", "empty_mask", "mask_mismatch", "empty_mask"]
    assert out["study_id"] == ["s1", "junk", "nan", "nomask", "shifted", "empty"]
    assert out["image"][0].dtype == np.uint8 and out["boxes"][0].shape == (4, 6)


def test_prepare_row_needs_a_mask():
    with pytest.raises(ValueError, match="no mask"):
        prepare_row(decode_row(_row(mask=None), PREP), PREP)
