"""ingest.process in one process (no Ray): every quarantine reason from its planted input, the
geometry record of written studies, and unreadable reports written with unknown labels.

The same fault corpus goes through Ray Data end to end in tests/ingest/test_pipeline_s3.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ctvlp.data import decode_sample
from ingest import manifest as mf
from ingest.process import process_records
from ingest.quarantine import REASONS
from ingest.reports import ReportConfig
from ingest.storage import Storage
from tests.ingest.corpus import FAULTS, OBLIQUE_SMALL_DEG, UNREADABLE_REPORTS, tiny_stage

# Reasons decided before decoding, by the pipeline's driver (tests/ingest/test_pipeline_s3.py)
# or only for unexpected failures: every other reason must have a planted input here.
NOT_IN_THE_STAGE = {"invalid_split", "duplicate_study_id", "excluded", "processing_error"}
# Planted where their setting is not the default: ingest.dicom.gantry_tilt=quarantine
# (tests/ctvlp/transforms/test_dicom.py), a failing TotalSegmentator actor (tests/ingest/test_segment.py).
PLANTED_ELSEWHERE = {"gantry_tilt", "segmentation_failed"}


@pytest.fixture(scope="module")
def records(fault_corpus):
    root, _ = fault_corpus
    df = mf.build_manifest(Storage(), str(root / "manifest.csv"), "csv")
    df, _ = mf.split_duplicates(df)
    df, _ = mf.split_invalid_splits(df)
    return {r["study_id"]: r for r in df.to_dict("records")}


@pytest.fixture(scope="module")
def outputs(records):
    return {r["study_id"]: r for r in process_records(list(records.values()), tiny_stage())}


def test_every_reason_has_a_planted_input():
    assert set(FAULTS.values()) | NOT_IN_THE_STAGE | PLANTED_ELSEWHERE == set(REASONS)


STAGE_FAULTS = sorted((s, r) for s, r in FAULTS.items() if r not in NOT_IN_THE_STAGE)


@pytest.mark.parametrize("study_id,reason", STAGE_FAULTS)
def test_reason_table(outputs, study_id, reason):
    row = outputs[study_id]
    assert (row["status"], row["reason"]) == ("quarantined", reason), row["detail"]
    assert row["detail"]  # a precise, text-free detail


def test_written_studies_record_obliquity(outputs):
    written = {s: r for s, r in outputs.items() if r["status"] == "ok"}
    assert set(written) == {f"g{i}" for i in range(6)} | {"g_dicom", "g_oblique"}
    import json

    angles = {s: json.loads(r["meta"])["oblique_deg"] for s, r in written.items()}
    assert angles["g_oblique"] == pytest.approx(OBLIQUE_SMALL_DEG, abs=0.01)
    assert max(a for s, a in angles.items() if s != "g_oblique") < 0.01


def test_unreadable_reports_written_unknown_and_left_out(records):
    """report_unreadable=unknown: the study is written with every label -1 and no text, and
    decode_sample leaves every anatomy out (no box, no voxels, abnormal 0, label_known False)."""
    cfg = dataclasses.replace(tiny_stage(), reports=ReportConfig(unreadable="unknown"))
    recs = [records[s] for s in UNREADABLE_REPORTS] + [records["g0"]]
    rows = process_records(recs, cfg)
    assert [r["status"] for r in rows] == ["ok"] * len(recs)
    for row in rows[:-1]:
        assert row["abnormal"] == [-1, -1, -1, -1] and row["texts"] == ["", "", "", ""]
        sample = decode_sample(row)
        assert not sample["label_known"].any() and not sample["mask"].any()
        assert (sample["boxes"] == -1).all() and (sample["voxel_counts"] == 0).all()
        assert (sample["abnormal"] == 0).all()
    good = decode_sample(rows[-1])
    assert good["label_known"].all() and good["abnormal"].tolist() == [0, 1, 0, 0]


def test_uncertain_anatomy_unknown_under_the_policy(records):
    """report_uncertainty=unknown: only the hedged anatomy is -1 and left out of the sample."""
    rec = dict(records["g0"], findings="Possible small left pleural effusion. Mild cardiomegaly.", impression="")
    cfg = dataclasses.replace(tiny_stage(), reports=ReportConfig(uncertainty="unknown"))
    row = process_records([rec], cfg)[0]
    assert row["abnormal"] == [-1, 1, 0, 0]
    sample = decode_sample(row)
    assert sample["label_known"].tolist() == [False, True, True, True]
    assert not (sample["mask"] == 1).any() and (sample["mask"] == 2).any()
    assert np.array_equal(sample["abnormal"], [0, 1, 0, 0])


def _phantom(order: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume and a raw TotalSegmentator mask ``[X, Y, Z]`` with the chest grouping's
    classes (lung lobes 10-14, esophagus 15, heart 51, aorta 52) and a class outside it (5)."""
    shape = (46, 40, 34)
    image = rng.integers(-1100, 400, shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    for label in (10, 12, 14, 15, 51, 52, 5):
        lo = [int(rng.integers(2, n // 2)) for n in shape]
        hi = [a + int(rng.integers(3, n // 2)) for a, n in zip(lo, shape)]
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = label
    return (np.asfortranarray(image), np.asfortranarray(mask)) if order == "F" else (image, mask)


_AFFINES = {  # voxel -> RAS: as stored by different scanners and converters
    "RAS": np.diag([0.8, 0.9, 2.0, 1.0]),
    "LPS": np.diag([-0.8, -0.9, 2.0, 1.0]),
    "SAR (permuted, flipped)": np.array([[0, 0, -0.7, 0], [0, 1.1, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("orient", sorted(_AFFINES))
@pytest.mark.parametrize("min_size", [(12, 20, 20), (40, 64, 64)])  # the second pads every axis
def test_transform_equals_the_reference_resample_then_crop(orient, order, min_size):
    """The current transform (grouping after nearest resampling, one box pass, the relevance-lookup
    window, the separable trilinear pass with the HU window folded in) gives the merge base's
    shards: masks, boxes and counts voxel for voxel, the image within 1 uint8 level (float
    rounding at .5: measured at most 1.5e-4 of the voxels of these random phantoms)."""
    from ingest.process import transform
    from tests.ingest import reference

    cfg = dataclasses.replace(tiny_stage(), min_size=min_size)
    for seed in range(3):
        image, mask = _phantom(order, np.random.default_rng(seed))
        new, old = transform(image, _AFFINES[orient], mask, cfg), reference.transform(image, _AFFINES[orient], mask, cfg)
        assert new["image"].shape == old["image"].shape and new["image"].flags.c_contiguous
        diff = np.abs(new["image"].astype(int) - old["image"].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.999 and np.array_equal(new["mask"], old["mask"])
        assert np.array_equal(new["boxes"], old["boxes"]) and np.array_equal(new["counts"], old["counts"])
        assert new["spacing"] == old["spacing"]


def test_nifti_voxels_are_a_view_of_the_decompressed_bytes():
    from ctvlp.transforms import io

    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    for compress in (True, False):
        array, _, _ = io.read_nifti(io.nifti_bytes(vol, np.eye(4), compress=compress))
        assert np.array_equal(array, vol) and not array.flags.writeable  # no copy was made
    big_endian = io.nifti_bytes(vol.astype(">i2"), np.eye(4), compress=False)
    array, _, _ = io.read_nifti(big_endian)
    assert np.array_equal(array, vol) and array.dtype.isnative
