"""TotalSegmentator v2 (``total`` task, 117 classes) behind one object that loads its model once.

:class:`TotalSegmentatorSegmenter` runs inference through TotalSegmentator's Python API
(``totalsegmentator.python_api.totalsegmentator``), which keeps its own preprocessing (canonical
reorientation, resampling to 1.5 mm or 3 mm with ``fast``, cropping) and returns a multilabel
``Nifti1Image`` of ``total`` class ids (``ctvlp.anatomy.ts_total_classes``). That API rebuilds an
``nnUNetPredictor`` and reloads the checkpoint on every call; we install a small cache in front
of ``totalsegmentator.nnunet.nnUNetPredictor`` so the weights are read once per process (a Ray
actor) and reused for every volume.

Construction checks everything inference needs and raises a RuntimeError naming what is missing
and how to get it (weights, GPU, the nnU-Net stack); there is no fallback mask, ever.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

# nnU-Net dataset ids of the v2 `total` task (totalsegmentator.map_tasks_config): fast = 3 mm.
TOTAL_TASK_IDS = {False: (291, 292, 293, 294, 295), True: (297,)}


def weights_dir() -> Path:
    """Where TotalSegmentator looks for weights: ``$TOTALSEG_WEIGHTS_PATH``, else
    ``$TOTALSEG_HOME_DIR/nnunet/results`` (default home ``~/.totalsegmentator``)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    home = Path(os.environ.get("TOTALSEG_HOME_DIR") or Path.home() / ".totalsegmentator")
    return home / "nnunet" / "results"


def missing_requirements(fast: bool, device: str, allow_cpu: bool = False) -> list[str]:
    """Everything that stops TotalSegmentator from running here, each with its fix (empty = ready)."""
    problems: list[str] = []
    try:
        import nnunetv2  # noqa: F401
        import totalsegmentator.python_api  # noqa: F401
    except ImportError as exc:
        problems.append(
            f"the nnU-Net inference stack is not installed ({exc.name}): "
            "pip install -c constraints.txt '.[seg]' on the GPU image"
        )
    wdir = weights_dir()
    for task_id in TOTAL_TASK_IDS[bool(fast)]:
        if not any(wdir.glob(f"Dataset{task_id:03d}_*")):
            problems.append(
                f"weights Dataset{task_id}_* missing under {wdir}: run `totalseg_download_weights "
                f"-t total{'_fast' if fast else ''}` on a machine with internet, copy the folder "
                "into the cluster image, and point TOTALSEG_WEIGHTS_PATH (or TOTALSEG_HOME_DIR) at it"
            )
    if device.startswith(("gpu", "cuda")):
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"device={device!r} but no CUDA GPU is visible: run on a GPU node"
                + ("" if allow_cpu else " (or pass allow_cpu=True with device='cpu', very slow)")
            )
    elif not allow_cpu:
        problems.append(f"device={device!r} is not a GPU; pass allow_cpu=True to accept CPU inference")
    return problems


class _PredictorCache:
    """Stands in for ``nnUNetPredictor`` inside ``totalsegmentator.nnunet``: the first
    construction + ``initialize_from_trained_model_folder`` per (model folder, folds, checkpoint)
    loads the weights; later ones reuse that initialised predictor."""

    def __init__(self, predictor_cls: Any) -> None:
        self.predictor_cls = predictor_cls
        # totalsegmentator.nnunet inspects the constructor's keywords to pick nnU-Net's API version.
        self.__signature__ = inspect.signature(predictor_cls)
        self.loaded: dict[tuple, Any] = {}
        self.num_loads = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = self

        class _Proxy:
            def __init__(self) -> None:
                self._args, self._kwargs, self._inner = args, kwargs, None

            def initialize_from_trained_model_folder(self, folder, use_folds=None, checkpoint_name="checkpoint_final.pth"):
                key = (str(folder), tuple(use_folds) if use_folds else None, checkpoint_name)
                if key not in cache.loaded:
                    inner = cache.predictor_cls(*self._args, **self._kwargs)
                    inner.initialize_from_trained_model_folder(folder, use_folds, checkpoint_name)
                    cache.loaded[key] = inner
                    cache.num_loads += 1
                self._inner = cache.loaded[key]

            def __getattr__(self, name: str) -> Any:
                if self._inner is None:
                    raise AttributeError(f"{name}: predictor used before initialize_from_trained_model_folder")
                return getattr(self._inner, name)

        return _Proxy()


def install_predictor_cache(nnunet_module: Any) -> _PredictorCache:
    """Replace ``nnunet_module.nnUNetPredictor`` by a caching factory (idempotent)."""
    current = nnunet_module.nnUNetPredictor
    if isinstance(current, _PredictorCache):
        return current
    cache = _PredictorCache(current)
    nnunet_module.nnUNetPredictor = cache
    return cache


class TotalSegmentatorSegmenter:
    """Segment CT volumes with TotalSegmentator's ``total`` task; the model is loaded once.

    Args:
        fast: the 3 mm model (task 297) instead of the 1.5 mm five-model ensemble (291-295).
        device: ``"gpu"``/``"cuda"``/``"cuda:N"`` or ``"cpu"`` (needs ``allow_cpu``).
        allow_cpu: accept CPU inference (minutes per volume; tests and debugging only).

    Raises:
        RuntimeError: listing every missing requirement (see :func:`missing_requirements`).
    """

    def __init__(self, fast: bool = False, device: str = "gpu", allow_cpu: bool = False) -> None:
        problems = missing_requirements(fast, device, allow_cpu)
        if problems:
            raise RuntimeError(
                "TotalSegmentator cannot run, so no mask will be produced:\n  - "
                + "\n  - ".join(problems)
                + "\nOr supply masks with the data (ingest.segmentation=supplied)."
            )
        import totalsegmentator.nnunet as ts_nnunet
        from totalsegmentator.config import set_config_key, setup_totalseg
        from totalsegmentator.python_api import totalsegmentator

        setup_totalseg()
        set_config_key("send_usage_stats", False)  # clusters are offline, and studies stay private

        self.fast, self.device = fast, "gpu" if device.startswith("cuda") else device
        self._run = totalsegmentator
        self.cache = install_predictor_cache(ts_nnunet)

    def __call__(self, array_xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Raw ``total`` class ids (uint8 ``[X, Y, Z]``, same grid as the input) of a HU volume."""
        import nibabel as nib

        img = nib.Nifti1Image(np.asarray(array_xyz), np.asarray(affine, dtype=np.float64))
        seg = self._run(
            img, None, task="total", fast=self.fast, device=self.device, ml=True,
            quiet=True, skip_saving=True, nr_thr_saving=1,
        )
        labels = np.asarray(seg.dataobj)
        if labels.shape != array_xyz.shape:
            raise RuntimeError(f"TotalSegmentator returned shape {labels.shape} for {array_xyz.shape}")
        return labels.astype(np.uint8)
