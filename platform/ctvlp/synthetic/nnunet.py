"""Tiny nnU-Net result folders in TotalSegmentator's weights layout, with random weights.

No TotalSegmentator weights can be downloaded where tests run, so tests and benchmarks write
stand-ins that the real loading code reads unchanged::

    <root>/Dataset291_TotalSegmentator_part1_organs_1559subj/
        nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/
            plans.json          old (nnU-Net 2.1) plans format, as TotalSegmentator v2's weights ship
            dataset.json        labels: the part's class names, CT channel
            fold_0/checkpoint_final.pth   network_weights, trainer_name, init_args.configuration

The network is a 2-stage ``PlainConvUNet`` with 4 and 8 features on 16^3 patches (a few thousand
parameters, He-initialised as nnU-Net does, seeded): it predicts nothing meaningful, but every
label of the part appears somewhere, so merging, class ids and alignment can be tested.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

PATCH = (16, 16, 16)


def _plans(name: str, spacing: float, patch: tuple[int, int, int]) -> dict:
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [64, 64, 64],
        "spacing": [spacing] * 3, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "unet_max_num_features": 8,
        "n_conv_per_stage_encoder": [1, 1], "n_conv_per_stage_decoder": [1], "num_pool_per_axis": [1, 1, 1],
        "pool_op_kernel_sizes": [[1, 1, 1], [2, 2, 2]], "conv_kernel_sizes": [[3, 3, 3], [3, 3, 3]],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
    }
    return {
        "dataset_name": name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 60.0, "median": 40.0, "min": -1024.0,
            "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 250.0}},
    }


def write_tiny_model(root: Path, dataset_id: int, trainer: str, classes: dict[int, str],
                     spacing: float, seed: int = 0, patch: tuple[int, int, int] = PATCH) -> Path:
    """Write one model folder under ``root``; returns the result folder.

    Args:
        dataset_id / trainer: as TotalSegmentator names them (``ctvlp.segment.tasks``).
        classes: network label -> class name (1..n; 0 is background).
        spacing: the model's isotropic spacing (mm) in its plans.
    """
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = f"Dataset{dataset_id:03d}_TinyTotalSegmentator"
    folder = Path(root) / name / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    plans = _plans(name, spacing, patch)
    labels = {"background": 0, **{v: int(k) for k, v in sorted(classes.items())}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    with warnings.catch_warnings():  # the old plans format is the point: TotalSegmentator's weights use it
        warnings.filterwarnings("ignore", message="Detected old nnU-Net plans format")
        config = PlansManager(json.loads(json.dumps(plans))).get_configuration("3d_fullres")
    torch.manual_seed(seed)
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, 1, len(labels),
                                 allow_init=True, deep_supervision=False)
    torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def write_tiny_task(root: Path, task, seed: int = 0) -> list[Path]:
    """Tiny stand-ins of every part of ``task`` (a :class:`ctvlp.segment.tasks.TotalTask`)."""
    return [write_tiny_model(root, p.dataset_id, p.trainer, p.classes, task.resample_mm, seed + i)
            for i, p in enumerate(task.parts)]
