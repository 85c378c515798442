"""Per-patient anatomy: where every structure sits, how big it is, in which order it is painted.

An :class:`Anatomy` is grid-free (body-frame millimetres, see ``shapes``): the same patient is
rendered on any grid (a follow-up study, a second reconstruction). It holds the body outline,
the diaphragm, the lungs (painted by their own rule, split into lobes by fissure surfaces) and
an ordered list of :class:`Layer` s; a later layer overwrites an earlier one where they meet, as
a segmenter would give each voxel to one structure.

Arrangement along z (scan bottom z = 0, scan length ``L`` of 560-640 mm): pelvis (bladder,
sacrum, rectum) at the bottom, bowel, kidneys, pancreas, liver and spleen in the middle, the
diaphragm domes at ~0.73-0.76 L, heart, lungs and the aortic arch on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctvlp.synthetic.shapes import Ellipsoid, SmoothField, Tube, rotation, spline

REF_LENGTH = 600.0  # mm; positions below are written for this length and scaled by L / 600


@dataclass(eq=False)
class Layer:
    """One painted structure.

    Attributes:
        name: TotalSegmentator ``total`` class name written to the mask (mode "organ"), or the
            class whose voxels receive the HU (mode "lumen"); "" with mode "tissue" writes HU and
            clears the mask (e.g. intervertebral discs).
        shape: the primitive.
        hu: tissue key of ``tissue.sample_tissue`` or a HU value.
        mode: "organ" | "lumen" | "tissue".
        gas_above: tubes only: voxels with ``(y - y_axis) / r`` above this are gas (supine
            patient: gas rises anteriorly).
        clip: "below_dome" | "above_dome" | None, relative to the diaphragm.
        texture: amplitude (HU) of a smooth intensity variation.
        only_below: paint only voxels whose current HU is below this (e.g. stool into gas).
    """

    name: str
    shape: Ellipsoid | Tube
    hu: str | float
    mode: str = "organ"
    gas_above: float | None = None
    clip: str | None = None
    texture: float = 0.0
    only_below: float | None = None


@dataclass
class Body:
    """Elliptic body outline ``(x / a(z))^2 + (y / b(z))^2 < 1``, with fat and muscle layers."""

    z: np.ndarray
    a: np.ndarray
    b: np.ndarray
    fat: float
    muscle: float
    field: SmoothField

    def a_at(self, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.z, self.a)

    def b_at(self, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.z, self.b)

    def spine_y(self, z: np.ndarray | float) -> np.ndarray:
        """AP centre of the vertebral bodies at height z."""
        return -self.b_at(z) + self.fat + 50.0


@dataclass
class Diaphragm:
    """Two domes; ``z(x, y)`` is the height of the diaphragm under the point (x, y)."""

    right_peak: float
    left_peak: float
    width: float

    def z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        peak = np.where(x >= 0, self.right_peak, self.left_peak).astype(np.float32)
        cx = np.where(x >= 0, 0.45, -0.45) * self.width
        drop = 65.0 * ((x - cx) / self.width) ** 2 + 45.0 * ((y - 10.0) / 110.0) ** 2
        return peak - np.minimum(drop, 110.0)


@dataclass
class Lungs:
    """Lung fields inside the thoracic cavity, above the diaphragm, beside the mediastinum."""

    apex: float
    inset: float
    mediastinum: float
    field: SmoothField
    fissure_field: SmoothField
    oblique: tuple[float, float]
    horizontal: float


@dataclass
class Anatomy:
    """A patient: scan length, outline, diaphragm, lungs and the painted layers (in order)."""

    length: float
    body: Body
    dome: Diaphragm
    lungs: Lungs
    layers: list[Layer]
    info: dict = field(default_factory=dict)

    def get(self, name: str, mode: str = "organ") -> Layer:
        for layer in self.layers:
            if layer.name == name and layer.mode == mode:
                return layer
        raise KeyError(f"no {mode} layer named {name!r}")

    def insert_after(self, name: str, new: list[Layer], mode: str = "organ") -> None:
        """Insert ``new`` right after the last layer named ``name`` (with ``mode``)."""
        idx = max(i for i, layer in enumerate(self.layers) if layer.name == name and layer.mode == mode)
        self.layers[idx + 1 : idx + 1] = new

    def insert_late(self, new: list[Layer]) -> None:
        """Insert ``new`` after the large organs and vessels, before pancreas, portal vein,
        adrenals and bones (so that a finding of a hollow organ is not carved away by the liver
        or spleen, while the small organs stay whole)."""
        idx = min(i for i, layer in enumerate(self.layers) if layer.name.startswith(("pancreas", "adrenal")))
        self.layers[idx:idx] = new

    def insert_before(self, name: str, new: list[Layer]) -> None:
        idx = min(i for i, layer in enumerate(self.layers) if layer.name == name)
        self.layers[idx:idx] = new


class Sampler:
    """Small helpers around one Generator: jittered positions and sizes in body-frame mm."""

    def __init__(self, rng: np.random.Generator, length: float, xy_scale: float):
        self.rng, self.zs, self.s = rng, length / REF_LENGTH, xy_scale

    def jit(self, sd: float) -> float:
        return float(np.clip(self.rng.normal(0.0, sd), -2.5 * sd, 2.5 * sd))

    def size(self, radii: tuple[float, float, float], spread: float = 0.08) -> np.ndarray:
        f = self.rng.uniform(1 - spread, 1 + spread)
        return np.array([radii[0] * self.s, radii[1] * self.s, radii[2] * self.zs]) * f

    def field(self, amplitude: float = 0.1, wavelength: float = 80.0) -> SmoothField:
        return SmoothField(self.rng, amplitude, wavelength)

    def ellipsoid(self, c, radii, yaw=0.0, pitch=0.0, roll=0.0, amp=0.1, wl=80.0, spread=0.08) -> Ellipsoid:
        center = np.array([c[0] + self.jit(4), c[1] + self.jit(4), c[2] + self.jit(5)])
        rot = rotation(yaw + self.jit(6), pitch + self.jit(4), roll + self.jit(4))
        return Ellipsoid(center, self.size(radii, spread), rot, self.field(amp, wl))


def sample_body(sm: Sampler, length: float) -> tuple[Body, Diaphragm]:
    """Outline (chest narrower at the top, abdomen rounder) and the diaphragm domes."""
    fz = np.array([0.0, 0.12, 0.28, 0.45, 0.62, 0.75, 0.88, 1.0])
    a = np.array([170, 168, 158, 160, 162, 165, 160, 148.0]) * sm.s
    b = np.array([115, 112, 112, 120, 118, 112, 108, 100.0]) * sm.rng.uniform(0.93, 1.07)
    a = a * sm.rng.uniform(0.97, 1.03, size=a.shape)
    b = b * sm.rng.uniform(0.97, 1.03, size=b.shape)
    body = Body(fz * length, a, b, sm.rng.uniform(8, 30), sm.rng.uniform(8, 14), sm.field(0.03, 250.0))
    right = 0.75 * length + sm.jit(8)
    dome = Diaphragm(right, right - sm.rng.uniform(10, 25), 110.0 * sm.s)
    return body, dome


def sample_lungs(sm: Sampler, body: Body, length: float) -> Lungs:
    return Lungs(
        apex=length - sm.rng.uniform(5, 25) * sm.zs,
        inset=body.fat + body.muscle + 14.0,
        mediastinum=sm.rng.uniform(18, 26),
        field=sm.field(0.05, 150.0),
        fissure_field=sm.field(0.04, 120.0),
        oblique=(sm.rng.uniform(0.58, 0.66), sm.rng.uniform(0.5, 0.6)),
        horizontal=sm.rng.uniform(0.42, 0.5),
    )


def thorax_layers(sm: Sampler, body: Body, dome: Diaphragm, length: float) -> tuple[list[Layer], dict]:
    """Heart, left atrial appendage, aorta with iliac arteries, IVC, esophagus, trachea."""
    zs, dl, dr = sm.zs, dome.left_peak, dome.right_peak
    ysf = lambda z: float(body.spine_y(z)) + 16.0  # noqa: E731 - spine front at height z
    zc = dl + 55 * zs
    front = float(body.b_at(zc)) - body.fat - body.muscle - 10.0
    yc = (ysf(zc) + 22.0 + front) / 2.0
    # heart size follows the thorax (normal cardiothoracic ratio ~0.45-0.5), little spread
    lr = 0.5 * (float(body.a_at(zc)) - body.fat - body.muscle - 14.0) * sm.rng.uniform(0.95, 1.05)
    ap = min(0.73 * lr, (front - ysf(zc) - 22.0) / 2.0 + 6.0)
    heart = sm.ellipsoid((-12 * sm.s, yc, zc), (lr / sm.s, ap / sm.s, 0.83 * lr / sm.zs), yaw=-35, pitch=15,
                         amp=0.06, wl=120, spread=0.02)
    top = zc + heart.radii[2]
    appendage = sm.ellipsoid((-45 * sm.s, yc - 8, zc + 30 * zs), (12.0, 10.0, 14.0), amp=0.05)
    aorta_pts = np.array([
        [12, yc + 5, zc + 25 * zs], [15, yc + 5, dl + 105 * zs], [0, 0.5 * (yc + ysf(dl)), dl + 125 * zs],
        [-28, ysf(dl + 100 * zs) + 2, dl + 105 * zs], [-28, ysf(dl) + 2, dl], [-14, ysf(0.45 * length) + 12, 0.45 * length],
        [-6, ysf(0.36 * length) + 12, 0.36 * length],
    ])
    aorta_r = np.array([15, 15, 13, 12, 12, 10, 9.0]) * sm.rng.uniform(0.9, 1.12)
    aorta = Tube(spline(aorta_pts, 40), np.interp(np.linspace(0, 6, 40), np.arange(7), aorta_r))
    bif = aorta.points[-1]
    layers = [
        Layer("heart", heart, "heart", clip="above_dome", texture=4.0),
        Layer("atrial_appendage_left", appendage, "heart"),
    ]
    for side, name in ((-1, "iliac_artery_left"), (1, "iliac_artery_right")):
        end = np.array([side * 55 * sm.s, ysf(0.12 * length) + 25, 0.12 * length])
        layers.append(Layer(name, Tube(np.array([bif, end]), np.array([6.0, 5.5])), "blood"))
    ivc_pts = np.array([
        [22, ysf(0.36 * length) + 14, 0.36 * length], [24, ysf(dr - 40 * zs) + 20, dr - 40 * zs],
        [26, yc - 10, dr + 15 * zs],
    ])
    layers.append(Layer("inferior_vena_cava", Tube(spline(ivc_pts, 8), np.full(8, 11.0 * sm.s)), "ivc"))
    layers.append(Layer("aorta", aorta, "blood"))
    eso_pts = np.array([
        [-2, ysf(length) + 14, length + 10], [3, ysf(dl + 110 * zs) + 12, dl + 110 * zs],
        [-2, ysf(dl + 50 * zs) + 14, dl + 50 * zs], [-12, ysf(dl) + 30, dl + 10 * zs],
        [-35, ysf(dl - 20 * zs) + 45, dl - 22 * zs],
    ])
    esophagus = Tube(spline(eso_pts, 16), np.full(16, 9.0 * sm.s))
    layers.append(Layer("esophagus", esophagus, "esophagus"))
    trachea = Tube(np.array([[0, ysf(length) + 38, length + 10], [0, ysf(top) + 40, dl + 125 * zs]]),
                   np.array([9.0, 9.0]) * sm.s)
    layers.append(Layer("trachea", trachea, "bowel_wall"))
    layers.append(Layer("trachea", Tube(trachea.points, trachea.radii, shrink=2.0), "air", mode="lumen"))
    info = {"heart_center": heart.center, "esophagus_hiatus": np.array([-12.0, ysf(dl) + 30, dl])}
    return layers, info
