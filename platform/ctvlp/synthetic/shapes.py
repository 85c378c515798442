"""Smooth deformed shapes rasterised on an anisotropic voxel grid.

The phantom lives in a *body frame* in millimetres: x towards the patient's right, y anterior,
z superior (RAS directions), origin at the midline / body centre / bottom of the scan. A
:class:`Grid` places voxel centres in that frame; arrays are ``[X, Y, Z]`` in RAS voxel order.

Every primitive is evaluated only inside its own bounding box (``Grid.box``), so the cost of a
shape scales with its size, not with the volume: a 512 x 512 x 300 phantom stays cheap.
Deformation is a sum of a few random plane waves (``SmoothField``) that scales the implicit
level set, which gives organ outlines that are smooth but never the same twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

Slices = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel grid in the body frame.

    Attributes:
        shape: ``(X, Y, Z)`` voxels.
        spacing: ``(sx, sy, sz)`` mm.
        origin: body-frame mm of the centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def max_spacing(self) -> float:
        return float(max(self.spacing))

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Slices | None:
        """Index slices of the voxels whose centres lie in ``[lo, hi]`` mm, or None if none do."""
        out = []
        for axis in range(3):
            o, s, n = self.origin[axis], self.spacing[axis], self.shape[axis]
            i0 = max(int(np.ceil((lo[axis] - o) / s)), 0)
            i1 = min(int(np.floor((hi[axis] - o) / s)) + 1, n)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def coords(self, sl: Slices | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable body-frame coordinates ``x [n,1,1], y [1,m,1], z [1,1,k]`` (float32)."""
        sl = sl or (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        axes = []
        for axis in range(3):
            idx = np.arange(sl[axis].start, sl[axis].stop, sl[axis].step or 1, dtype=np.float32)
            axes.append(self.origin[axis] + idx * np.float32(self.spacing[axis]))
        return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]

    def index_to_mm(self, idx: np.ndarray) -> np.ndarray:
        """``[N, 3]`` voxel indices -> ``[N, 3]`` body-frame mm."""
        return np.asarray(self.origin) + np.asarray(idx, dtype=np.float64) * np.asarray(self.spacing)


class SmoothField:
    """Random smooth scalar field: ``sum_i a_i sin(k_i . p + phi_i)``, zero mean, |f| <= amplitude.

    Args:
        rng: numpy Generator.
        amplitude: bound of the field (e.g. 0.1 deforms a level set by about +-10 %).
        wavelength_mm: typical wavelength of the plane waves.
        n_waves: number of plane waves.
    """

    def __init__(self, rng: np.random.Generator, amplitude: float, wavelength_mm: float, n_waves: int = 3):
        direction = rng.normal(size=(n_waves, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = wavelength_mm * rng.uniform(0.7, 1.3, size=(n_waves, 1))
        self.k = (2 * np.pi * direction / wavelength).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, n_waves).astype(np.float32)
        weights = rng.uniform(0.5, 1.0, n_waves)
        self.amp = (amplitude * weights / weights.sum()).astype(np.float32)
        self.amplitude = float(amplitude)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.float32(0.0)
        for (kx, ky, kz), phi, a in zip(self.k, self.phase, self.amp):
            out = out + a * np.sin(kx * x + ky * y + kz * z + phi)
        return out


def field_on_box(field: SmoothField, grid: Grid, sl: Slices | None = None, step_mm: float = 6.0) -> np.ndarray:
    """``field`` on the voxels of box ``sl``, evaluated every ~``step_mm`` in-plane and repeated.

    The fields are smooth on a scale of centimetres, so sampling them every few millimetres and
    repeating the samples changes nothing visible while saving most of the sines on fine grids
    (512 x 512 in-plane). On coarse grids (spacing >= step) this is the exact evaluation.
    """
    sl = sl or (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    k = [max(1, int(step_mm // grid.spacing[a])) for a in range(2)]
    coarse = (slice(sl[0].start, sl[0].stop, k[0]), slice(sl[1].start, sl[1].stop, k[1]), sl[2])
    x, y, z = grid.coords(coarse)
    x = x + np.float32(0.5 * (k[0] - 1) * grid.spacing[0])  # centre of each k-block
    y = y + np.float32(0.5 * (k[1] - 1) * grid.spacing[1])
    values = np.ascontiguousarray(np.broadcast_to(field(x, y, z), (x.shape[0], y.shape[1], z.shape[2])), np.float32)
    n0, n1 = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
    if k == [1, 1]:
        return values
    return values[(np.arange(n0) // k[0])[:, None], (np.arange(n1) // k[1])[None, :]]


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """``[3, 3]`` rotation (columns = local axes in the body frame): z-yaw, then y-pitch, x-roll."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("zyx", [yaw_deg, pitch_deg, roll_deg], degrees=True).as_matrix()


@dataclass
class Ellipsoid:
    """Deformed ellipsoid. ``radii`` along the columns of ``rot``; inside where level < 1.

    ``scale`` multiplies the radii after inflation to the grid's minimum radius (so a disease's
    size change, e.g. splenomegaly 1.5 or atrophy 0.6, stays visible on a coarse grid);
    ``min_scale`` is the smallest scale any disease may apply, used to inflate enough.
    """

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    field: SmoothField | None = None
    scale: float | np.ndarray = 1.0
    min_scale: float = 1.0

    def effective_radii(self, min_radius: float) -> np.ndarray:
        return np.maximum(np.asarray(self.radii, float), min_radius / self.min_scale) * np.asarray(self.scale)

    def inside(self, grid: Grid, min_radius: float) -> tuple[Slices, np.ndarray] | None:
        """``(slices, bool mask of the box)`` of the voxels inside, or None if it misses the grid."""
        radii = self.effective_radii(min_radius)
        margin = radii.max() / (1.0 - (self.field.amplitude if self.field else 0.0))
        c = np.asarray(self.center, float)
        sl = grid.box(c - margin, c + margin)
        if sl is None:
            return None
        x, y, z = grid.coords(sl)
        dx, dy, dz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
        q = np.float32(0.0)
        for axis in range(3):
            r = self.rot[:, axis].astype(np.float32)
            q = q + ((r[0] * dx + r[1] * dy + r[2] * dz) / np.float32(radii[axis])) ** 2
        q = np.sqrt(q)
        if self.field is not None:
            q = q * (1.0 + self.field(x, y, z))
        return sl, np.broadcast_to(q < 1.0, (x.shape[0], y.shape[1], z.shape[2]))


@dataclass
class Tube:
    """Tube along a polyline ``points [N, 3]`` with per-point ``radii [N]`` (linear in between)."""

    points: np.ndarray
    radii: np.ndarray
    scale: float = 1.0
    min_scale: float = 1.0
    shrink: float | np.ndarray = 0.0

    def effective_radii(self, min_radius: float) -> np.ndarray:
        """Radii after inflation to ``min_radius``, times ``scale``, minus ``shrink`` (a wall)."""
        r = np.maximum(np.asarray(self.radii, float), min_radius / self.min_scale) * self.scale
        return np.maximum(r - np.asarray(self.shrink, float), 0.0)

    def segments(self, grid: Grid, min_radius: float) -> Iterator[tuple[Slices, np.ndarray, np.ndarray]]:
        """Boxes covered by the tube: ``(slices, inside [box], rel_y [box])``.

        ``rel_y`` is ``(y - y_axis) / r`` at the closest axis point: > 0 on the anterior
        (non-dependent, supine patient) side, used for gas/fluid levels. Small tubes (relative
        to the grid) are done in one box with all segments at once; large ones segment by
        segment, so that the cost follows the tube's volume rather than its bounding box.
        """
        radii = self.effective_radii(min_radius)
        pts = np.asarray(self.points, float)
        todo = [i for i in range(len(pts) - 1) if max(radii[i], radii[i + 1]) > 0]
        chunks = [todo[k : k + 8] for k in range(0, len(todo), 8)]
        while chunks:
            idx = np.asarray(chunks.pop())
            ends = np.concatenate([pts[idx], pts[idx + 1]])
            pad = max(radii[idx].max(), radii[idx + 1].max())
            sl = grid.box(ends.min(axis=0) - pad, ends.max(axis=0) + pad)
            if sl is None:
                continue
            n_box = int(np.prod([s.stop - s.start for s in sl]))
            if len(idx) > 1 and n_box * len(idx) > 200_000:  # a loose box: split the chunk
                chunks += [list(idx[: len(idx) // 2]), list(idx[len(idx) // 2 :])]
                continue
            yield self._evaluate(grid, sl, pts[idx], pts[idx + 1], radii[idx], radii[idx + 1])

    @staticmethod
    def _evaluate(grid: Grid, sl: Slices, p0: np.ndarray, p1: np.ndarray, r0: np.ndarray,
                  r1: np.ndarray) -> tuple[Slices, np.ndarray, np.ndarray]:
        """Inside test of one box against ``S`` segments ``p0 [S,3] -> p1 [S,3]``, radii r0 -> r1."""
        x, y, z = grid.coords(sl)  # [n,1,1], [1,m,1], [1,1,k]
        col = lambda v: np.asarray(v, np.float32).reshape(-1, 1, 1, 1)  # noqa: E731 - [S,1,1,1]
        d = (p1 - p0).astype(np.float32)
        dx, dy, dz = col(d[:, 0]), col(d[:, 1]), col(d[:, 2])
        rx, ry, rz = x[None] - col(p0[:, 0]), y[None] - col(p0[:, 1]), z[None] - col(p0[:, 2])
        inv = col(1.0 / np.maximum((d * d).sum(axis=1), 1e-6))
        t = np.clip((rx * dx + ry * dy + rz * dz) * inv, 0.0, 1.0)  # [S, n, m, k]
        ex, ey, ez = rx - t * dx, ry - t * dy, rz - t * dz
        r = np.maximum(col(r0) + t * col(r1 - r0), 1e-3)
        score = (ex * ex + ey * ey + ez * ez) / (r * r)  # < 1: inside segment s
        if score.shape[0] == 1:
            return sl, score[0] < 1.0, (ey / r)[0]
        best = score.argmin(axis=0)[None]
        inside = np.take_along_axis(score, best, axis=0)[0] < 1.0
        rel_y = np.take_along_axis(np.broadcast_to(ey, score.shape) / r, best, axis=0)[0]
        return sl, inside, rel_y


def spline(control: np.ndarray, n: int) -> np.ndarray:
    """Smooth polyline through ``control [K, 3]`` points: ``[n, 3]`` (Catmull-Rom, uniform)."""
    p = np.asarray(control, float)
    if len(p) < 3:
        t = np.linspace(0, 1, n)[:, None]
        return p[0] + t * (p[-1] - p[0])
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    u = np.linspace(0, len(p) - 1, n)
    seg = np.minimum(u.astype(int), len(p) - 2)
    t = (u - seg)[:, None]
    a, b, c, d = ext[seg], ext[seg + 1], ext[seg + 2], ext[seg + 3]
    return 0.5 * (2 * b + (-a + c) * t + (2 * a - 5 * b + 4 * c - d) * t**2 + (-a + 3 * b - 3 * c + d) * t**3)
