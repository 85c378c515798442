"""Manifest: CT-RATE's published layout (a hand-built tree and the synthetic corpus), .xlsx reports,
missing tables, exclusions, generic CSV, patient-disjoint splits, duplicates."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from ctvlp.diseases import CTRATE
from ctvlp.synthetic import generate_corpus
from ingest import manifest as mf
from ingest.storage import Storage
from tests.ingest.ctrate_tree import KNOWN_BAD, TABLES, VOLUMES, build_ctrate_tree, reports_to_xlsx


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


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """CT-RATE's published layout in miniature (tests/ingest/ctrate_tree.py): the download root."""
    return build_ctrate_tree(tmp_path_factory.mktemp("ctrate_published"))


def _ctrate(uri) -> pd.DataFrame:
    return mf.build_manifest(Storage(), str(uri), "ctrate", valid_fraction=0.5, seed=0)


@pytest.mark.parametrize("where", ["root", "root/", "dataset", "dataset/"])
def test_published_layout_from_root_or_dataset_dir(published, where):
    uri = str(published) + where.removeprefix("root")
    df = _ctrate(uri if where.startswith("root") else f"{published}/{where}")
    assert sorted(df.study_id) == sorted([*VOLUMES, KNOWN_BAD])
    by_id = df.set_index("study_id")
    for name, (split, findings, impression) in VOLUMES.items():
        row = by_id.loc[name]
        patient, study = name.rsplit("_", 2)[0], name.rsplit("_", 1)[0]
        assert row.image_uri == f"{published}/dataset/{split}/{patient}/{study}/{name}.nii.gz"
        assert row.mask_uri == f"{published}/masks/{split}/{patient}/{study}/{name}.nii.gz"
        assert (row.findings, row.impression) == (findings, impression)
        assert (row.split == "test") == (split == "valid") and row.patient_id == patient
        meta = json.loads(row.meta)
        assert meta["XYSpacing"] == "[0.9, 0.9]" and meta["RescaleIntercept"] == "-1024.0"
        assert list(json.loads(row.disease_labels)) == [d.name for d in CTRATE]  # all 18, CT-RATE order
    assert json.loads(by_id.loc["train_1_a_1"].disease_labels)["Cardiomegaly"] == 1
    pd.testing.assert_frame_equal(df, _ctrate(published))  # root and dataset/ give the same manifest


def test_published_layout_with_xlsx_reports(published, tmp_path):
    root = tmp_path / "download"
    shutil.copytree(published, root)
    reports_to_xlsx(root)
    assert not list((root / "dataset/radiology_text_reports").glob("*.csv"))
    got, want = _ctrate(root / "dataset"), _ctrate(published)
    pd.testing.assert_frame_equal(got.drop(columns=["image_uri", "mask_uri"]),
                                  want.drop(columns=["image_uri", "mask_uri"]))


@pytest.mark.parametrize("table", [0, 1, 2])
def test_missing_table_names_the_file(published, tmp_path, table):
    root = tmp_path / "download"
    shutil.copytree(published, root)
    rel = TABLES["valid"][table]
    (root / "dataset" / rel).unlink()
    with pytest.raises(FileNotFoundError, match=f"dataset/{rel}"):
        _ctrate(root)


def test_tables_beside_dataset_are_refused_with_the_fix(published, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(published, root)
    for folder in ("radiology_text_reports", "metadata", "multi_abnormality_labels"):
        shutil.move(root / "dataset" / folder, root / folder)
    with pytest.raises(FileNotFoundError, match="move radiology_text_reports/.*into dataset/"):
        _ctrate(root)


def test_no_ctrate_data_says_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match="no CT-RATE studies.*dataset/train/"):
        _ctrate(tmp_path)


def test_excluded_studies_are_split_out_by_volume_name(published):
    df = _ctrate(published)
    kept, excluded, unmatched = mf.split_excluded(df, [f"{KNOWN_BAD}.nii.gz", "train_2_a_1", "train_11755_a_3"])
    assert sorted(excluded.study_id) == sorted([KNOWN_BAD, "train_2_a_1"])
    assert unmatched == ["train_11755_a_3"] and len(kept) + len(excluded) == len(df)
    assert mf.split_excluded(df, [])[0].equals(df)


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


@pytest.mark.parametrize("bad_id", ["", "  ", "a/b", "../etc", "-x", "has space", "x" * 201])
def test_empty_or_malformed_study_id_rejected_naming_the_row(tmp_path, bad_id):
    rows = [{"study_id": "ok_1", "image_uri": "a.nii", "report": "r", "split": "train"},
            {"study_id": bad_id, "image_uri": "b.nii", "report": "r", "split": "train"}]
    with pytest.raises(ValueError, match="data row 2: study_id .* empty or malformed"):
        mf.build_manifest(Storage(), _csv(tmp_path, rows), "csv")


def test_invalid_split_is_set_aside_per_row(tmp_path):
    rows = [{"study_id": s, "image_uri": f"{s}.nii", "report": "r", "split": sp, "patient_id": "p1"}
            for s, sp in (("a", "train"), ("b", "training-set"), ("c", "TRAIN"))]
    df = mf.build_manifest(Storage(), _csv(tmp_path, rows), "csv")  # the patient check skips "b"
    good, bad = mf.split_invalid_splits(df)
    assert good.study_id.tolist() == ["a", "c"] and good.split.tolist() == ["train", "train"]
    assert bad.study_id.tolist() == ["b"] and bad.raw_split.tolist() == ["training-set"] and bad.split[0] == ""
