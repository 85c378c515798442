"""ctvlp.transforms.io: NIfTI by magic bytes, scaling, corrupt inputs, DICOM series round trip."""

from __future__ import annotations

import gzip
import random

import nibabel as nib
import numpy as np
import pytest

from ctvlp.transforms import array as A
from ctvlp.transforms import io
from ctvlp.transforms.validate import VolumeError

RNG = np.random.default_rng(1)
HU = RNG.integers(-1024, 1500, size=(8, 7, 6)).astype(np.int16)  # [X, Y, Z]
AFFINE = np.array([[-0.75, 0, 0, 180.0], [0, -0.8, 0, 150.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("compress", [True, False])
def test_read_nifti_bytes_and_path_round_trip(tmp_path, compress):
    blob = io.nifti_bytes(HU, AFFINE, compress=compress)
    assert (blob[:2] == b"\x1f\x8b") == compress
    path = tmp_path / ("v.nii.gz" if compress else "v.nii")
    path.write_bytes(blob)
    for src in (blob, path, str(path)):
        arr, aff, info = io.read_nifti(src)
        np.testing.assert_array_equal(arr, HU)
        np.testing.assert_allclose(aff, AFFINE, atol=1e-5)
        assert arr.dtype == np.int16 and info["axcodes"] == "LPS" and info["format"] == "nifti1"


def test_read_nifti_already_gunzipped_bytes_of_a_nii_gz(tmp_path):
    # Ray Data's read_binary_files gunzips *.nii.gz itself: the bytes arrive without the magic.
    arr, _, _ = io.read_nifti(gzip.decompress(io.nifti_bytes(HU, AFFINE)))
    np.testing.assert_array_equal(arr, HU)


def test_read_nifti_of_a_multi_member_gzip_stream():
    # gzip allows concatenated members (pigz, appended writes): every member is inflated
    raw = gzip.decompress(io.nifti_bytes(HU, AFFINE))
    arr, _, _ = io.read_nifti(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(arr, HU)
    with pytest.raises(VolumeError) as err:  # the second member cut short
        io.read_nifti(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])[:-20])
    assert err.value.kind == "truncated"


@pytest.mark.parametrize(
    "slope,inter,dtype",
    [(1.0, -1024.0, np.int16), (0.5, 10.0, np.float32), (2.0, 0.0, np.int16)],
)
def test_read_nifti_applies_scl_slope_inter(slope, inter, dtype):
    stored = RNG.integers(0, 2000, size=(4, 5, 6)).astype(np.int16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(slope, inter)
    arr, _, info = io.read_nifti(img.to_bytes())
    assert arr.dtype == dtype and info["stored_dtype"] == "int16"
    np.testing.assert_allclose(arr, stored.astype(np.float64) * slope + inter)


@pytest.mark.parametrize(
    "blob_fn,kind",
    [
        (lambda b: b[: len(b) // 2], "truncated"),  # truncated gzip
        (lambda b: gzip.decompress(b)[:400], "truncated"),  # header fine, voxels cut
        (lambda b: b"not a volume at all", "unreadable"),
        (lambda b: b[:2] + b"\x00" * 64, "unreadable"),  # gzip magic, corrupt stream
    ],
)
def test_read_nifti_corrupt_inputs(blob_fn, kind):
    with pytest.raises(VolumeError) as err:
        io.read_nifti(blob_fn(io.nifti_bytes(HU, AFFINE)))
    assert err.value.kind == kind


def test_read_nifti_squeezes_trailing_singleton_and_rejects_4d():
    arr, _, _ = io.read_nifti(io.nifti_bytes(HU[..., None], AFFINE))
    assert arr.shape == HU.shape
    with pytest.raises(VolumeError, match="not_3d"):
        io.read_nifti(io.nifti_bytes(np.stack([HU, HU], -1), AFFINE))
    with pytest.raises(VolumeError, match="not_3d"):
        io.read_nifti(io.nifti_bytes(HU[:, :, 0], AFFINE))


def test_dicom_series_round_trips_to_the_nifti_path():
    files = io.dicom_series_bytes(HU, AFFINE)
    random.Random(0).shuffle(files)  # the reader sorts by position, not by file order
    arr, aff, info = io.read_dicom_series(files)
    np.testing.assert_array_equal(arr, HU)
    np.testing.assert_allclose(aff, AFFINE, atol=1e-5)
    assert info["num_slices"] == HU.shape[2] and info["axcodes"] == "LPS"
    # Same canonical (D, H, W) volume and spacing as through NIfTI.
    n_arr, n_aff, _ = io.read_nifti(io.nifti_bytes(HU, AFFINE))
    c_dcm, s_dcm = A.to_canonical(arr, aff)
    c_nii, s_nii = A.to_canonical(n_arr, n_aff)
    np.testing.assert_array_equal(c_dcm, c_nii)
    np.testing.assert_allclose(s_dcm, s_nii, atol=1e-5)


def test_dicom_series_from_paths_and_oblique_orientation(tmp_path):
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = np.diag([-1, -1, 1]) @ rot @ np.diag([0.7, 0.7, 3.0])
    aff[:3, 3] = (10, 20, 30)
    paths = []
    for k, blob in enumerate(io.dicom_series_bytes(HU, aff)):
        paths.append(tmp_path / f"{k}.dcm")
        paths[-1].write_bytes(blob)
    arr, out_aff, _ = io.read_dicom_series(paths[::-1])
    np.testing.assert_array_equal(arr, HU)
    np.testing.assert_allclose(out_aff, aff, atol=1e-5)


def test_dicom_rejects_mr_missing_slices_and_junk():
    with pytest.raises(VolumeError, match="not CT: modality MR"):
        io.read_dicom_series(io.dicom_series_bytes(HU, AFFINE, modality="MR"))
    files = io.dicom_series_bytes(HU, AFFINE)
    with pytest.raises(VolumeError) as err:
        io.read_dicom_series(files[:2] + files[3:])  # a missing slice: gaps 2.5 and 5 mm
    assert err.value.kind == "missing_slices"  # read_dicom_series interpolates nothing
    with pytest.raises(VolumeError, match="unreadable"):
        io.read_dicom_series([b"junk"])
    with pytest.raises(VolumeError, match="unreadable"):
        io.read_dicom_series([])
