"""One nnU-Net model in memory: built once from its result folder, then run on arrays.

:func:`load_predictor` builds an ``nnUNetPredictor`` from a trained model folder
(``plans.json``, ``dataset.json``, ``fold_0/checkpoint_final.pth``) the way
``nnUNetPredictor.initialize_from_trained_model_folder`` does, except for one step: that method
finds the network builder by importing every trainer module of nnU-Net, and some of those
(Primus) import ``timm``, which imports ``torchvision``, whose PyPI wheel is a CUDA build that
breaks beside the CPU torch (docs: shared stack notes, "TotalSegmentator"). TotalSegmentator's
trainers (``nnUNetTrainerNoMirroring``, ``nnUNetTrainer_4000epochs_NoMirroring``) do not override
``nnUNetTrainer.build_network_architecture``, which is ``get_network_from_plans``; we call that
directly and hand the result to ``manual_initialization``. A checkpoint of any other trainer is
refused with a message.

:func:`predict_labels` is ``predict_single_npy_array`` with one change: it takes the argmax at
the network's grid and, only if that grid differs from the input's, resamples the *label map*
(nearest) instead of every class's logits (nnU-Net's export resamples each class separately,
which takes minutes on a CPU: MIC-DKFZ/nnUNet#2540). When the input is already at the model's
spacing, as TotalSegmentator makes it, the two are the same computation.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# Trainers whose network is nnUNetTrainer's default (get_network_from_plans): TotalSegmentator's.
DEFAULT_NETWORK_TRAINERS = frozenset({
    "nnUNetTrainer", "nnUNetTrainerNoMirroring", "nnUNetTrainer_4000epochs_NoMirroring",
    "nnUNetTrainer_2000epochs_NoMirroring", "nnUNetTrainer_4000epochs", "nnUNetTrainer_2000epochs",
})


def load_predictor(folder: Path, device: str, tile_step_size: float, fold: int = 0,
                   checkpoint_name: str = "checkpoint_final.pth") -> Any:
    """An initialised ``nnUNetPredictor`` for the model in ``folder`` (no mirroring: TotalSegmentator
    predicts with ``tta=False``)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    # weights_only=False as nnU-Net itself loads them: its checkpoints pickle numpy objects.
    ckpt = torch.load(folder / f"fold_{fold}" / checkpoint_name, map_location="cpu", weights_only=False)
    trainer = ckpt["trainer_name"]
    if trainer not in DEFAULT_NETWORK_TRAINERS:
        raise RuntimeError(f"{folder}: trainer {trainer!r} may build its own network; known: "
                           f"{sorted(DEFAULT_NETWORK_TRAINERS)}")
    dataset_json = load_json(str(folder / "dataset.json"))
    with warnings.catch_warnings():  # TotalSegmentator's v2 weights use the old plans format
        warnings.filterwarnings("ignore", message="Detected old nnU-Net plans format")
        plans = PlansManager(load_json(str(folder / "plans.json")))
        config = plans.get_configuration(ckpt["init_args"]["configuration"])
    dev = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints "... only supported for cuda"
        predictor = nnUNetPredictor(
            tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=False,
            perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
            verbose_preprocessing=False, allow_tqdm=False,
        )
    network = get_network_from_plans(
        config.network_arch_class_name, config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans, config, dataset_json),
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        allow_init=True, deep_supervision=False,
    )
    network.load_state_dict(ckpt["network_weights"])
    predictor.manual_initialization(network, plans, config, [ckpt["network_weights"]], dataset_json,
                                    trainer, ckpt.get("inference_allowed_mirroring_axes"))
    return predictor


def nearest_resize(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``shape`` (voxel centres, align_corners=False)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    index = [np.minimum(((np.arange(n) + 0.5) * old / n).astype(np.int64), old - 1)
             for n, old in zip(shape, labels.shape)]
    return labels[np.ix_(*index)]


def predict_labels(predictor: Any, array_xyz: np.ndarray, zooms_xyz: tuple[float, ...]) -> np.ndarray:
    """Network labels ``uint8 [X, Y, Z]`` of a canonical (RAS) volume, on its grid.

    Args:
        array_xyz: ``[X, Y, Z]`` voxels as TotalSegmentator hands them to nnU-Net (canonical, at the
            task's spacing, int32 HU).
        zooms_xyz: the voxel sizes of its NIfTI header (mm).

    nnU-Net's readers (``NibabelIOWithReorient``, ``SimpleITKIO``) give the network ``[1, Z, Y, X]``
    with spacing ``(z, y, x)``; we build the same array and reverse the result back.
    """
    import torch
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    plans, config = predictor.plans_manager, predictor.configuration_manager
    image = np.asarray(array_xyz).transpose(2, 1, 0)[None].astype(np.float32)
    props: dict[str, Any] = {"spacing": [float(z) for z in zooms_xyz[::-1]]}
    preprocessor = config.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case_npy(image, None, props, plans, config, predictor.dataset_json)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    labels = np.asarray(predictor.label_manager.convert_logits_to_segmentation(logits))
    labels = nearest_resize(labels, tuple(props["shape_after_cropping_and_before_resampling"]))
    full = np.zeros(props["shape_before_cropping"], dtype=np.uint8)
    full = insert_crop_into_image(full, labels.astype(np.uint8), props["bbox_used_for_cropping"])
    return np.ascontiguousarray(full.transpose(plans.transpose_backward).transpose(2, 1, 0))
