"""Segmentation stage: TotalSegmentator (v2 ``total`` task, 117 classes) in a GPU actor pool.

Used only when ``ingest.segmentation = totalsegmentator``; supplied masks are always used as they
are. Each actor loads TotalSegmentator once (through its Python API, ``task="total"``, ``fast`` as
an option) with weights from its home directory on the cluster image (``TOTALSEG_HOME_DIR`` /
``TOTALSEG_WEIGHTS_PATH``, else ``~/.totalsegmentator``). Without a GPU in the cluster, without
the nnU-Net stack (the ``seg`` extra) or without the weights, ``jobs/preflight.py`` (using
:func:`missing_requirements`) stops the job with a message saying what is missing, before any
study is decoded; a fake mask is never made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

# TotalSegmentator v2 nnU-Net dataset ids of the `total` task (map_tasks_config.TASK_CONFIGS).
_TOTAL_DATASETS = {False: (291, 292, 293, 294, 295), True: (297,)}


def _weights_dir() -> Path:
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def missing_requirements(fast: bool, num_gpus: float) -> list[str]:
    """What stops TotalSegmentator from running here (empty list = ready)."""
    problems = []
    if num_gpus <= 0:
        problems.append("the Ray cluster has no GPU (segmentation runs in a GPU actor pool)")
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        problems.append("nnU-Net is not installed: install the 'seg' extra "
                        "(pip install -c constraints.txt '.[seg]') on the cluster image")
    try:
        wdir = _weights_dir()
    except ImportError:
        problems.append("totalsegmentator is not installed")
        return problems
    for ds in _TOTAL_DATASETS[fast]:
        if not any(wdir.glob(f"Dataset{ds}_*")):
            problems.append(f"TotalSegmentator weights Dataset{ds} not found under {wdir} "
                            "(set TOTALSEG_HOME_DIR or run totalseg_download_weights on the image)")
            break
    return problems


class TotalSegmentatorActor:
    """Ray Data actor UDF: adds a ``_mask_nifti`` column (NIfTI bytes of TS ``total`` ids)."""

    def __init__(self, stage: Any, fast: bool):
        from totalsegmentator.python_api import totalsegmentator

        self._run = totalsegmentator
        self.stage, self.fast = stage, fast

    def _segment(self, rec: dict[str, Any]) -> bytes | None:
        import json

        import nibabel as nib

        from ctvlp.transforms import io
        from ingest.process import read_image, repair

        if rec.get("mask_uri"):
            return None  # supplied masks are used as they are
        try:
            image, affine, info = read_image(rec, self.stage.storage)
            image, affine = repair(image, affine, info, json.loads(rec.get("meta") or "{}"), self.stage)
        except Exception:  # noqa: BLE001 - the CPU stage re-reads and quarantines with a reason
            return None
        seg = self._run(nib.Nifti1Image(image, affine), None, task="total", fast=self.fast,
                        ml=True, quiet=True, device="gpu")
        return io.nifti_bytes(seg.get_fdata(dtype="float32").astype("uint8"), seg.affine)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.copy()
        batch["_mask_nifti"] = [self._segment(r) for r in batch.to_dict("records")]
        return batch


def add_segmentation_stage(ds: Any, cfg: Any) -> Any:
    """Append the GPU actor pool (one actor per GPU, up to the cluster's GPUs) to ``ds``."""
    import ray

    num_gpus = max(1, int(ray.cluster_resources().get("GPU", 0)))
    return ds.map_batches(
        TotalSegmentatorActor, fn_constructor_kwargs={"stage": cfg.stage, "fast": cfg.totalseg_fast},
        batch_size=1, batch_format="pandas", num_gpus=1, concurrency=(1, num_gpus),
    )
