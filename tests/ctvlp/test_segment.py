"""ctvlp.segment: clear errors when TotalSegmentator cannot run, the predictor cache, class ids."""

from __future__ import annotations

import inspect
import types

import nibabel as nib
import numpy as np
import pytest

from ctvlp import segment
from ctvlp.anatomy import CHEST, group_lut, ts_total_classes, ts_total_ids
from ctvlp.transforms.array import group_mask


@pytest.fixture
def weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    (tmp_path / "w").mkdir()
    return tmp_path / "w"


def test_weights_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    assert segment.weights_dir() == tmp_path / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "x"))
    assert segment.weights_dir() == tmp_path / "x"


@pytest.mark.parametrize("fast,ids", [(True, [297]), (False, [291, 292, 293, 294, 295])])
def test_missing_weights_are_named_with_the_fix(weights, fast, ids):
    problems = segment.missing_requirements(fast=fast, device="cpu", allow_cpu=True)
    missing = [p for p in problems if p.startswith("weights")]
    assert [int(p.split("Dataset")[1].split("_")[0]) for p in missing] == ids
    assert all(str(weights) in p and "totalseg_download_weights" in p for p in missing)
    for task_id in ids:
        (weights / f"Dataset{task_id}_TotalSegmentator_total").mkdir()
    assert not [p for p in segment.missing_requirements(fast, "cpu", True) if p.startswith("weights")]


def test_device_problems(weights, monkeypatch):
    assert any("allow_cpu" in p for p in segment.missing_requirements(True, "cpu", allow_cpu=False))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert any("no CUDA GPU" in p for p in segment.missing_requirements(True, "gpu"))


def test_constructor_raises_one_clear_error_listing_everything(weights, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError) as err:
        segment.TotalSegmentatorSegmenter(fast=True, device="gpu")
    msg = str(err.value)
    assert "no mask will be produced" in msg and "Dataset297" in msg and "no CUDA GPU" in msg
    assert "ingest.segmentation=supplied" in msg
    try:
        import nnunetv2  # noqa: F401
    except ImportError:  # the base env installs totalsegmentator --no-deps
        assert "nnU-Net inference stack is not installed" in msg


class FakePredictor:
    loads = 0

    def __init__(self, tile_step_size=0.5, perform_everything_on_device=True, device=None):
        self.device = device

    def initialize_from_trained_model_folder(self, folder, use_folds, checkpoint_name="checkpoint_final.pth"):
        FakePredictor.loads += 1
        self.folder = folder

    def predict_from_files(self, *a, **k):
        return self.folder


def test_predictor_cache_loads_each_model_once():
    module = types.SimpleNamespace(nnUNetPredictor=FakePredictor)
    cache = segment.install_predictor_cache(module)
    assert segment.install_predictor_cache(module) is cache  # idempotent
    # totalsegmentator.nnunet picks its nnU-Net API by inspecting these keywords.
    assert "perform_everything_on_device" in inspect.signature(module.nnUNetPredictor).parameters
    FakePredictor.loads = 0
    for folder in ("m297", "m297", "m297", "m291"):
        p = module.nnUNetPredictor(tile_step_size=0.5, perform_everything_on_device=True, device="cuda")
        p.initialize_from_trained_model_folder(folder, use_folds=[0], checkpoint_name="checkpoint_final.pth")
        assert p.predict_from_files() == folder
    assert FakePredictor.loads == 2 and cache.num_loads == 2
    with pytest.raises(AttributeError, match="before initialize"):
        module.nnUNetPredictor().predict_from_files()


def test_call_returns_total_class_ids_that_group_with_the_lut():
    ids = ts_total_ids()
    assert len(ts_total_classes()) == 117 and ids["heart"] == 51 and ids["aorta"] == 52
    image = np.full((6, 5, 4), -1000, np.int16)
    labels = np.zeros(image.shape, np.float32)
    labels[1:3, 1:3, 1:3] = ids["lung_lower_lobe_right"]
    labels[4, 4, 3] = ids["atrial_appendage_left"]
    seg = object.__new__(segment.TotalSegmentatorSegmenter)  # skip the environment checks
    seg.fast, seg.device = True, "gpu"
    calls = []
    seg._run = lambda img, out, **kw: calls.append(kw) or nib.Nifti1Image(labels, img.affine)
    raw = seg(image, np.diag([-1.0, -1.0, 2.0, 1.0]))
    assert raw.dtype == np.uint8 and calls[0]["task"] == "total" and calls[0]["fast"] is True
    grouped = group_mask(raw, group_lut(CHEST))
    assert set(np.unique(grouped)) == {0, 1, 2} and (grouped == 1).sum() == 8 and grouped[4, 4, 3] == 2
    seg._run = lambda img, out, **kw: nib.Nifti1Image(labels[:-1], img.affine)
    with pytest.raises(RuntimeError, match="shape"):
        seg(image, np.eye(4))
