"""Shape findings: change the anatomy before it is painted (see ``lesions`` for the overview).

Each planter takes a :class:`ShapeContext` and returns the :class:`~ctvlp.synthetic.lesions.Finding`
it planted. Sizes are drawn from the preset's parameter table (``DISEASE_PARAMS`` unless the preset
names another, ``lesions.PARAM_TABLES``) and raised to the grid's visible minimum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ctvlp.synthetic.layout import Anatomy, Layer
from ctvlp.synthetic.lesions import DISEASE_ANATOMY, DISEASE_PARAMS, DiseaseParams, Finding, min_size
from ctvlp.synthetic.shapes import Ellipsoid, SmoothField, Tube


@dataclass
class ShapeContext:
    """What a shape planter needs: the anatomy to edit, the study's HU, rng and grid scale."""

    anatomy: Anatomy
    tissue: dict[str, float]
    rng: np.random.Generator
    max_spacing: float
    min_radius: float
    lesion_min_vox: float
    params: Mapping[str, DiseaseParams] = field(default_factory=lambda: DISEASE_PARAMS)

    def draw(self, disease: str) -> float:
        lo, hi = self.params[disease].size_mm
        return float(self.rng.uniform(lo, hi))

    def min_size(self, disease: str) -> float:
        return min_size(disease, self.max_spacing, self.lesion_min_vox, self.params)

    def radius(self, disease: str) -> float:
        """Half the drawn diameter, at least the visible minimum radius."""
        return max(0.5 * self.draw(disease), self.min_size(disease))

    def thickness(self, disease: str) -> float:
        return max(self.draw(disease), self.min_size(disease))

    def hu(self, disease: str) -> float:
        lo, hi = self.params[disease].hu
        return float(self.rng.uniform(lo, hi))

    def finding(self, disease: str, **kw: object) -> Finding:
        return Finding(disease, DISEASE_ANATOMY[disease], **kw)


def cardiomegaly(ctx: ShapeContext) -> Finding:
    f = ctx.draw("Cardiomegaly")
    scale = np.array([f, ctx.rng.uniform(1.1, 1.2), f * ctx.rng.uniform(0.9, 0.97)])
    ctx.anatomy.get("heart").shape.scale = scale
    return ctx.finding("Cardiomegaly", details={"severity": "moderate" if f < 1.58 else "marked"})


def pericardial_effusion(ctx: ShapeContext) -> Finding:
    """A fluid rim around the heart (painted before it, labelled heart)."""
    t = ctx.thickness("Pericardial effusion")
    heart = ctx.anatomy.get("heart").shape
    rim = Ellipsoid(heart.center, heart.effective_radii(ctx.min_radius) + t, heart.rot, heart.field)
    ctx.anatomy.insert_before("heart", [Layer("heart", rim, ctx.hu("Pericardial effusion"), clip="above_dome")])
    return ctx.finding("Pericardial effusion", size_mm=round(t), details={"severity": _grade(t, 10, 15)})


def hiatal_hernia(ctx: ShapeContext) -> Finding:
    """A sac above the hiatus (wall, fluid, anterior gas), labelled esophagus."""
    r = ctx.radius("Hiatal hernia")
    c = ctx.anatomy.info["esophagus_hiatus"] + np.array([0.0, 0.0, 0.5 * r])
    field = SmoothField(ctx.rng, 0.05, 60.0)
    radii = np.array([r, 0.9 * r, r])
    layers = [
        Layer("esophagus", Ellipsoid(c, radii, np.eye(3), field), "bowel_wall"),
        Layer("esophagus", Ellipsoid(c, np.maximum(radii - 4.0, 1.0), np.eye(3), field), "fluid", mode="lumen"),
        Layer("esophagus", Ellipsoid(c + [0, 0.45 * r, 0], np.array([0.7, 0.45, 0.7]) * r, np.eye(3)), "gas",
              mode="lumen"),
    ]
    ctx.anatomy.insert_after("esophagus", layers)
    return ctx.finding("Hiatal hernia", size_mm=round(2 * r), details={"severity": _grade(2 * r, 40, 60)})


def splenomegaly(ctx: ShapeContext) -> Finding:
    f = ctx.draw("Splenomegaly")
    spleen = ctx.anatomy.get("spleen").shape
    spleen.scale = np.array([ctx.rng.uniform(1.15, 1.3), f, f])
    length = 2.0 * spleen.effective_radii(ctx.min_radius)[2]
    return ctx.finding("Splenomegaly", size_mm=round(length), details={"severity": "moderate" if f < 1.58 else "marked"})


def pancreatic_atrophy(ctx: ShapeContext) -> Finding:
    """Thinner pancreas (cross-section scaled 0.55-0.68) with fatty replacement (lower HU)."""
    layer = ctx.anatomy.get("pancreas")
    layer.shape.scale = ctx.draw("Pancreatic atrophy")
    layer.hu = ctx.tissue["pancreas"] - ctx.hu("Pancreatic atrophy")
    return ctx.finding("Pancreatic atrophy", details={"fatty": True})


def adrenal_nodule(ctx: ShapeContext) -> Finding:
    side = "left" if ctx.rng.random() < 0.55 else "right"
    name = f"adrenal_gland_{side}"
    r = ctx.radius("Adrenal nodule")
    lateral = 10.0 if side == "right" else -10.0  # grows laterally and forward, away from the spine
    c = ctx.anatomy.info["adrenal_centers"][name] + np.array([lateral, 8.0, 0.0])
    lipid = bool(ctx.rng.random() < 0.6)
    hu = float(ctx.rng.uniform(-5, 12)) if lipid else float(ctx.rng.uniform(25, 40))
    nodule = Ellipsoid(c, np.array([r, r, 1.1 * r]), np.eye(3), SmoothField(ctx.rng, 0.04, 40.0))
    ctx.anatomy.insert_after(name, [Layer(name, nodule, hu)])
    return ctx.finding("Adrenal nodule", side=side, size_mm=round(2 * r), details={"lipid_rich": lipid})


def _thicken(ctx: ShapeContext, organ: str, idx: np.ndarray, wall: float) -> None:
    """Thicken the wall of ``organ`` at tube points ``idx``: outer radius up, lumen down.

    The thickened segment is painted a second time after the solid organs, so that the liver
    or pancreas next to it cannot carve the thick wall away.
    """
    outer_layer, lumen_layer = ctx.anatomy.get(organ), ctx.anatomy.get(organ, mode="lumen")
    outer, lumen = outer_layer.shape, lumen_layer.shape
    outer.radii[idx] = np.maximum(outer.radii[idx], wall + 4.0)  # shared with the lumen tube
    lumen.shrink = np.asarray(lumen.shrink, float).copy()
    lumen.shrink[idx] = wall
    seg_pts, seg_r = outer.points[idx], outer.radii[idx].copy()
    if len(idx) == 1:  # a tube needs two points
        seg_pts, seg_r = np.vstack([seg_pts, seg_pts + 1e-3]), np.repeat(seg_r, 2)
    ctx.anatomy.insert_late([
        Layer(organ, Tube(seg_pts, seg_r), outer_layer.hu),
        Layer(organ, Tube(seg_pts, seg_r, shrink=wall), lumen_layer.hu, mode="lumen", gas_above=lumen_layer.gas_above),
    ])


def colonic_wall_thickening(ctx: ShapeContext) -> Finding:
    names = np.array(ctx.anatomy.info["colon_names"])
    segment = str(ctx.rng.choice(["cecum", "ascending colon", "transverse colon", "descending colon", "sigmoid colon"]))
    idx = np.flatnonzero(names == segment)
    pts = ctx.anatomy.get("colon").shape.points
    step = float(np.median(np.linalg.norm(np.diff(pts, axis=0), axis=1)))
    n = int(np.clip(np.ceil(max(ctx.rng.uniform(60, 150), 3 * ctx.max_spacing) / step) + 1, 2, len(idx)))
    start = int(ctx.rng.integers(0, len(idx) - n + 1))
    wall = ctx.thickness("Colonic wall thickening")
    _thicken(ctx, "colon", idx[start : start + n], wall)
    return ctx.finding("Colonic wall thickening", location=segment, size_mm=round(wall))


def small_bowel_dilatation(ctx: ShapeContext) -> Finding:
    """At least half of the small bowel loops dilated, fluid-filled with air-fluid levels."""
    outer = ctx.anatomy.get("small_bowel").shape
    n = len(outer.radii)
    k = int(ctx.rng.integers(n // 2, n + 1))
    start = int(ctx.rng.integers(0, n - k + 1))
    r = ctx.radius("Small bowel dilatation")
    outer.radii[start : start + k] = r  # the lumen tube shares this array
    ctx.anatomy.get("small_bowel", mode="lumen").gas_above = 0.6
    return ctx.finding("Small bowel dilatation", size_mm=round(2 * r))


def gastric_wall_thickening(ctx: ShapeContext) -> Finding:
    names = np.array(ctx.anatomy.info["stomach_names"])
    region = str(ctx.rng.choice(["antrum", "gastric body", "diffuse"]))
    idx = np.arange(len(names)) if region == "diffuse" else np.flatnonzero(names == region)
    wall = ctx.thickness("Gastric wall thickening")
    _thicken(ctx, "stomach", idx, wall)
    return ctx.finding("Gastric wall thickening", location=region, size_mm=round(wall))


def _grade(value: float, moderate: float, large: float) -> str:
    return "small" if value < moderate else ("moderate" if value < large else "large")


SHAPE_PLANTERS: dict[str, Callable[[ShapeContext], Finding]] = {
    "Cardiomegaly": cardiomegaly,
    "Pericardial effusion": pericardial_effusion,  # after cardiomegaly: the rim follows the heart
    "Hiatal hernia": hiatal_hernia,
    "Splenomegaly": splenomegaly,
    "Pancreatic atrophy": pancreatic_atrophy,
    "Adrenal nodule": adrenal_nodule,
    "Colonic wall thickening": colonic_wall_thickening,
    "Small bowel dilatation": small_bowel_dilatation,
    "Gastric wall thickening": gastric_wall_thickening,
}
