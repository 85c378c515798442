"""Assemble a patient's anatomy and render it to a TotalSegmentator-labelled HU volume.

``sample_anatomy`` draws every structure (layout, abdomen, skeleton); ``render`` paints the body
outline (skin fat, muscle wall, visceral fat), the lungs split into five lobes, then every layer
in order; ``finish`` adds CT noise and the air outside the reconstruction circle. Arrays are
``[X, Y, Z]`` in RAS voxel order on a :class:`~ctvlp.synthetic.shapes.Grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctvlp.anatomy import ts_total_ids
from ctvlp.synthetic.abdomen import bowel_layers, solid_layers
from ctvlp.synthetic.layout import Anatomy, Layer, Sampler, sample_body, sample_lungs, thorax_layers
from ctvlp.synthetic.shapes import Ellipsoid, Grid, SmoothField, field_on_box
from ctvlp.synthetic.skeleton import cage_layers, pelvis_layers, spine_layers

OUTSIDE_FOV_HU = -1024.0  # value of voxels outside the reconstruction circle, as scanners write
LOBES = {  # (side, lobe) -> TotalSegmentator class
    ("left", "upper"): "lung_upper_lobe_left",
    ("left", "lower"): "lung_lower_lobe_left",
    ("right", "upper"): "lung_upper_lobe_right",
    ("right", "middle"): "lung_middle_lobe_right",
    ("right", "lower"): "lung_lower_lobe_right",
}


@dataclass
class Canvas:
    """A rendered study: ``labels [X,Y,Z] uint8`` (TS ids), ``hu [X,Y,Z] float32``, and context."""

    labels: np.ndarray
    hu: np.ndarray
    grid: Grid
    anatomy: Anatomy
    tissue: dict[str, float]

    def mask(self, *names: str) -> np.ndarray:
        """Boolean mask of the voxels labelled with any of the TotalSegmentator ``names``."""
        ids = ts_total_ids()
        lut = np.zeros(256, dtype=bool)
        lut[[ids[n] for n in names]] = True
        return lut[self.labels]


def sample_anatomy(rng: np.random.Generator, length: float) -> Anatomy:
    """One patient's anatomy for a scan of ``length`` mm (z from 0 at the bottom)."""
    if not 300.0 <= length <= 1000.0:
        raise ValueError(f"scan length {length} mm is outside 300-1000 mm")
    sm = Sampler(rng, length, xy_scale=rng.uniform(0.92, 1.08))
    body, dome = sample_body(sm, length)
    lungs = sample_lungs(sm, body, length)
    spine, spine_info = spine_layers(sm, body, length)
    bowel, bowel_info = bowel_layers(sm, body, dome, length)
    solid, solid_info = solid_layers(sm, body, dome, length)
    thorax, thorax_info = thorax_layers(sm, body, dome, length)
    cage = cage_layers(sm, body, dome, length, spine_info["vertebra_levels"])
    pelvis, pelvis_info = pelvis_layers(sm, body, length)
    muscles = [layer for layer in spine if layer.name.startswith(("autochthon", "iliopsoas"))]
    bones = [layer for layer in spine if layer not in muscles]
    # small retroperitoneal organs last among soft tissue: vessels and bowel must not carve them
    late = [layer for layer in solid if layer.name.startswith(("pancreas", "portal", "adrenal"))]
    organs = [layer for layer in solid if layer not in late]
    layers = muscles + bowel + organs + thorax + late + bones + cage + pelvis
    info = {**spine_info, **bowel_info, **solid_info, **thorax_info, **pelvis_info}
    return Anatomy(length, body, dome, lungs, layers, info)


def render(anatomy: Anatomy, grid: Grid, tissue: dict[str, float], min_radius: float,
           rng: np.random.Generator) -> Canvas:
    """Paint the anatomy on ``grid``: returns a noise-free :class:`Canvas`."""
    labels = np.zeros(grid.shape, dtype=np.uint8)
    hu = np.full(grid.shape, tissue["air"], dtype=np.float32)
    canvas = Canvas(labels, hu, grid, anatomy, tissue)
    _paint_body(canvas)
    _paint_lungs(canvas, rng)
    for layer in anatomy.layers:
        paint_layer(canvas, layer, min_radius, rng)
    return canvas


def _paint_body(c: Canvas) -> None:
    body, t = c.anatomy.body, c.tissue
    x, y, z = c.grid.coords()
    a, b = body.a_at(z).astype(np.float32), body.b_at(z).astype(np.float32)
    deform = 1.0 + field_on_box(body.field, c.grid)
    for inset, value in ((0.0, t["fat"]), (body.fat, t["muscle"]), (body.fat + body.muscle, t["fat"] + 10.0)):
        # skin fat, then the muscle wall, then visceral / mediastinal fat inside it
        q = np.sqrt((x / (a - inset)) ** 2 + (y / (b - inset)) ** 2) * deform
        c.hu[q < 1.0] = value


def _paint_lungs(c: Canvas, rng: np.random.Generator) -> None:
    """Lungs: cavity ellipse tapering to the apex, above the domes, lateral to the mediastinum."""
    an, lu, grid = c.anatomy, c.anatomy.lungs, c.grid
    lo_z = min(an.dome.right_peak, an.dome.left_peak) - 115.0
    sl = grid.box(np.array([-1e4, -1e4, lo_z]), np.array([1e4, 1e4, lu.apex]))
    if sl is None:
        return
    x, y, z = grid.coords(sl)
    ac = (an.body.a_at(z) - lu.inset).astype(np.float32)
    bc = (an.body.b_at(z) - lu.inset).astype(np.float32)
    taper = np.sqrt(np.clip((lu.apex - z) / 70.0, 0.0, 1.0))
    q = np.sqrt((x / ac) ** 2 + (y / bc) ** 2) * (1.0 + field_on_box(lu.field, grid, sl))
    dome = an.dome.z(x, y)
    spine_y = an.body.spine_y(z).astype(np.float32)
    inside = (q < taper) & (z > dome) & (np.abs(x) > lu.mediastinum)
    inside &= ~((np.abs(x) < 32.0) & (y < spine_y + 20.0))
    hn = (z - (dome - 20.0)) / (lu.apex - (dome - 20.0))
    an_ = (y + bc) / (2.0 * bc)
    fis = field_on_box(lu.fissure_field, grid, sl)
    lower = hn < lu.oblique[0] - lu.oblique[1] * an_ + fis
    middle = ~lower & (hn < lu.horizontal + fis) & (an_ > 0.35)
    ids = ts_total_ids()
    right = np.broadcast_to(x > 0, inside.shape)
    lab = np.where(right, ids[LOBES["right", "upper"]], ids[LOBES["left", "upper"]]).astype(np.uint8)
    lab = np.where(right & middle, ids[LOBES["right", "middle"]], lab)
    lab = np.where(lower, np.where(right, ids[LOBES["right", "lower"]], ids[LOBES["left", "lower"]]), lab)
    texture = field_on_box(SmoothField(rng, 15.0, 30.0), grid, sl, step_mm=3.0)
    c.labels[sl][inside] = lab[inside]
    c.hu[sl][inside] = np.broadcast_to(c.tissue["lung"] + texture, inside.shape)[inside]


def paint_layer(c: Canvas, layer: Layer, min_radius: float, rng: np.random.Generator) -> None:
    """Paint one layer (see :class:`~ctvlp.synthetic.layout.Layer` for the modes)."""
    value = c.tissue[layer.hu] if isinstance(layer.hu, str) else float(layer.hu)
    label = ts_total_ids()[layer.name] if layer.name else 0
    texture = SmoothField(rng, layer.texture, 40.0) if layer.texture > 0 else None
    if isinstance(layer.shape, Ellipsoid):
        hit = layer.shape.inside(c.grid, min_radius)
        parts = [] if hit is None else [(hit[0], hit[1], None)]
    else:
        parts = layer.shape.segments(c.grid, min_radius)
    for sl, inside, rel_y in parts:
        lab = c.labels[sl]
        m = inside & (lab == label) if layer.mode == "lumen" else inside.copy()
        if layer.only_below is not None:
            m &= c.hu[sl] < layer.only_below
        if layer.clip or texture:
            x, y, z = c.grid.coords(sl)
        if layer.clip:
            dz = c.anatomy.dome.z(x, y)
            m &= (z < dz - 3.0) if layer.clip == "below_dome" else (z > dz - 10.0)
        if not m.any():
            continue
        v = np.float32(value) + (texture(x, y, z) if texture else np.float32(0.0))
        if layer.gas_above is not None and rel_y is not None:
            v = np.where(rel_y > layer.gas_above, np.float32(c.tissue["gas"]), v)
        c.hu[sl][m] = np.broadcast_to(v, m.shape)[m]
        if layer.mode == "organ":
            lab[m] = label
        elif layer.mode == "tissue":
            lab[m] = 0


def finish(hu: np.ndarray, grid: Grid, noise_hu: float, fov_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (``noise_hu`` SD) and set voxels outside the FOV circle to -1024 HU."""
    out = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    x, y, _ = grid.coords()
    cx = grid.origin[0] + 0.5 * (grid.shape[0] - 1) * grid.spacing[0]
    cy = grid.origin[1] + 0.5 * (grid.shape[1] - 1) * grid.spacing[1]
    outside = ((x - cx) ** 2 + (y - cy) ** 2)[:, :, 0] > (0.5 * fov_mm) ** 2
    out[outside] = OUTSIDE_FOV_HU
    return out
