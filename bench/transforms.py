"""Benchmark the per-volume transforms on a realistic CT: MONAI vs torch/numpy, one CPU core.

Input: a 512 x 512 x 300 int16 volume at 0.75 x 0.75 x 1.5 mm with a 16-label mask, resampled to
(D, H, W) = 3 x 1 x 1 mm (the ctrate-chest preset). Each variant runs ``--repeats`` times with
``torch.set_num_threads(1)``; the best time is reported. Writes bench/results/transforms.json.

    .venv/bin/python bench/transforms.py [--repeats 2] [--out bench/results/transforms.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from ctvlp.transforms import array as A  # noqa: E402
from ctvlp.transforms import io  # noqa: E402

SHAPE_XYZ = (512, 512, 300)
SPACING_XYZ = (0.75, 0.75, 1.5)
TARGET_DHW = (3.0, 1.0, 1.0)


def _best(fn, repeats: int) -> tuple[float, object]:
    # Process CPU time, not wall time: the figure is cost per core and stays meaningful on a shared
    # machine (torch runs single-threaded, so CPU time = time on one core). Wall time is logged.
    best, out = float("inf"), None
    for _ in range(repeats):
        t0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        best = min(best, time.process_time() - t0)
        WALL.append(time.perf_counter() - w0)
    return best, out


WALL: list[float] = []


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[: SHAPE_XYZ[0], : SHAPE_XYZ[1], : SHAPE_XYZ[2]]
    body = ((x - 256) / 230.0) ** 2 + ((y - 256) / 180.0) ** 2 <= 1.0
    img = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, SHAPE_XYZ, dtype=np.int16)
    mask = np.zeros(SHAPE_XYZ, np.uint8)
    for label in range(1, 17):  # 16 blobby anatomies spread over the body
        cx, cy, cz = rng.integers(120, 392), rng.integers(150, 362), rng.integers(30, 270)
        r = rng.integers(15, 50)
        sl = (slice(max(cx - r, 0), cx + r), slice(max(cy - r, 0), cy + r), slice(max(cz - r // 2, 0), cz + r // 2))
        mask[sl] = label
    affine = np.diag([-SPACING_XYZ[0], -SPACING_XYZ[1], SPACING_XYZ[2], 1.0])
    return img, mask, affine


def _monai_spacing(image_dhw: np.ndarray, spacing_dhw) -> np.ndarray:
    # MONAI's affine-based resampler (grid_sample), as a MetaTensor with its affine.
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    aff = torch.diag(torch.tensor([*spacing_dhw, 1.0], dtype=torch.float64))
    mt = MetaTensor(torch.from_numpy(image_dhw.astype(np.float32))[None], affine=aff)
    return np.asarray(Spacing(pixdim=TARGET_DHW, mode="bilinear")(mt))[0]


def _torch_nearest(mask_dhw: np.ndarray, spacing_dhw) -> np.ndarray:
    size = A.resampled_shape(mask_dhw.shape, spacing_dhw, TARGET_DHW)
    t = torch.from_numpy(mask_dhw)[None, None].float()
    return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].to(torch.uint8).numpy()


def run(repeats: int) -> dict:
    torch.set_num_threads(1)
    img, mask, affine = _phantom()
    res: dict = {"input_shape_xyz": SHAPE_XYZ, "input_spacing_xyz": SPACING_XYZ, "target_spacing_DHW": TARGET_DHW}
    blob = io.nifti_bytes(img, affine, compress=True)
    res["nii_gz_MB"] = len(blob) / 1e6
    res["read_nifti_gz_s"], _ = _best(lambda: io.read_nifti(blob), repeats)
    res["gunzip_s"] = {"zlib_gzip": _best(lambda: gzip.decompress(blob), repeats)[0]}
    try:
        from isal.igzip import decompress as isal_gunzip

        res["gunzip_s"]["isal_igzip"] = _best(lambda: isal_gunzip(blob), repeats)[0]
    except ImportError:
        pass
    # Arrays as nibabel hands them over (Fortran order, x fastest), not C-order copies.
    img, affine, _ = io.read_nifti(blob)
    mask = np.asfortranarray(mask)
    res["to_canonical_s"], (c_img, sp) = _best(lambda: A.to_canonical(img, affine), repeats)
    res["to_canonical_mask_s"], (c_msk, _) = _best(lambda: A.to_canonical(mask, affine), repeats)
    tri = {
        "torch_interpolate": lambda: A.resample(c_img, sp, TARGET_DHW, backend="torch")[0],
        "monai_Resize": lambda: A.resample(c_img, sp, TARGET_DHW, backend="monai")[0],
        "monai_Spacing_gridsample": lambda: _monai_spacing(c_img, sp),
    }
    res["trilinear_s"] = {}
    for name, fn in tri.items():
        res["trilinear_s"][name], out = _best(fn, repeats)
        res.setdefault("trilinear_out_shape", {})[name] = list(out.shape)
    near = {
        "numpy_take": lambda: A.resample(c_msk, sp, TARGET_DHW, mode="nearest")[0],
        "torch_nearest_exact": lambda: _torch_nearest(c_msk, sp),
    }
    res["nearest_s"] = {}
    for name, fn in near.items():
        res["nearest_s"][name], out = _best(fn, repeats)
    r_img, _ = A.resample(c_img, sp, TARGET_DHW)
    r_msk, _ = A.resample(c_msk, sp, TARGET_DHW, mode="nearest")
    res["nearest_parity_numpy_vs_torch"] = bool(np.array_equal(r_msk, _torch_nearest(c_msk, sp)))
    res["hu_to_uint8_s"], u8 = _best(lambda: A.hu_to_uint8(r_img, -1150, 350), repeats)
    res["hu_window_then_to_uint8_s"], _ = _best(lambda: A.to_uint8(A.hu_window(r_img, -1150, 350)), repeats)
    res["crop_to_anatomies_s"], (ci, cm, _) = _best(
        lambda: A.crop_to_anatomies(u8, r_msk, (5, 20, 20), (112, 256, 352)), repeats
    )
    res["anatomy_boxes_s"], _ = _best(lambda: A.anatomy_boxes(cm, 16), repeats)
    res["crop_shape"] = list(ci.shape)
    res["cpu_chain_s"] = (
        res["to_canonical_s"] + res["to_canonical_mask_s"] + min(res["trilinear_s"].values()) + min(res["nearest_s"].values())
        + res["hu_to_uint8_s"] + res["crop_to_anatomies_s"] + res["anatomy_boxes_s"]
    )
    res["env"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
                  "cpus_visible": os.cpu_count(), "repeats": repeats,
                  "timer": "process_time (CPU s)", "wall_total_s": sum(WALL)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "transforms.json"))
    args = ap.parse_args()
    res = run(args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
