"""TotalSegmentator v2 (``total``, 117 classes) with its networks loaded once and kept.

:class:`TotalSegmentatorSegmenter` is the one segmenter of ctvlp: ingest's Ray actor
(``ingest.segment``) wraps it, and anything else that needs masks of a raw scan calls it the same
way::

    seg = TotalSegmentatorSegmenter(SegmenterSettings.from_spec(spec))   # loads every network once
    labels_xyz = seg(array_xyz, affine)     # uint8 [X, Y, Z] `total` class ids, the input's grid
    seg.load_count                          # 1: how many times this object read its weights

It is TotalSegmentator's ``nnUNet_predict_image`` with the nnU-Net calls replaced by
``nnUNetPredictor`` objects built once (``ctvlp.segment.predictor``); everything around them is
TotalSegmentator's own code, called, not copied (``totalsegmentator`` 2.18.0): the float64 copy
of the input, ``as_closest_canonical``, ``change_spacing`` to 1.5 mm (``total``) or 3 mm
(``total_fast``) with order 1 into int32, the three-way z split of very large multi-model
inputs, merging the parts' labels into ``total`` ids (:class:`~ctvlp.segment.tasks.TotalTask`),
``change_spacing`` back with order 0 (nearest) onto the canonical grid, ``undo_canonical``. With a
roi subset it also does what ``python_api.totalsegmentator`` does: the 6 mm model (298) finds
the roi classes, ``crop_to_mask`` crops the input to them + 20 mm, only the parts holding a roi
class run, ``undo_crop``, and classes outside the subset are zeroed. What differs: no files are
written (TotalSegmentator round-trips through a temporary NIfTI), and the argmax is exported
instead of per-class probabilities (``predictor.predict_labels``).

Construction checks what inference needs and raises a RuntimeError naming each missing piece and
its fix (nnU-Net not installed, weights missing, CUDA asked for but absent); there is no
fallback mask, ever.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctvlp.segment import tasks
from ctvlp.segment.tasks import Part, TotalTask, crop_task, total_task

__all__ = ["SegmenterSettings", "TotalSegmentatorSegmenter", "TotalTask", "Part", "total_task",
           "missing_requirements", "weights_dir", "model_folder"]


@dataclass(frozen=True)
class SegmenterSettings:
    """What a segmenter loads and how it runs (plain values: picklable into Ray actors).

    Args:
        task: the models and their merge (:func:`ctvlp.segment.tasks.total_task`).
        roi_subset: ``total`` class names to keep (empty = all 117); only the parts holding one run,
            after a 6 mm crop around them, as TotalSegmentator's ``roi_subset``.
        weights_path: folder holding ``Dataset291_*`` ...; None = TotalSegmentator's own
            (``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
            ``~/.totalsegmentator/nnunet/results``).
        device: ``"auto"`` (CUDA when visible, else CPU), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        max_voxels: refuse (RuntimeError) a volume whose grid at the task's spacing has more
            voxels than this, rather than run out of device memory mid-batch (0 = no limit).
    """

    task: TotalTask
    roi_subset: tuple[str, ...] = ()
    weights_path: str | None = None
    device: str = "auto"
    max_voxels: int = 0

    @classmethod
    def from_spec(cls, spec: Any, device: str | None = None) -> SegmenterSettings:
        """From ``spec.ingest.totalseg`` (``roi_subset: grouping`` = the classes of ``data.grouping``)."""
        ts = spec.ingest.totalseg
        if ts.roi_subset == "grouping":
            roi = tuple(c for classes in spec.data.grouping_table.values() for c in classes)
        else:
            roi = tuple(ts.roi_subset) if isinstance(ts.roi_subset, list) else ()
        return cls(task=total_task(ts.task), roi_subset=tasks.roi_classes(roi), weights_path=ts.weights_path,
                   device=device or ts.device, max_voxels=ts.max_voxels)

    def models(self) -> tuple[tuple[TotalTask, Part], ...]:
        """Every (task, part) this segmenter loads: the crop model first when there is a roi subset."""
        crop = ((crop_task(), crop_task().parts[0]),) if self.roi_subset else ()
        return crop + tuple((self.task, p) for p in self.task.parts_for(self.roi_subset))

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def weights_dir(explicit: str | None = None) -> Path:
    """``explicit``, else TotalSegmentator's weights folder (``totalsegmentator.config.get_weights_dir``)."""
    if explicit:
        return Path(explicit)
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def model_folder(root: Path, part: Part) -> Path:
    """``<root>/Dataset{id}_*/{trainer}__nnUNetPlans__3d_fullres`` (nnU-Net's ``get_output_folder``).

    Raises:
        FileNotFoundError: no (or more than one) ``Dataset{id:03d}_*`` folder under ``root``.
    """
    found = sorted(root.glob(f"Dataset{part.dataset_id:03d}_*"))
    if len(found) != 1:
        raise FileNotFoundError(f"{len(found)} folders Dataset{part.dataset_id:03d}_* under {root}, expected 1")
    return found[0] / f"{part.trainer}__{tasks.PLANS}__{tasks.CONFIGURATION}"


def missing_requirements(settings: SegmenterSettings) -> list[str]:
    """Everything that stops ``settings`` from running here, each with its fix (empty = ready)."""
    problems: list[str] = []
    try:
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        problems.append(f"the nnU-Net inference stack is not installed ({exc.name}): `make install` "
                        "installs it (requirements-seg.txt, with --no-deps; see the Makefile)")
    root = weights_dir(settings.weights_path)
    for _, part in settings.models():
        try:
            folder = model_folder(root, part)
        except FileNotFoundError as exc:
            problems.append(f"weights Dataset{part.dataset_id}_* missing under {root} ({exc}): run "
                            "`totalseg_download_weights -t <task>` where there is internet, copy the folder "
                            "onto the image and set ingest.totalseg.weights_path (or TOTALSEG_WEIGHTS_PATH)")
            continue
        need = [folder / "plans.json", folder / "dataset.json", folder / "fold_0" / "checkpoint_final.pth"]
        absent = [str(p.relative_to(root)) for p in need if not p.is_file()]
        if absent:
            problems.append(f"weights of Dataset{part.dataset_id} incomplete under {root}: missing {absent}")
    device = settings.resolved_device()
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(f"device {device!r} but no CUDA GPU is visible: run on a GPU node or set "
                            "ingest.totalseg.device=cpu (slow)")
    return problems


class TotalSegmentatorSegmenter:
    """TotalSegmentator's ``total`` task on arrays, every network loaded once at construction.

    Attributes:
        settings: what it runs (:class:`SegmenterSettings`).
        load_count: how many times the networks were read from disk (1 after construction).
        num_networks: nnU-Net models held (5 for ``total``, 1 for ``total_fast``, fewer with a
            roi subset plus the 6 mm crop model).
        load_s: seconds the load took.

    Raises:
        RuntimeError: listing every missing requirement (:func:`missing_requirements`).
    """

    def __init__(self, settings: SegmenterSettings) -> None:
        problems = missing_requirements(settings)
        if problems:
            raise RuntimeError("TotalSegmentator cannot run, so no mask will be produced:\n  - "
                               + "\n  - ".join(problems)
                               + "\nOr supply masks with the data (ingest.segmentation=supplied).")
        # nnU-Net reads these at import and warns when unset; TotalSegmentator points them at the weights.
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ.setdefault(var, str(weights_dir(settings.weights_path)))
        self.settings, self.device = settings, settings.resolved_device()
        self.load_count, self.num_networks, self.load_s = 0, 0, 0.0
        self._predictors: dict[int, Any] = {}
        self._load()

    def _load(self) -> None:
        from ctvlp.segment.predictor import load_predictor

        t0 = time.perf_counter()
        root = weights_dir(self.settings.weights_path)
        for _, part in self.settings.models():
            self._predictors[part.dataset_id] = load_predictor(model_folder(root, part), self.device,
                                                               tasks.TILE_STEP_SIZE)
        self.load_count += 1
        self.num_networks = len(self._predictors)
        self.load_s = time.perf_counter() - t0

    def __call__(self, array_xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """``total`` class ids ``uint8 [X, Y, Z]`` of a HU volume, on the input's voxel grid.

        Args:
            array_xyz: ``[X, Y, Z]`` HU voxels as stored (any orientation; NIfTI axis order).
            affine: ``[4, 4]`` voxel -> RAS mm.
        """
        import nibabel as nib
        from totalsegmentator.cropping import crop_to_mask, undo_crop

        img_orig = nib.Nifti1Image(np.asarray(array_xyz), np.asarray(affine, dtype=np.float64))
        img_in = nib.Nifti1Image(img_orig.get_fdata(), img_orig.affine)  # TotalSegmentator's float64 copy
        roi = self.settings.roi_subset
        if not roi:
            return self._run(self.settings.task, self.settings.task.parts, img_in)
        ids = np.asarray([tasks.total_class_ids()[c] for c in roi])
        rough = self._run(crop_task(), crop_task().parts, img_in)
        crop_mask = np.isin(rough, ids).astype(np.uint8)
        if not crop_mask.any():
            return np.zeros(img_in.shape, dtype=np.uint8)  # as TotalSegmentator: an empty crop, an empty mask
        cropped, bbox = crop_to_mask(img_in, nib.Nifti1Image(crop_mask, img_in.affine),
                                     addon=list(tasks.ROI_CROP_ADDON_MM), dtype=np.int32)
        labels = self._run(self.settings.task, self.settings.task.parts_for(roi), cropped)
        full = undo_crop(nib.Nifti1Image(labels, cropped.affine), img_orig, bbox).get_fdata().astype(np.uint8)
        return np.where(np.isin(full, ids), full, 0).astype(np.uint8)

    def _run(self, task: TotalTask, parts: tuple[Part, ...], img_in: Any) -> np.ndarray:
        """Canonical -> task spacing -> every part, merged -> back onto ``img_in``'s grid."""
        import nibabel as nib
        from totalsegmentator.alignment import as_closest_canonical, undo_canonical
        from totalsegmentator.resampling import change_spacing

        img_can = as_closest_canonical(img_in)
        spacing = [task.resample_mm] * 3
        img_rsp = change_spacing(img_can, spacing, order=1, dtype=np.int32, nr_cpus=1)
        array = np.asanyarray(img_rsp.dataobj)
        limit = self.settings.max_voxels
        if limit and array.size > limit:
            raise RuntimeError(f"volume of {array.size} voxels at {task.resample_mm} mm exceeds "
                               f"ingest.totalseg.max_voxels={limit}")
        merged = self._predict_parts(task, parts, array, img_rsp.header.get_zooms()[:3])
        img_pred = nib.Nifti1Image(merged, img_rsp.affine)
        img_pred = change_spacing(img_pred, spacing, img_can.shape, order=0, dtype=np.uint8, nr_cpus=1,
                                  force_affine=img_can.affine)
        return np.asarray(undo_canonical(img_pred, img_in).dataobj).astype(np.uint8)

    def _predict_parts(self, task: TotalTask, parts: tuple[Part, ...], array: np.ndarray,
                       zooms: tuple[float, ...]) -> np.ndarray:
        """Run each part on ``array`` (split in three along z when TotalSegmentator would) and
        merge: ``total`` ids of a later part overwrite an earlier part's where they are nonzero."""
        from ctvlp.segment.predictor import predict_labels

        merged = np.zeros(array.shape, dtype=np.uint8)
        chunks = z_chunks(array.shape, multimodel=len(task.parts) > 1)
        for part in parts:
            lut = task.lut(part)
            for src, keep, dst in chunks:
                labels = predict_labels(self._predictors[part.dataset_id], array[:, :, src], zooms)
                if labels.max(initial=0) >= len(lut):  # a label the class map lacks: background
                    lut = np.pad(lut, (0, int(labels.max()) + 1 - len(lut)))
                mapped = lut[labels[:, :, keep]]
                np.copyto(merged[:, :, dst], mapped, where=mapped != 0)
        return merged


def z_chunks(shape: tuple[int, ...], multimodel: bool) -> list[tuple[slice, slice, slice]]:
    """``(source slab, kept slices of its result, destination)`` along z: one chunk, or TotalSegmentator's
    three overlapping thirds (margin 20) for multi-model tasks above 512*512*900 voxels with z > 200."""
    z = shape[2]
    if not (multimodel and int(np.prod(shape)) > tasks.SPLIT_VOXELS and z > tasks.SPLIT_MIN_Z):
        return [(slice(0, z), slice(0, z), slice(0, z))]
    third, m = z // 3, tasks.SPLIT_MARGIN
    return [
        (slice(0, third + m), slice(0, third), slice(0, third)),
        (slice(third + 1 - m, 2 * third + m), slice(m - 1, m - 1 + third), slice(third, 2 * third)),
        (slice(2 * third + 1 - m, z), slice(m - 1, z - (2 * third + 1 - m)), slice(2 * third, z)),
    ]
