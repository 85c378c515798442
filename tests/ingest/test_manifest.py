"""Manifest: CT-RATE layout (synthetic corpus), generic CSV, patient-disjoint splits, duplicates."""

from __future__ import annotations

import pandas as pd
import pytest

from ctvlp.synthetic import generate_corpus
from ingest import manifest as mf
from ingest.storage import Storage


@pytest.fixture(scope="module")
def ctrate_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctrate")
    generate_corpus(root, num_studies=8, seed=3, preset="tiny")
    return root


def test_ctrate_layout_builds_manifest(ctrate_root):
    df = mf.build_manifest(Storage(), str(ctrate_root), "ctrate", valid_fraction=0.3, seed=0)
    assert list(df.columns) == mf.COLUMNS
    assert set(df.split) <= {"train", "valid", "test"} and {"train", "valid", "test"} <= set(df.split)
    # CT-RATE's own valid split becomes test; valid is carved from train patients.
    assert (df[df.study_id.str.startswith("valid_")].split == "test").all()
    assert (df[df.split == "valid"].patient_id.str.startswith("train_")).all()
    row = df.iloc[0]
    assert row.image_uri.endswith(f"{row.study_id}.nii.gz") and "/masks/" in row.mask_uri
    assert row.findings and row.meta != "{}" and row.disease_labels != "{}"


def test_valid_carve_is_seeded_and_patient_disjoint(ctrate_root):
    a = mf.build_manifest(Storage(), str(ctrate_root), "ctrate", valid_fraction=0.3, seed=5)
    b = mf.build_manifest(Storage(), str(ctrate_root), "ctrate", valid_fraction=0.3, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("patient_id").split.nunique().max() == 1


def _csv(tmp_path, rows):
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_generic_csv_resolves_uris_and_formats(tmp_path):
    rows = [
        {"study_id": "a", "image_uri": "img/a.nii.gz", "mask_uri": "m/a.nii.gz", "report": "Normal.",
         "split": "train", "patient_id": "p1"},
        {"study_id": "b", "image_uri": "s3://bkt/dicom/b/", "mask_uri": "", "report": "x",
         "split": "validation", "patient_id": "p2"},
    ]
    df = mf.build_manifest(Storage(), _csv(tmp_path, rows), "csv")
    assert df.image_format.tolist() == ["nifti", "dicom"]
    assert df.image_uri[0] == f"{tmp_path}/img/a.nii.gz" and df.image_uri[1] == "s3://bkt/dicom/b/"
    assert df.split.tolist() == ["train", "valid"] and df.findings[0] == "Normal."


def test_patient_in_two_splits_is_refused_without_naming_patient(tmp_path):
    rows = [{"study_id": s, "image_uri": f"{s}.nii", "report": "r", "split": sp, "patient_id": "secret-77"}
            for s, sp in (("a", "train"), ("b", "test"))]
    with pytest.raises(ValueError, match="more than one split") as err:
        mf.build_manifest(Storage(), _csv(tmp_path, rows), "csv")
    assert "secret-77" not in str(err.value) and "'a'" in str(err.value)


@pytest.mark.parametrize("missing", ["study_id", "split", "image_uri"])
def test_missing_columns_fail(tmp_path, missing):
    row = {"study_id": "a", "image_uri": "a.nii", "report": "r", "split": "train"}
    del row[missing]
    with pytest.raises(ValueError, match=missing):
        mf.build_manifest(Storage(), _csv(tmp_path, [row]), "csv")


def test_duplicates_split_keeps_first():
    df = pd.DataFrame({"study_id": ["a", "b", "a", "a"], "split": ["train"] * 4})
    first, dups = mf.split_duplicates(df)
    assert first.study_id.tolist() == ["a", "b"] and dups.study_id.tolist() == ["a", "a"]
