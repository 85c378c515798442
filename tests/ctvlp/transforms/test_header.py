"""ctvlp.transforms.header: CT-RATE metadata -> affine, by formula."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.transforms.header import parse_numbers, repair_header, rescale_from_meta

CTRATE_ROW = {
    "XYSpacing": "[0.75, 0.75]",
    "ZSpacing": 1.5,
    "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
    "ImagePositionPatient": "[-187.5, -170.0, -320.25]",
    "RescaleSlope": 1.0,
    "RescaleIntercept": -1024.0,
}


def test_repair_header_ctrate_axis_aligned_formula():
    wrong = np.eye(4)  # CT-RATE headers: unit spacing, no origin
    out = repair_header(wrong, (512, 512, 300), CTRATE_ROW)
    # LPS columns (0.75 x, 0.75 y, 1.5 z) at IPP, then x and y negated for RAS.
    expected = np.array(
        [[-0.75, 0, 0, 187.5], [0, -0.75, 0, 170.0], [0, 0, 1.5, -320.25], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(out, expected)


def test_repair_header_oblique_cosines_are_columns():
    c, s = np.cos(0.2), np.sin(0.2)
    row = dict(CTRATE_ROW, ImageOrientationPatient=[c, s, 0, -s, c, 0], XYSpacing="[0.5, 0.6]")
    out = repair_header(np.eye(4), (4, 4, 4), row)
    lps = np.diag([-1, -1, 1, 1]) @ out
    np.testing.assert_allclose(lps[:3, 0], [0.5 * c, 0.5 * s, 0])
    np.testing.assert_allclose(lps[:3, 1], [-0.6 * s, 0.6 * c, 0])
    np.testing.assert_allclose(lps[:3, 2], [0, 0, 1.5])


def test_repair_header_keeps_what_the_row_lacks():
    current = np.diag([-0.9, -0.9, 2.0, 1.0])
    current[:3, 3] = (1, 2, 3)
    out = repair_header(current, (4, 4, 4), {"ZSpacing": "5", "XYSpacing": float("nan")})
    expected = current.copy()
    expected[2, 2] = 5.0
    np.testing.assert_allclose(out, expected)
    with pytest.raises(ValueError, match="3D"):
        repair_header(current, (4, 4), {})


@pytest.mark.parametrize(
    "cell,n,expected",
    [("[0.75, 0.75]", 2, [0.75, 0.75]), ("0.7\\0.7", 2, [0.7, 0.7]), ([1, 2], 2, [1.0, 2.0]), (1.5, 1, [1.5]), ("2.5", 1, [2.5])],
)
def test_parse_numbers_formats(cell, n, expected):
    assert parse_numbers(cell, n) == expected


def test_parse_numbers_rejects_bad_cells():
    with pytest.raises(ValueError, match="needs 2"):
        parse_numbers("[1, 2, 3]", 2, "XYSpacing")
    with pytest.raises(ValueError, match="parse"):
        parse_numbers("[1, 2", 2, "XYSpacing")


def test_rescale_from_meta_defaults():
    assert rescale_from_meta(CTRATE_ROW) == (1.0, -1024.0)
    assert rescale_from_meta({}) == (1.0, 0.0)
    assert rescale_from_meta({"RescaleSlope": "nan", "RescaleIntercept": "-1000"}) == (1.0, -1000.0)


def test_repair_recovers_the_synthetic_ctrate_headers(tmp_path):
    """The synthetic corpus with --ctrate-headers stores wrong headers (truth only in the metadata
    CSV); repair + rescale must give the same canonical volume as the correct-header corpus."""
    import subprocess
    import sys

    import pandas as pd

    from ctvlp.transforms import apply_rescale, read_nifti, to_canonical

    for name, extra in (("good", []), ("ctrate", ["--ctrate-headers"])):
        cmd = [sys.executable, "-m", "ctvlp.synthetic", "--out", str(tmp_path / name), "--num-studies", "2", "--seed", "5"]
        subprocess.run(cmd + extra, check=True, capture_output=True)
    meta = pd.concat(pd.read_csv(p) for p in (tmp_path / "ctrate" / "dataset" / "metadata").glob("*.csv")).set_index("VolumeName")
    volumes = sorted((tmp_path / "good" / "dataset").rglob("*.nii.gz"))
    assert volumes
    for good in volumes:
        bad = tmp_path / "ctrate" / good.relative_to(tmp_path / "good")
        row = meta.loc[good.name].to_dict()
        ref, ref_aff, _ = read_nifti(good)
        raw, wrong_aff, _ = read_nifti(bad)
        fixed_aff = repair_header(wrong_aff, raw.shape, row)
        np.testing.assert_allclose(fixed_aff, ref_aff, atol=1e-3)
        c_ref, s_ref = to_canonical(ref, ref_aff)
        c_fix, s_fix = to_canonical(apply_rescale(raw, *rescale_from_meta(row)), fixed_aff)
        np.testing.assert_array_equal(c_fix, c_ref)
        np.testing.assert_allclose(s_fix, s_ref, rtol=1e-5)
