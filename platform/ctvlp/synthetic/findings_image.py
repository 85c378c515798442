"""Image findings: change a painted canvas inside the owning anatomy's mask.

Lung findings keep apart so that each stays recognisable: a pleural effusion lies in the
dependent (posterior) band of a lower lobe, at most ``EFFUSION_BAND_MM`` thick; consolidation
and nodules keep at least two voxels away from that band and from each other. Every planter
returns the :class:`~ctvlp.synthetic.lesions.Finding` it planted; the canvas is noise-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ctvlp.synthetic.lesions import DISEASE_ANATOMY, DISEASE_PARAMS, DiseaseParams, Finding, min_size
from ctvlp.synthetic.phantom import LOBES, Canvas
from ctvlp.synthetic.shapes import SmoothField

EFFUSION_BAND_MM = 45.0  # thickest pleural effusion; the dependent band findings keep out of
LUNG = tuple(LOBES.values())
LOWER_LOBES = (LOBES["left", "lower"], LOBES["right", "lower"])
DENSE_LUNG_HU = -400.0  # lung voxels above this are a lesion (nodule, consolidation, effusion)


@dataclass
class ImageContext:
    """A canvas to edit, the rng, the preset's visibility factor and its parameter table."""

    canvas: Canvas
    rng: np.random.Generator
    lesion_min_vox: float
    params: Mapping[str, DiseaseParams] = field(default_factory=lambda: DISEASE_PARAMS)

    def size(self, disease: str) -> float:
        lo, hi = self.params[disease].size_mm
        return float(self.rng.uniform(lo, hi))

    def min_size(self, disease: str) -> float:
        return min_size(disease, self.canvas.grid.max_spacing, self.lesion_min_vox, self.params)

    def radius(self, disease: str) -> float:
        return max(0.5 * self.size(disease), self.min_size(disease))

    def hu(self, disease: str) -> float:
        lo, hi = self.params[disease].hu
        return float(self.rng.uniform(lo, hi))

    def finding(self, disease: str, **kw: object) -> Finding:
        return Finding(disease, DISEASE_ANATOMY[disease], **kw)


def _bbox(mask: np.ndarray, pad: int = 1) -> tuple[slice, slice, slice]:
    """Index box of the True voxels of ``mask``, padded (the whole volume if empty)."""
    out = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = (hit[0], hit[-1] + 1) if hit.size else (0, mask.shape[axis])
        out.append(slice(max(lo - pad, 0), min(hi + pad, mask.shape[axis])))
    return out[0], out[1], out[2]


def _shell(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of ``mask`` (mask minus its erosion), computed inside its box."""
    sl, out = _bbox(mask), np.zeros_like(mask)
    out[sl] = mask[sl] & ~ndimage.binary_erosion(mask[sl])
    return out


def _edt(mask: np.ndarray, spacing: tuple[float, ...], outside: bool = False,
         roi: np.ndarray | None = None) -> np.ndarray:
    """Distance (mm) from each True voxel to the nearest False one (0 on False), float32.

    ``outside`` is what lies beyond the volume: False for "depth inside an organ", True for
    "distance to a lesion" (the border of the volume is no lesion). Computed only inside the box
    of ``roi`` (default ``mask``): values outside it are 0, which keeps 512^2 x 300 volumes cheap.
    """
    sl = _bbox(mask if roi is None else roi)
    padded = np.pad(mask[sl], 1, constant_values=outside)
    out = np.zeros(mask.shape, np.float32)
    out[sl] = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return out


def _pick(rng: np.random.Generator, candidates: np.ndarray) -> tuple[int, int, int] | None:
    flat = np.flatnonzero(candidates)
    if flat.size == 0:
        return None
    return tuple(int(v) for v in np.unravel_index(int(rng.choice(flat)), candidates.shape))


def _sphere(c: Canvas, center: tuple[int, int, int], r: float, allowed: np.ndarray, hu: float,
            label: int | None = None) -> int:
    """Set voxels within ``r`` mm of voxel ``center`` (and ``allowed``) to ``hu``; returns the count."""
    p = c.grid.index_to_mm(np.array(center))
    sl = c.grid.box(p - r, p + r)
    x, y, z = c.grid.coords(sl)
    m = ((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2 <= r * r) & allowed[sl]
    c.hu[sl][m] = hu
    if label is not None:
        c.labels[sl][m] = label
    return int(m.sum())


def _ids(*names: str) -> int | list[int]:
    from ctvlp.anatomy import ts_total_ids

    ids = [ts_total_ids()[n] for n in names]
    return ids[0] if len(ids) == 1 else ids


def dependent_band(c: Canvas, thickness: float) -> np.ndarray:
    """Lower-lobe voxels within ``thickness`` mm of the most posterior lower-lobe voxel of their
    (x, z) column: where a layering pleural effusion sits in a supine patient."""
    lower = c.mask(*LOWER_LOBES)
    sl = _bbox(lower, pad=0)
    band = np.zeros_like(lower)
    depth = np.cumsum(lower[sl], axis=1, dtype=np.int32) * c.grid.spacing[1]
    band[sl] = lower[sl] & (depth <= thickness)
    return band


def _lung_keepout(c: Canvas) -> np.ndarray:
    """Lung voxels closer than two voxels to the effusion band or to an existing dense lesion."""
    lung = c.mask(*LUNG)
    taken = dependent_band(c, EFFUSION_BAND_MM) | (lung & (c.hu > DENSE_LUNG_HU))
    return lung & (_edt(~taken, c.grid.spacing, outside=True, roi=lung) < 2.0 * c.grid.max_spacing)


def _lobe_name(c: Canvas, idx: tuple[int, int, int]) -> str:
    label = int(c.labels[idx])
    for (side, lobe), name in LOBES.items():
        if _ids(name) == label:
            return f"{side} {lobe} lobe"
    raise AssertionError(f"voxel {idx} is not lung")


def emphysema(ctx: ImageContext) -> Finding:
    """Low-attenuation patches (HU < -950) over 6-30 % of the lung, upper lobes first."""
    c, rng = ctx.canvas, ctx.rng
    lung = c.mask(*LUNG)
    upper = c.mask(LOBES["left", "upper"], LOBES["right", "upper"])
    pools = [np.flatnonzero(upper), np.flatnonzero(lung)]  # centres: upper lobes 70 % of the time
    target, done = ctx.size("Emphysema") * pools[1].size, 0
    low = np.zeros_like(lung)
    for _ in range(5000):
        if done >= target:
            break
        pool = pools[0] if rng.random() < 0.7 and pools[0].size else pools[1]
        idx = np.unravel_index(int(rng.choice(pool)), lung.shape)
        r = max(rng.uniform(4.0, 15.0), ctx.min_size("Emphysema"))
        p = c.grid.index_to_mm(np.array(idx))
        sl = c.grid.box(p - r, p + r)
        x, y, z = c.grid.coords(sl)
        m = ((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2 <= r * r) & lung[sl]
        c.hu[sl][m] = ctx.hu("Emphysema")
        done += int((m & ~low[sl]).sum())
        low[sl] |= m
    frac = float(low.sum() / max(lung.sum(), 1))
    severity = "mild" if frac < 0.12 else ("moderate" if frac < 0.22 else "severe")
    kind = str(rng.choice(["centrilobular", "paraseptal", "panlobular"]))
    return ctx.finding("Emphysema", side="bilateral", details={"severity": severity, "kind": kind})


def _largest_component(mask: np.ndarray) -> np.ndarray:
    sl = _bbox(mask)
    comps, k = ndimage.label(mask[sl])
    if k <= 1:
        return mask
    out = np.zeros_like(mask)
    out[sl] = comps == (np.argmax(np.bincount(comps.ravel())[1:]) + 1)
    return out


def consolidation(ctx: ImageContext) -> Finding:
    """35-80 % of one lobe (one connected region of at least 80 mL), outside the dependent band."""
    c, rng = ctx.canvas, ctx.rng
    keepout = _lung_keepout(c)
    room = {name: _largest_component(c.mask(name) & ~keepout) for name in LOBES.values()}
    sizes = {name: m.sum() * c.grid.voxel_volume_ml for name, m in room.items()}
    lobes = [name for name, ml in sizes.items() if ml >= 100.0] or [max(sizes, key=sizes.get)]
    avail = room[str(rng.choice(lobes))]
    center = _pick(rng, avail)
    pts = np.argwhere(avail)
    mm = c.grid.index_to_mm(pts)
    dist = np.linalg.norm(mm - c.grid.index_to_mm(np.array(center)), axis=1)
    dist *= 1.0 + SmoothField(rng, 0.2, 60.0)(mm[:, 0], mm[:, 1], mm[:, 2])
    n = int(max(ctx.size("Consolidation") * len(pts), 80.0 / c.grid.voxel_volume_ml))
    region = np.zeros_like(avail)
    region[tuple(pts[np.argsort(dist)[: min(n, len(pts))]].T)] = True
    region = _largest_component(region)  # one connected consolidation, no stray fragments
    c.hu[region] = ctx.hu("Consolidation")
    lobe = _lobe_name(c, center)
    return ctx.finding("Consolidation", location=lobe, side=lobe.split()[0])


def pleural_effusion(ctx: ImageContext) -> Finding:
    """Fluid layering in the dependent band of one or both lower lobes (labelled as that lobe)."""
    c, rng = ctx.canvas, ctx.rng
    side = str(rng.choice(["left", "right", "bilateral"], p=[0.4, 0.35, 0.25]))
    t = min(max(ctx.size("Pleural effusion"), ctx.min_size("Pleural effusion")), EFFUSION_BAND_MM)
    band = dependent_band(c, t)
    sides = ("left", "right") if side == "bilateral" else (side,)
    region = np.zeros_like(band)
    for s in sides:
        lobe = c.mask(LOBES[s, "lower"])
        z = np.flatnonzero(lobe.any(axis=(0, 1)))
        if z.size == 0:
            continue
        top = z[0] + max(1, int(np.ceil(0.75 * (z[-1] - z[0] + 1))))
        part = band & lobe
        part[:, :, top:] = False
        region |= part
    c.hu[region] = ctx.hu("Pleural effusion")
    return ctx.finding("Pleural effusion", side=side, size_mm=round(t),
                       details={"severity": "small" if t < 25 else ("moderate" if t < 38 else "large")})


def lung_nodule(ctx: ImageContext) -> Finding:
    """1-2 solid nodules (20-60 HU) well inside the lung, away from other lung lesions."""
    c, rng = ctx.canvas, ctx.rng
    lung = c.mask(*LUNG)
    depth = _edt(lung, c.grid.spacing)
    sizes = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        r = ctx.radius("Lung nodule")
        keepout = _lung_keepout(c)
        spaced = _edt(~(lung & (c.hu > DENSE_LUNG_HU)), c.grid.spacing, outside=True, roi=lung) >= r + 2.0 * c.grid.max_spacing
        for cand in (lung & ~keepout & spaced & (depth >= 0.8 * r), lung & ~keepout & spaced, lung & ~keepout):
            center = _pick(rng, cand)
            if center is not None:
                break
        if center is None:
            raise RuntimeError("no room for a lung nodule")
        _sphere(c, center, r, lung, ctx.hu("Lung nodule"))
        sizes.append((round(2 * r), _lobe_name(c, center)))
    size, lobe = max(sizes)
    return ctx.finding("Lung nodule", location=lobe, side=lobe.split()[0], size_mm=size,
                       details={"count": len(sizes)})


def _focal(ctx: ImageContext, disease: str, organ: np.ndarray, candidates: np.ndarray, count: int,
           label: int | None = None) -> list[tuple[float, tuple[int, int, int]]]:
    """Plant ``count`` spheres of ``disease`` centred on random ``candidates`` inside ``organ``."""
    out = []
    for _ in range(count):
        center = _pick(ctx.rng, candidates if candidates.any() else organ)
        if center is None:
            raise RuntimeError(f"no voxel of the owning anatomy to plant {disease!r}")
        r = ctx.radius(disease)
        _sphere(ctx.canvas, center, r, organ, ctx.hu(disease), label)
        out.append((round(2 * r), center))
    return out


def arterial_wall_calcification(ctx: ImageContext) -> Finding:
    c = ctx.canvas
    aorta = c.mask("aorta")
    wall = _shell(aorta)
    plaques = _focal(ctx, "Arterial wall calcification", aorta, wall, int(ctx.rng.integers(1, 7)))
    dome = c.anatomy.dome.left_peak
    zs = [c.grid.index_to_mm(np.array(p))[2] for _, p in plaques]
    where = "thoracic" if min(zs) > dome else ("abdominal" if max(zs) < dome else "thoracoabdominal")
    return ctx.finding("Arterial wall calcification", location=where, details={"count": len(plaques)})


def liver_cyst(ctx: ImageContext) -> Finding:
    c = ctx.canvas
    liver = c.mask("liver")
    base = float(np.median(c.hu[liver]))
    depth = _edt(liver, c.grid.spacing)
    n = 1 if ctx.rng.random() < 0.6 else int(ctx.rng.integers(2, 4))
    out = []
    for _ in range(n):
        r = ctx.radius("Liver cyst")
        center = _pick(ctx.rng, depth >= 0.8 * r) or _pick(ctx.rng, liver)
        _sphere(c, center, r, liver, min(ctx.hu("Liver cyst"), base - 30.0))
        out.append(round(2 * r))
    return ctx.finding("Liver cyst", size_mm=max(out), details={"count": n})


def fatty_liver(ctx: ImageContext) -> Finding:
    c = ctx.canvas
    delta = ctx.hu("Fatty liver")
    c.hu[c.mask("liver")] -= delta
    return ctx.finding("Fatty liver", details={"severity": "moderate" if delta < 38 else "marked"})


def _kidney_side(ctx: ImageContext) -> str:
    return "left" if ctx.rng.random() < 0.5 else "right"


def _pole(c: Canvas, organ: np.ndarray, center: tuple[int, int, int]) -> str:
    zc = np.argwhere(organ)[:, 2].mean()
    return "upper pole" if center[2] > zc + 0.5 else ("lower pole" if center[2] < zc - 0.5 else "interpolar region")


def kidney_cyst(ctx: ImageContext) -> Finding:
    """Fluid sphere labelled ``kidney_cyst_<side>`` (TotalSegmentator's own class), may bulge out."""
    c, side = ctx.canvas, _kidney_side(ctx)
    kidney = c.mask(f"kidney_{side}")
    base = float(np.median(c.hu[kidney]))
    allowed = kidney | (c.labels == 0)
    r = ctx.radius("Kidney cyst")
    center = _pick(ctx.rng, kidney)
    _sphere(c, center, r, allowed, min(ctx.hu("Kidney cyst"), base - 25.0), _ids(f"kidney_cyst_{side}"))
    return ctx.finding("Kidney cyst", side=side, location=_pole(c, kidney, center), size_mm=round(2 * r))


def kidney_stone(ctx: ImageContext) -> Finding:
    c, side = ctx.canvas, _kidney_side(ctx)
    kidney = c.mask(f"kidney_{side}")
    inner = kidney & ~_shell(kidney)
    (size, center), = _focal(ctx, "Kidney stone", kidney, inner, 1)
    return ctx.finding("Kidney stone", side=side, location=_pole(c, kidney, center), size_mm=size)


def _dependent_stones(ctx: ImageContext, disease: str, organ_name: str, max_count: int) -> Finding:
    c = ctx.canvas
    organ = c.mask(organ_name)
    y = np.argwhere(organ)[:, 1]
    posterior = organ & (np.arange(organ.shape[1])[None, :, None] <= np.quantile(y, 0.4)) if y.size else organ
    stones = _focal(ctx, disease, organ, posterior, int(ctx.rng.integers(1, max_count + 1)))
    return ctx.finding(disease, size_mm=max(s for s, _ in stones), details={"count": len(stones)})


def portal_vein_thrombosis(ctx: ImageContext) -> Finding:
    """A contiguous 30-70 % of the portal/splenic vein: hypodense after contrast, else hyperdense."""
    c, rng = ctx.canvas, ctx.rng
    vein = np.argwhere(c.mask("portal_vein_and_splenic_vein"))
    order = vein[np.argsort(vein[:, 0])]
    n = max(1, int(round(ctx.size("Portal vein thrombosis") * len(order))))
    start = int(rng.integers(0, len(order) - n + 1))
    contrast = c.tissue["contrast"] > 0
    hu = ctx.hu("Portal vein thrombosis") if contrast else c.tissue["portal"] + rng.uniform(35, 50)
    c.hu[tuple(order[start : start + n].T)] = hu
    return ctx.finding("Portal vein thrombosis", details={"contrast": contrast,
                                                          "occlusive": n > 0.6 * len(order)})


def sacral_sclerosis(ctx: ImageContext) -> Finding:
    c = ctx.canvas
    sacrum = c.mask("sacrum")
    depth = _edt(sacrum, c.grid.spacing)
    (size, center), = _focal(ctx, "Sacral sclerosis", sacrum, depth > max(1.05 * c.grid.max_spacing, 3.0), 1)
    x = c.grid.index_to_mm(np.array(center))[0] - c.anatomy.info["sacrum_center"][0]
    side = "right" if x > 10 else ("left" if x < -10 else None)
    return ctx.finding("Sacral sclerosis", side=side, size_mm=size)


IMAGE_PLANTERS: dict[str, Callable[[ImageContext], Finding]] = {  # applied in this order
    "Fatty liver": fatty_liver,
    "Liver cyst": liver_cyst,  # after steatosis: the cyst stays 30 HU below the parenchyma
    "Emphysema": emphysema,
    "Consolidation": consolidation,
    "Pleural effusion": pleural_effusion,
    "Lung nodule": lung_nodule,  # last in the lung: keeps away from the other lesions
    "Arterial wall calcification": arterial_wall_calcification,
    "Kidney cyst": kidney_cyst,
    "Kidney stone": kidney_stone,  # in parenchyma only, never inside a cyst
    "Gallstone": lambda ctx: _dependent_stones(ctx, "Gallstone", "gallbladder", 3),
    "Bladder stone": lambda ctx: _dependent_stones(ctx, "Bladder stone", "urinary_bladder", 2),
    "Portal vein thrombosis": portal_vein_thrombosis,
    "Sacral sclerosis": sacral_sclerosis,
}
