"""Layout, CSV columns, header modes, orientation geometry and determinism of written corpora."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctvlp.diseases import SYNTHETIC
from ctvlp.synthetic import generate_corpus
from ctvlp.synthetic.__main__ import main
from ctvlp.synthetic.writer import ORIENTATIONS, affine_from_geometry, dicom_geometry, orient, quantize

# CT-RATE as published: every table under dataset/ (Hugging Face ibrahimhamamci/CT-RATE)
CTRATE_FILES = [
    "dataset/radiology_text_reports/train_reports.csv", "dataset/radiology_text_reports/validation_reports.csv",
    "dataset/metadata/train_metadata.csv", "dataset/metadata/validation_metadata.csv",
    "dataset/multi_abnormality_labels/train_predicted_labels.csv",
    "dataset/multi_abnormality_labels/valid_predicted_labels.csv",
]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cli_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    assert main(["--out", str(root), "--num-studies", "12", "--seed", "3"]) == 0
    return root


def test_cli_writes_ctrate_layout(cli_corpus):
    for rel in CTRATE_FILES:
        assert (cli_corpus / rel).is_file(), rel
    assert sorted(p.name for p in cli_corpus.iterdir()) == ["corpus.json", "dataset", "masks"]
    summary = json.loads((cli_corpus / "corpus.json").read_text())
    assert summary["splits"]["test"]["written_as"] == "valid" and summary["num_studies"] == 12
    volumes = sorted((cli_corpus / "dataset").rglob("*.nii.gz"))
    assert volumes and all(p.parts[-4] in ("train", "valid") for p in volumes)
    for p in volumes:  # dataset/<split>/<patient>/<study>/<volume>.nii.gz, CT-RATE names
        split, patient, study, name = p.parts[-4:]
        assert patient.startswith(split + "_") and study.startswith(patient + "_") and name.startswith(study + "_")
        assert (cli_corpus / "masks" / split / patient / study / name).is_file()
    meta = pd.read_csv(cli_corpus / "dataset/metadata/train_metadata.csv")
    for col in ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing",
                "ImageOrientationPatient", "ImagePositionPatient", "Rows", "Columns"):
        assert col in meta.columns
    labels = pd.read_csv(cli_corpus / "dataset/multi_abnormality_labels/train_predicted_labels.csv")
    assert list(labels.columns) == ["VolumeName", *[d.name for d in SYNTHETIC]]
    assert set(np.unique(labels.iloc[:, 1:].to_numpy())) <= {0, 1}
    reports = pd.read_csv(cli_corpus / "dataset/radiology_text_reports/train_reports.csv")
    assert list(reports.columns) == ["VolumeName", "Findings_EN", "Impressions_EN"]
    assert set(reports.VolumeName) == set(meta.VolumeName) == set(labels.VolumeName)


def test_same_seed_same_bytes_other_seed_differs(cli_corpus, tmp_path):
    generate_corpus(tmp_path / "a", 12, seed=3, workers=2)  # workers do not change the bytes
    assert _digest(tmp_path / "a") == _digest(cli_corpus)
    generate_corpus(tmp_path / "b", 12, seed=4)
    assert _digest(tmp_path / "b") != _digest(cli_corpus)


def test_stored_values_need_metadata_rescale(cli_corpus):
    meta = pd.read_csv(cli_corpus / "dataset/metadata/train_metadata.csv").iloc[0]
    p = next((cli_corpus / "dataset/train").rglob(meta.VolumeName))
    img = nib.load(p)
    stored = np.asarray(img.dataobj.get_unscaled())
    assert stored.dtype == np.int16 and img.shape == (meta.Columns, meta.Rows, meta.NumberofSlices)
    hu = stored * meta.RescaleSlope + meta.RescaleIntercept
    assert -1100 < np.percentile(hu, 1) < -900 and 1000 > np.median(hu) > -1100 and hu.max() > 150


def test_ctrate_headers_and_three_way_layout(tmp_path):
    generate_corpus(tmp_path, 10, seed=1, layout="three-way", ctrate_headers=True)
    for stem in ("train", "validation", "test"):
        assert (tmp_path / f"dataset/radiology_text_reports/{stem}_reports.csv").is_file()
    for stem in ("train", "valid", "test"):
        assert (tmp_path / f"dataset/multi_abnormality_labels/{stem}_predicted_labels.csv").is_file()
    meta = pd.read_csv(tmp_path / "dataset/metadata/test_metadata.csv").iloc[0]
    img = nib.load(next((tmp_path / "dataset/test").rglob(meta.VolumeName)))
    assert np.allclose(img.affine, np.eye(4))  # wrong on purpose: the truth is in the CSV
    assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0  # raw stored values
    assert ast.literal_eval(meta.XYSpacing)[0] > 5.0  # the CSV has the real (coarse) spacing


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_orientation_round_trips_through_dicom_geometry(codes):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-120.0, -80.5, -600.0]
    stored, oriented = orient(data, affine, codes)
    assert nib.aff2axcodes(oriented) == codes
    geo = dicom_geometry(oriented)
    assert np.allclose(geo["_affine"], oriented, atol=1e-3)
    row_col = np.array(ast.literal_eval(geo["ImageOrientationPatient"]))
    rebuilt = affine_from_geometry(row_col[:3], row_col[3:], np.array([*ast.literal_eval(geo["XYSpacing"]), geo["ZSpacing"]]),
                                   np.array(ast.literal_eval(geo["ImagePositionPatient"])))
    assert np.allclose(rebuilt, oriented, atol=1e-3)
    back = nib.as_closest_canonical(nib.Nifti1Image(stored, rebuilt))
    assert np.array_equal(np.asarray(back.dataobj), data)  # the same voxels in RAS order


def test_quantize_inverts_rescale():
    hu = np.array([-1024.0, -1000.2, 0.4, 40.0, 3071.0, 5000.0])
    for slope, inter in ((1.0, -1024.0), (0.5, -1000.0), (1.0, 0.0)):
        stored = quantize(hu, slope, inter)
        assert stored.dtype == np.int16
        assert np.allclose(stored * slope + inter, np.clip(hu, -1024, 3071), atol=slope / 2 + 1e-6)
