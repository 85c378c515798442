"""ctvlp.segment on tiny random nnU-Nets in TotalSegmentator's layout (the real loading code).

Invariants: networks load once; the label map lies on the input grid in `total` ids of the parts
that ran; the same physical volume stored in another voxel order gives the same labels (the
canonical reorientation); the in-memory nnU-Net call equals nnU-Net's own file path (what
TotalSegmentator runs); parts merge in order; a roi subset keeps only its classes.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctvlp import segment
from ctvlp.segment import SegmenterSettings, TotalSegmentatorSegmenter, tasks
from ctvlp.segment.predictor import nearest_resize, predict_labels

AFFINE = np.diag([0.9, 0.9, 2.5, 1.0])


def phantom(seed: int = 0, shape=(32, 30, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full(shape, -1000, np.int16)
    img[4:-4, 4:-4, 2:-2] = 40
    img[10:20, 8:18, 6:16] = 300
    return img + rng.integers(-20, 20, shape).astype(np.int16)


@pytest.fixture(scope="module")
def seg(tiny_totalseg):
    root, two = tiny_totalseg
    return TotalSegmentatorSegmenter(SegmenterSettings(two, weights_path=str(root), device="cpu"))


def test_loads_once_labels_on_the_input_grid_in_total_ids(seg, tiny_totalseg):
    _, two = tiny_totalseg
    allowed = {0} | {int(i) for p in two.parts for i in two.lut(p)[1:]}
    for k in range(3):
        labels = seg(phantom(k), AFFINE)
        assert labels.shape == (32, 30, 24) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= allowed and len(np.unique(labels)) > 3
    assert seg.load_count == 1 and seg.num_networks == 2


def test_same_physical_volume_in_another_voxel_order_gives_the_same_labels(seg):
    img = phantom(1)
    ref = seg(img, AFFINE)
    # Stored LPS with x and y flipped, then x/y axes swapped: the same voxels in space.
    flip = np.diag([-0.9, -0.9, 2.5, 1.0])
    flip[:3, 3] = [31 * 0.9, 29 * 0.9, 0]
    assert (seg(img[::-1, ::-1], flip)[::-1, ::-1] == ref).all()
    swap = flip[:, [1, 0, 2, 3]]
    assert (seg(img[::-1, ::-1].transpose(1, 0, 2), swap).transpose(1, 0, 2)[::-1, ::-1] == ref).all()


def test_in_memory_prediction_equals_nnunets_file_path(seg, tmp_path):
    """What TotalSegmentator does: save the canonical 1.5 mm image, nnU-Net reads and exports it."""
    import nibabel as nib
    from totalsegmentator.resampling import change_spacing

    img = nib.Nifti1Image(phantom(2).astype(np.float64), AFFINE)
    rsp = change_spacing(img, [1.5] * 3, order=1, dtype=np.int32, nr_cpus=1)
    nib.save(rsp, tmp_path / "s01_0000.nii.gz")
    predictor = seg._predictors[291]
    (tmp_path / "out").mkdir()
    predictor.predict_from_files_sequential([[str(tmp_path / "s01_0000.nii.gz")]], str(tmp_path / "out"),
                                            save_probabilities=False, overwrite=True,
                                            folder_with_segs_from_prev_stage=None)
    from_files = np.asarray(nib.load(tmp_path / "out" / "s01.nii.gz").dataobj)
    ours = predict_labels(predictor, np.asanyarray(rsp.dataobj), rsp.header.get_zooms())
    assert (ours == from_files).all() and ours.any()


def test_parts_merge_in_order_later_nonzero_wins(seg, tiny_totalseg):
    import nibabel as nib
    from totalsegmentator.resampling import change_spacing

    _, two = tiny_totalseg
    rsp = change_spacing(nib.Nifti1Image(phantom(3).astype(np.float64), AFFINE), [1.5] * 3, order=1,
                         dtype=np.int32, nr_cpus=1)
    array, zooms = np.asanyarray(rsp.dataobj), rsp.header.get_zooms()
    first, second = (two.lut(p)[predict_labels(seg._predictors[p.dataset_id], array, zooms)] for p in two.parts)
    merged = seg._predict_parts(two, two.parts, array, zooms)
    assert (merged == np.where(second != 0, second, first)).all()


def test_roi_subset_crops_runs_its_parts_and_keeps_only_its_classes(tiny_totalseg):
    root, two = tiny_totalseg
    roi = tasks.roi_classes(("heart", "aorta", "esophagus"))
    seg = TotalSegmentatorSegmenter(SegmenterSettings(two, roi_subset=roi, weights_path=str(root), device="cpu"))
    assert seg.num_networks == 3  # the 6 mm crop model + organs (esophagus) + cardiac
    labels = seg(phantom(4), AFFINE)
    ids = tasks.total_class_ids()
    assert set(np.unique(labels)) <= {0, ids["heart"], ids["aorta"], ids["esophagus"]}


def test_z_chunks_reproduce_totalsegmentators_three_way_split():
    assert segment.z_chunks((100, 100, 300), multimodel=True) == [(slice(0, 300),) * 3]
    shape = (512, 512, 901)
    chunks = segment.z_chunks(shape, multimodel=True)
    assert segment.z_chunks(shape, multimodel=False) == [(slice(0, 901),) * 3]
    covered = np.zeros(901, int)
    for src, keep, dst in chunks:
        ks = range(*keep.indices(src.stop - src.start))
        assert len(ks) == dst.stop - dst.start and src.start + ks[0] == dst.start
        covered[dst] += 1
    assert (covered == 1).all()
    third = 901 // 3  # nnUNet_predict_image: [:third+20], [third+1-20:2*third+20], [2*third+1-20:]
    assert [c[0] for c in chunks] == [slice(0, third + 20), slice(third - 19, 2 * third + 20), slice(2 * third - 19, 901)]


def test_nearest_resize_maps_voxel_centres():
    lab = np.arange(4, dtype=np.uint8).reshape(4, 1, 1)
    assert nearest_resize(lab, (8, 1, 1)).ravel().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert nearest_resize(lab, (2, 1, 1)).ravel().tolist() == [1, 3]


def test_max_voxels_refuses_large_volumes(tiny_totalseg):
    root, two = tiny_totalseg
    seg = TotalSegmentatorSegmenter(SegmenterSettings(two, weights_path=str(root), device="cpu", max_voxels=1000))
    with pytest.raises(RuntimeError, match="max_voxels=1000"):
        seg(phantom(5), AFFINE)


def test_missing_weights_and_device_are_named_with_the_fix(tmp_path, monkeypatch):
    import torch

    settings = SegmenterSettings(tasks.total_task("total"), weights_path=str(tmp_path), device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    problems = segment.missing_requirements(settings)
    assert [int(p.split("Dataset")[1][:3]) for p in problems if p.startswith("weights")] == [291, 292, 293, 294, 295]
    assert any("no CUDA GPU" in p for p in problems)
    with pytest.raises(RuntimeError) as err:
        TotalSegmentatorSegmenter(settings)
    assert "no mask will be produced" in str(err.value) and "ingest.segmentation=supplied" in str(err.value)


def test_weights_dir_follows_totalsegmentator(tmp_path, monkeypatch):
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    assert segment.weights_dir() == tmp_path / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "x"))
    assert segment.weights_dir() == tmp_path / "x" and segment.weights_dir("/w") == segment.Path("/w")
