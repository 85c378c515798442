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
