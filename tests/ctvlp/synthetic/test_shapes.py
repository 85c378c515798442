"""Shape primitives: boxes, ellipsoid and tube volumes by formula, the spline."""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp.synthetic.shapes import Ellipsoid, Grid, Tube, rotation, spline

GRID = Grid((60, 60, 40), (1.0, 1.0, 1.5), (-29.5, -29.5, -29.25))


def _count(shape, min_radius=0.0) -> float:
    total = np.zeros(GRID.shape, bool)
    parts = [shape.inside(GRID, min_radius)] if isinstance(shape, Ellipsoid) else list(shape.segments(GRID, min_radius))
    for sl, inside, *_ in parts:
        total[sl] |= inside
    return total.sum() * np.prod(GRID.spacing)


def test_grid_box_and_coords():
    sl = GRID.box(np.array([-2.0, -2.0, -1.0]), np.array([2.0, 2.0, 1.0]))
    x, y, z = GRID.coords(sl)
    assert x.min() >= -2 and x.max() <= 2 and x.shape[0] == 4 and z.shape[2] == 2  # centres at k + 0.5, +-0.75
    assert GRID.box(np.array([100.0] * 3), np.array([101.0] * 3)) is None


@pytest.mark.parametrize("radii,yaw", [((10, 6, 8), 0.0), ((12, 5, 9), 35.0)])
def test_ellipsoid_volume_matches_formula(radii, yaw):
    e = Ellipsoid(np.zeros(3), np.array(radii, float), rotation(yaw, 10, 0))
    expected = 4 / 3 * np.pi * np.prod(radii)
    assert abs(_count(e) - expected) / expected < 0.06


def test_ellipsoid_scale_applies_after_inflation():
    e = Ellipsoid(np.zeros(3), np.array([2.0, 2.0, 2.0]), np.eye(3), scale=0.5, min_scale=0.5)
    assert np.allclose(e.effective_radii(min_radius=4.0), 4.0)  # inflated to 8, then halved


def test_tube_volume_and_lumen():
    pts = np.array([[-20.0, 0, 0], [0, 0, 0], [20.0, 0, 0]])
    outer = Tube(pts, np.full(3, 6.0))
    lumen = Tube(pts, outer.radii, shrink=2.0)
    cyl = np.pi * 36 * 40 + 4 / 3 * np.pi * 216
    assert abs(_count(outer) - cyl) / cyl < 0.06
    assert _count(lumen) < _count(outer)
    _, _, rel_y = next(outer.segments(GRID, 0.0))
    assert rel_y.max() > 0.9 and rel_y.min() < -0.9  # anterior / posterior side of the axis


def test_spline_passes_through_control_points():
    ctrl = np.array([[0.0, 0, 0], [10, 5, 0], [20, 0, 5], [30, -5, 5]])
    curve = spline(ctrl, 31)
    assert np.allclose(curve[[0, 10, 20, 30]], ctrl)


def test_field_on_box_is_exact_on_coarse_grids_and_close_on_fine_ones():
    from ctvlp.synthetic.shapes import SmoothField, field_on_box

    field = SmoothField(np.random.default_rng(0), 0.1, 100.0)
    coarse = Grid((8, 9, 5), (7.0, 7.0, 10.0), (-28.0, -28.0, 0.0))
    x, y, z = coarse.coords()
    assert np.allclose(field_on_box(field, coarse), np.broadcast_to(field(x, y, z), coarse.shape))
    fine = Grid((40, 40, 3), (0.5, 0.5, 2.0), (-10.0, -10.0, 0.0))
    x, y, z = fine.coords()
    err = np.abs(field_on_box(field, fine) - np.broadcast_to(field(x, y, z), fine.shape)).max()
    assert err < 0.02 * field.amplitude * 10  # a few mm of offset on a 100 mm wave
