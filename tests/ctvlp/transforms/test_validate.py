"""ctvlp.transforms.validate: every quarantine reason, table-driven."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.transforms import validate as V

CT = np.array([[[-1000, 40], [300, 1200]]], dtype=np.int16)


@pytest.mark.parametrize(
    "call,kind,message",
    [
        (lambda: V.ensure_3d(np.zeros((4, 4))), "not_3d", "expected a 3D volume"),
        (lambda: V.ensure_3d(np.zeros((4, 4, 4, 2))), "not_3d", "expected a 3D volume"),
        (lambda: V.ensure_3d(np.zeros((4, 0, 4))), "not_3d", "empty axis"),
        (lambda: V.check_finite(np.array([1.0, np.nan, np.inf])), "nonfinite", "1 NaN and 1 inf"),
        (lambda: V.check_ct_range(np.array([0.0, 1.0])), "not_ct", "implausible"),  # windowed export
        (lambda: V.check_ct_range(np.array([-100.0, 3000.0])), "not_ct", "implausible"),  # no air
        (lambda: V.check_ct_range(np.array([-1000.0, 150.0])), "not_ct", "implausible"),  # no tissue
        (lambda: V.check_spacing((0.05, 1, 1)), "bad_spacing", "outside"),
        (lambda: V.check_spacing((1, 1, 25)), "bad_spacing", "outside"),
        (lambda: V.check_spacing((1, float("nan"), 1)), "bad_spacing", "outside"),
        (lambda: V.check_mask_nonempty(np.zeros((2, 2, 2), np.uint8)), "empty_mask", "no voxel"),
        (lambda: V.check_mask_matches((4, 4, 4), np.eye(4), (4, 4, 5), np.eye(4)), "mask_mismatch", "shape"),
        (lambda: V.check_mask_matches((4, 4, 4), np.diag([2, 1, 1, 1]), (4, 4, 4), np.eye(4)), "mask_mismatch", "affine"),
    ],
)
def test_each_check_raises_its_kind(call, kind, message):
    with pytest.raises(V.VolumeError, match=message) as err:
        call()
    assert err.value.kind == kind and isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"{kind}: ")


def test_checks_pass_on_good_input():
    assert V.ensure_3d(np.zeros((2, 3, 4, 1))).shape == (2, 3, 4)
    V.check_finite(CT)
    assert V.check_ct_range(CT) == (-1000.0, 1200.0)
    V.check_spacing((3.0, 0.75, 0.75))
    V.check_mask_matches((4, 4, 4), np.eye(4) + 1e-4, (4, 4, 4), np.eye(4))
    V.check_mask_nonempty(np.ones((1, 1, 1), np.uint8))


def _rot_x(deg: float) -> np.ndarray:
    t = np.radians(deg)
    r = np.eye(4)
    r[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


@pytest.mark.parametrize("affine,angle", [
    (np.diag([0.8, 0.8, 2.5, 1.0]), 0.0),
    (np.diag([-0.8, 0.8, -2.5, 1.0])[:, [1, 0, 2, 3]], 0.0),  # flips and a permutation: not oblique
    (_rot_x(3.0) @ np.diag([0.8, 0.8, 2.5, 1.0]), 3.0),
    (_rot_x(20.0) @ np.diag([0.8, 0.8, 2.5, 1.0]), 20.0),
])
def test_obliquity_by_formula(affine, angle):
    assert V.obliquity_deg(affine) == pytest.approx(angle, abs=1e-6)
    if angle > 5.0:
        with pytest.raises(V.VolumeError, match="oblique"):
            V.check_oblique(affine, 5.0)
    else:
        assert V.check_oblique(affine, 5.0) == pytest.approx(angle, abs=1e-6)


def test_zero_axis_is_bad_spacing():
    with pytest.raises(V.VolumeError) as err:
        V.obliquity_deg(np.diag([0.8, 0.8, 0.0, 1.0]))
    assert err.value.kind == "bad_spacing"


@pytest.mark.parametrize("shape,spacing,ok", [
    ((16, 200, 200), (10.0, 1.0, 1.0), True),
    ((2, 512, 512), (5.0, 0.7, 0.7), False),  # 2 slices
    ((100, 100, 512), (3.0, 1.0, 0.7), False),  # 100 mm high field of view < 150
])
def test_check_size(shape, spacing, ok):
    if ok:
        V.check_size(shape, spacing, 16, (100.0, 150.0, 150.0))
    else:
        with pytest.raises(V.VolumeError, match="too_small"):
            V.check_size(shape, spacing, 16, (100.0, 150.0, 150.0))


def test_check_mask_labels():
    V.check_mask_labels(np.array([0, 5, 117]), 117)
    with pytest.raises(V.VolumeError, match="mask_labels"):
        V.check_mask_labels(np.array([0, 118]), 117)
