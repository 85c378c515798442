"""Abdominal and pelvic layers: bowel, stomach, bladder, liver, gallbladder, spleen, kidneys,
pancreas, portal/splenic vein, adrenal glands.

Hollow organs are an outer tube (the mask: wall + lumen) and a lumen tube painted inside it
(``Tube.shrink`` = wall thickness), so wall thickening is a change of the lumen radius and
dilatation a change of both. ``info`` records names along the tubes (colon segments, stomach
regions) for lesion placement and the report.
"""

from __future__ import annotations

import numpy as np

from ctvlp.synthetic.layout import Body, Diaphragm, Layer, Sampler
from ctvlp.synthetic.shapes import Ellipsoid, Tube, spline

PANCREAS_MIN_SCALE = 0.55  # smallest cross-section scale of pancreatic atrophy (lesions.py)
BOWEL_POINTS_PER_SEGMENT = 6

COLON_CONTROL = (  # (x, y, z-rule, radius, segment name); z-rule: ("L", f) = f * length, ("R"/"Lt", dz)
    (72, 5, ("L", 0.27), 30, "cecum"),
    (78, 0, ("R", -200), 25, "ascending colon"),
    (70, 20, ("R", -150), 24, "hepatic flexure"),
    (20, 65, ("R", -175), 22, "transverse colon"),
    (-30, 65, ("R", -170), 22, "transverse colon"),
    (-82, 5, ("Lt", -125), 22, "splenic flexure"),
    (-85, -5, ("Lt", -220), 18, "descending colon"),
    (-80, 0, ("L", 0.25), 18, "descending colon"),
    (-40, 20, ("L", 0.17), 16, "sigmoid colon"),
    (-5, 5, ("L", 0.13), 16, "sigmoid colon"),
    (0, -40, ("L", 0.09), 20, "rectum"),
    (0, -45, ("L", 0.02), 20, "rectum"),
)


def _z(rule: tuple[str, float], sm: Sampler, dome: Diaphragm, length: float) -> float:
    kind, v = rule
    if kind == "L":
        return v * length
    return (dome.right_peak if kind == "R" else dome.left_peak) + v * sm.zs


def _hollow(name: str, pts: np.ndarray, radii: np.ndarray, wall: float, content: str,
            gas_above: float | None = None) -> list[Layer]:
    outer = Tube(pts, radii)
    lumen = Tube(pts, radii, shrink=np.full(len(radii), wall))
    return [Layer(name, outer, "bowel_wall"), Layer(name, lumen, content, mode="lumen", gas_above=gas_above)]


def bowel_layers(sm: Sampler, body: Body, dome: Diaphragm, length: float) -> tuple[list[Layer], dict]:
    """Colon (gas and stool), small bowel serpentine (fluid), duodenum, stomach (fluid, gas cap)."""
    n = BOWEL_POINTS_PER_SEGMENT
    ctrl = np.array([[x * sm.s + sm.jit(5), y * sm.s + sm.jit(5), _z(zr, sm, dome, length) + sm.jit(6)]
                     for x, y, zr, _, _ in COLON_CONTROL])
    pts = spline(ctrl, n * (len(ctrl) - 1) + 1)
    radii = np.interp(np.linspace(0, len(ctrl) - 1, len(pts)), np.arange(len(ctrl)),
                      [r * sm.s for *_, r, _ in COLON_CONTROL]) * sm.rng.uniform(0.9, 1.1)
    colon_names = [COLON_CONTROL[min(int(round(i / n)), len(ctrl) - 1)][4] for i in range(len(pts))]
    layers = _hollow("colon", pts, radii, 2.5, "gas")
    for _ in range(int(sm.rng.integers(3, 8))):  # stool balls inside the lumen
        i = int(sm.rng.integers(0, len(pts)))
        c = pts[i] + sm.rng.normal(0, 0.25 * radii[i], 3)
        r = radii[i] * sm.rng.uniform(0.3, 0.6)
        layers.append(Layer("colon", Ellipsoid(c, np.full(3, r), np.eye(3), sm.field(0.1, 40)), "stool", mode="lumen",
                            only_below=-500.0))
    sb_pts, sb_r = _small_bowel_path(sm, body, dome, length)
    layers += _hollow("small_bowel", sb_pts, sb_r, 2.0, "fluid")
    dr = dome.right_peak
    duo = np.array([[22, 45, dr - 130 * sm.zs], [45, 15, dr - 145 * sm.zs], [48, 5, dr - 195 * sm.zs],
                    [10, float(body.spine_y(dr - 215 * sm.zs)) + 45, dr - 215 * sm.zs], [-25, 10, dr - 195 * sm.zs]])
    duo[:, :2] *= [sm.s, 1.0]
    layers += _hollow("duodenum", spline(duo, 12), np.full(12, 12.0 * sm.s), 2.5, "fluid")
    dl = dome.left_peak
    st = np.array([[-55, float(body.spine_y(dl)) + 60, dl - 30 * sm.zs], [-55, 25, dl - 80 * sm.zs],
                   [-15, 55, dl - 120 * sm.zs], [22, 45, dr - 130 * sm.zs]])
    st[:, 0] *= sm.s
    st_r = np.array([42, 38, 25, 14.0]) * sm.s * sm.rng.uniform(0.85, 1.15)
    st_pts = spline(st, 16)
    st_radii = np.interp(np.linspace(0, 3, 16), np.arange(4), st_r)
    layers += _hollow("stomach", st_pts, st_radii, sm.rng.uniform(3.5, 5.5), "fluid", gas_above=0.35)
    stomach_names = ["fundus"] * 5 + ["gastric body"] * 6 + ["antrum"] * 5
    return layers, {"colon_names": colon_names, "stomach_names": stomach_names}


def _small_bowel_path(sm: Sampler, body: Body, dome: Diaphragm, length: float) -> tuple[np.ndarray, np.ndarray]:
    """Serpentine of horizontal runs in the central abdomen, 55 mm apart (no loops touching)."""
    z_top, z_bot = dome.right_peak - 205 * sm.zs, 0.22 * length
    sep = 55.0 * sm.zs
    n_runs = max(2, int((z_top - z_bot) // sep) + 1)
    y_mid = float(body.spine_y(0.5 * (z_top + z_bot))) + 80.0
    phase = sm.rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-72, 62, 8) * sm.s
    pts = []
    for k in range(n_runs):
        z = z_top - k * sep
        run = xs if k % 2 == 0 else xs[::-1]
        pts += [[x, y_mid + 18 * np.sin(phase + x / 30.0), z + sm.jit(3)] for x in run]
    pts = np.array(pts)
    return pts, np.full(len(pts), sm.rng.uniform(10.0, 12.5) * sm.s)


def solid_layers(sm: Sampler, body: Body, dome: Diaphragm, length: float) -> tuple[list[Layer], dict]:
    """Bladder, liver, gallbladder, kidneys, spleen, pancreas, portal vein, adrenals (paint order)."""
    dr, dl, zs, s = dome.right_peak, dome.left_peak, sm.zs, sm.s
    yv = lambda z: float(body.spine_y(z))  # noqa: E731
    fill = sm.rng.uniform(0.75, 1.2)
    layers = [
        Layer("urinary_bladder", sm.ellipsoid((0, 45, 0.1 * length), (45 * fill, 35 * fill / s, 35 * fill)), "urine"),
        Layer("liver", sm.ellipsoid((65 * s, 5, dr - 70 * zs), (95, 95, 85), amp=0.08, wl=120), "liver",
              clip="below_dome", texture=3.0),
        Layer("liver", sm.ellipsoid((-15 * s, 45, dr - 55 * zs), (60, 38, 42), amp=0.08), "liver", clip="below_dome"),
        Layer("gallbladder", sm.ellipsoid((48 * s, 45, dr - 120 * zs), (17, 19, 36), pitch=30), "bile"),
    ]
    kidneys = {}
    for side, name, peak in ((-1, "kidney_left", dl), (1, "kidney_right", dr)):
        c = (side * 72 * s, yv(peak - 160 * zs) + 2, peak - (150 if side < 0 else 175) * zs)
        kidneys[name] = sm.ellipsoid(c, (28, 30, 55), yaw=side * 30, pitch=side * 15, amp=0.06)
        layers.append(Layer(name, kidneys[name], "kidney", texture=3.0))
    spleen = sm.ellipsoid((-92 * s, yv(dl - 70 * zs) + 15, dl - 70 * zs), (22, 50, 50), yaw=-40, amp=0.08)
    layers.append(Layer("spleen", spleen, "spleen", clip="below_dome", texture=2.0))
    p_ctrl = np.array([[28 * s, 38, dr - 175 * zs], [5 * s, 50, dr - 160 * zs], [-30 * s, 45, dr - 150 * zs],
                       [-70 * s, 20, dl - 130 * zs]])
    p_ctrl[:, 1] += np.array([yv(z) + 16 for z in p_ctrl[:, 2]])
    p_pts = spline(p_ctrl, 12)
    p_r = np.interp(np.linspace(0, 3, 12), np.arange(4), [16, 10, 11, 10.0]) * s * sm.rng.uniform(0.9, 1.1)
    layers.append(Layer("pancreas", Tube(p_pts, p_r, min_scale=PANCREAS_MIN_SCALE), "pancreas"))
    pv_ctrl = np.array([[-75 * s, p_ctrl[3, 1] - 24, dl - 128 * zs], [10 * s, p_ctrl[1, 1] - 28, dr - 162 * zs],
                        [40 * s, p_ctrl[1, 1] - 15, dr - 110 * zs]])
    pv = Tube(spline(pv_ctrl, 10), np.full(10, 6.5 * s))
    layers.append(Layer("portal_vein_and_splenic_vein", pv, "portal"))
    adrenals = {}
    for side, name, kname in ((-1, "adrenal_gland_left", "kidney_left"), (1, "adrenal_gland_right", "kidney_right")):
        k = kidneys[kname]
        c = np.array([k.center[0] * 0.58, k.center[1] + 12, k.center[2] + k.radii[2] + 8 * zs])
        adrenals[name] = c
        for yaw in (25.0, -25.0):
            limb = sm.ellipsoid(c + [side * 5.0 * np.sign(yaw), 0, 0], (4, 14, 20), yaw=yaw, amp=0.05, spread=0.05)
            layers.append(Layer(name, limb, "adrenal"))
    info = {"pancreas_len": len(p_pts), "adrenal_centers": adrenals, "kidney_centers":
            {k: v.center for k, v in kidneys.items()}}
    return layers, info
