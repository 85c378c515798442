"""Bones and the large muscles: vertebrae by level (with discs and the spinal cord), ribs,
sternum, sacrum, hips, femurs, paraspinal and iliopsoas muscles.

Bones are a cortical shell (``cortex`` HU) around a cancellous core (a shrunken copy painted in
"lumen" mode); on coarse grids the shell falls between voxel centres and the bone reads as
cancellous, as partial-volume averaging would make it.
"""

from __future__ import annotations

import numpy as np

from ctvlp.synthetic.layout import Body, Diaphragm, Layer, Sampler
from ctvlp.synthetic.shapes import Ellipsoid, Tube, rotation, spline

LUMBAR = ("L5", "L4", "L3", "L2", "L1")
THORACIC = tuple(f"T{i}" for i in range(12, 0, -1))


def _bone(name: str, e: Ellipsoid, cortex_mm: float = 1.8) -> list[Layer]:
    core = Ellipsoid(e.center, np.maximum(e.radii - cortex_mm, 0.5), e.rot, e.field)
    return [Layer(name, e, "cortex"), Layer(name, core, "cancellous", mode="lumen")]


def vertebra_levels(length: float, zs: float) -> list[tuple[str, float, float]]:
    """``(level, z_bottom, z_top)`` from L5 (bottom at 0.25 L) upwards, within the scan."""
    out, z = [], 0.25 * length
    for level in LUMBAR + THORACIC:
        h = (36.0 if level.startswith("L") else 25.0) * zs
        if z < length:
            out.append((level, z, z + h))
        z += h
    return out


def spine_layers(sm: Sampler, body: Body, length: float) -> tuple[list[Layer], dict]:
    """Vertebral bodies with posterior arches, discs, spinal cord, paraspinal and psoas muscles."""
    layers: list[Layer] = []
    for side, tag in ((-1, "left"), (1, "right")):
        zz = np.linspace(0.12 * length, length + 10, 6)
        pts = np.stack([np.full(6, side * 38.0 * sm.s), body.spine_y(zz) - 42.0, zz], axis=1)
        layers.append(Layer(f"autochthon_{tag}", Tube(pts, np.full(6, 22.0 * sm.s)), "muscle"))
        ps = np.array([[side * 30 * sm.s, body.spine_y(0.5 * length) + 8, 0.5 * length],
                       [side * 70 * sm.s, body.spine_y(0.1 * length) + 40, 0.1 * length]])
        layers.append(Layer(f"iliopsoas_{tag}", Tube(ps, np.array([11.0, 22.0]) * sm.s), "muscle"))
    levels = vertebra_levels(length, sm.zs)
    for level, z0, z1 in levels:
        zc, h = 0.5 * (z0 + z1), z1 - z0
        yc = float(body.spine_y(zc))
        disc = Ellipsoid(np.array([0, yc, z0]), np.array([20, 15, 3.5 * sm.zs]), np.eye(3))
        layers.append(Layer("", disc, "disc", mode="tissue"))
        vb = Ellipsoid(np.array([0, yc, zc]), np.array([21 * sm.s, 16.0, 0.5 * h - 3 * sm.zs]), np.eye(3))
        arch = Ellipsoid(np.array([0, yc - 36, zc]), np.array([26 * sm.s, 12.0, 0.4 * h]), np.eye(3))
        layers += _bone(f"vertebrae_{level}", vb) + _bone(f"vertebrae_{level}", arch)
    zz = np.linspace(0.25 * length, length + 10, 5)
    cord = np.stack([np.zeros(5), body.spine_y(zz) - 26.0, zz], axis=1)
    layers.append(Layer("spinal_cord", Tube(cord, np.full(5, 6.0)), "muscle"))
    return layers, {"vertebra_levels": levels}


def cage_layers(sm: Sampler, body: Body, dome: Diaphragm, length: float, levels: list) -> list[Layer]:
    """Ribs 1-12 on both sides (arcs sloping down anteriorly) and the sternum."""
    layers: list[Layer] = []
    thoracic = {lv: 0.5 * (z0 + z1) for lv, z0, z1 in levels if lv.startswith("T")}
    for k in range(1, 13):
        zk = thoracic.get(f"T{k}")
        if zk is None or zk - 60 * sm.zs > length:
            continue
        theta = np.deg2rad(np.linspace(-75, 65, 8))
        zz = zk - 45.0 * sm.zs * (theta - theta[0]) / (theta[-1] - theta[0])
        inset = body.fat + body.muscle * 0.5 + 6.0
        a, b = body.a_at(zz) - inset, body.b_at(zz) - inset
        for side, tag in ((-1, "left"), (1, "right")):
            arc = np.stack([side * a * np.cos(theta), b * np.sin(theta), zz], axis=1)
            start = np.array([[side * 22.0, float(body.spine_y(zk)) - 12, zk]])
            pts = np.vstack([start, arc])
            layers.append(Layer(f"rib_{tag}_{k}", Tube(pts, np.full(len(pts), 5.0)), "rib"))
    z0, z1 = dome.right_peak - 20 * sm.zs, min(length + 10, dome.right_peak + 170 * sm.zs)
    zz = np.linspace(z0, z1, 4)
    st = np.stack([np.zeros(4), body.b_at(zz) - body.fat - body.muscle * 0.5 - 8, zz], axis=1)
    layers.append(Layer("sternum", Tube(st, np.full(4, 9.0)), "rib"))
    return layers


def pelvis_layers(sm: Sampler, body: Body, length: float) -> tuple[list[Layer], dict]:
    """Sacrum (tilted, wider on top), hips (iliac wing + pubis/ischium), femoral heads."""
    zs_, s = sm.zs, sm.s
    zc = 0.18 * length
    sacrum = Ellipsoid(np.array([sm.jit(2), float(body.spine_y(zc)) - 4, zc]),
                       np.array([48 * s, 22.0, 58 * zs_]) * sm.rng.uniform(0.93, 1.07),
                       rotation(0, 0, -25 + sm.jit(4)), sm.field(0.07, 90))
    layers = _bone("sacrum", sacrum, 1.5)
    for side, tag in ((-1, "left"), (1, "right")):
        wing = sm.ellipsoid((side * 108 * s, float(body.spine_y(0.25 * length)) + 40, 0.25 * length),
                            (14, 62, 55), yaw=side * 25, amp=0.06)
        pubis = sm.ellipsoid((side * 62 * s, 15, 0.08 * length), (35, 45, 32), amp=0.06)
        femur = sm.ellipsoid((side * 92 * s, 5, 0.035 * length), (23, 23, 30), amp=0.03)
        layers += _bone(f"hip_{tag}", wing) + _bone(f"hip_{tag}", pubis) + _bone(f"femur_{tag}", femur)
        shaft = Tube(spline(np.array([femur.center, femur.center + [side * 10, 0, -80]]), 3), np.full(3, 14.0))
        layers.append(Layer(f"femur_{tag}", shaft, "cortex"))
    return layers, {"sacrum_center": sacrum.center}
