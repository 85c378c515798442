"""TotalSegmentator's ``total`` task as data: which nnU-Net models, at which spacing, merged how.

Read from the installed ``totalsegmentator`` package (pinned at 2.18.0 in requirements.txt), so the
models, trainers, spacings and class ids never drift from the release whose weights are on disk:

=============  ============================  ==========  =============================================
task           nnU-Net datasets               spacing     network labels -> ``total`` class ids
=============  ============================  ==========  =============================================
``total``      291 organs, 292 vertebrae,     1.5 mm      each part's ``class_map_5_parts[...]``
               293 cardiac, 294 muscles,                  (names) -> ``class_map["total"]`` ids,
               295 ribs                                   later parts overwrite earlier ones
``total_fast`` 297                            3 mm        identity (the network predicts 117 ids)
crop model     298 (for a roi subset)         6 mm        identity
=============  ============================  ==========  =============================================

(``map_tasks_config.TASK_CONFIGS["total"]["sub_modes"]``, ``map_to_binary.class_map_5_parts``,
``map_taskid_to_partname_ct``, and ``python_api.totalsegmentator`` for the roi-subset crop model.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

PLANS = "nnUNetPlans"  # TotalSegmentator's default plans identifier (python_api: plans="nnUNetPlans")
CONFIGURATION = "3d_fullres"  # DEFAULT_CONFIG["model"]
FOLDS = (0,)  # DEFAULT_CONFIG["folds"]
TILE_STEP_SIZE = 0.8  # nnUNet_predict_image: step_size 0.8 for the total tasks
ROI_CROP_ADDON_MM = (20.0, 20.0, 20.0)  # python_api: crop_addon for roi_subset (mm per axis)
# nnUNet_predict_image splits the resampled image in three along z above this many voxels (and
# only when the task runs several models), with this margin of slices: memory, not accuracy.
SPLIT_VOXELS, SPLIT_MIN_Z, SPLIT_MARGIN = 512 * 512 * 900, 200, 20


@dataclass(frozen=True)
class Part:
    """One nnU-Net model of a task.

    Args:
        dataset_id: nnU-Net dataset id (``Dataset{id:03d}_*`` under the weights folder).
        trainer: the trainer name of its result folder (``{trainer}__nnUNetPlans__3d_fullres``).
        classes: network label -> ``total`` class name (the label ids of its ``dataset.json``).
    """

    dataset_id: int
    trainer: str
    classes: dict[int, str] = field(hash=False, compare=True)


@dataclass(frozen=True)
class TotalTask:
    """A task: its models (merged in order: a later part's labels overwrite an earlier part's),
    the isotropic spacing they run at, and the crop model used with a roi subset."""

    name: str
    resample_mm: float
    parts: tuple[Part, ...]

    def lut(self, part: Part) -> np.ndarray:
        """``uint8 [max label + 1]``: the part's network labels -> ``total`` class ids (0 stays 0)."""
        ids = total_class_ids()
        lut = np.zeros(max(part.classes) + 1, dtype=np.uint8)
        for label, name in part.classes.items():
            lut[label] = ids[name]
        return lut

    def parts_for(self, roi_subset: tuple[str, ...]) -> tuple[Part, ...]:
        """The parts holding a class of ``roi_subset`` (all parts when it is empty), as
        ``nnUNet_predict_image`` selects them."""
        if not roi_subset:
            return self.parts
        wanted = set(roi_subset)
        return tuple(p for p in self.parts if wanted & set(p.classes.values()))


@lru_cache(maxsize=1)
def total_class_ids() -> dict[str, int]:
    """``total`` class name -> id (1..117), ``totalsegmentator.map_to_binary.class_map["total"]``."""
    from totalsegmentator.map_to_binary import class_map

    return {str(v): int(k) for k, v in class_map["total"].items()}


def _identity_part(dataset_id: int, trainer: str) -> Part:
    from totalsegmentator.map_to_binary import class_map

    return Part(dataset_id, trainer, {int(k): str(v) for k, v in class_map["total"].items()})


@lru_cache(maxsize=4)
def total_task(name: str) -> TotalTask:
    """``"total"`` (five models, 1.5 mm), ``"total_fast"`` (one model, 3 mm) or ``"total_fastest"``
    (one model, 6 mm: the crop model of a roi subset), as TotalSegmentator 2.18.0 defines them."""
    from totalsegmentator.map_tasks_config import TASK_CONFIGS
    from totalsegmentator.map_to_binary import class_map_5_parts, map_taskid_to_partname_ct

    modes = {"total": "default", "total_fast": "fast", "total_fastest": "fastest"}
    if name not in modes:
        raise ValueError(f"unknown TotalSegmentator task {name!r}; known: {sorted(modes)}")
    cfg = TASK_CONFIGS["total"]["sub_modes"][modes[name]]
    ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
    if len(ids) == 1:
        parts = (_identity_part(ids[0], cfg["trainer"]),)
    else:
        parts = tuple(
            Part(i, cfg["trainer"], {int(k): str(v) for k, v in class_map_5_parts[map_taskid_to_partname_ct[i]].items()})
            for i in ids
        )
    return TotalTask(name, float(cfg["resample"]), parts)


def crop_task() -> TotalTask:
    """The model ``python_api.totalsegmentator`` runs first with a roi subset: ``total`` at 6 mm
    (task 298, ``nnUNetTrainer_4000epochs_NoMirroring``), whose roi voxels + 20 mm bound the crop."""
    return total_task("total_fastest")


def roi_classes(roi_subset: tuple[str, ...]) -> tuple[str, ...]:
    """Validate a roi subset against the class map (sorted by class id); ValueError names the bad ones."""
    ids = total_class_ids()
    unknown = sorted(set(roi_subset) - set(ids))
    if unknown:
        raise ValueError(f"roi subset names {unknown} are not TotalSegmentator 'total' classes")
    return tuple(sorted(set(roi_subset), key=ids.__getitem__))
