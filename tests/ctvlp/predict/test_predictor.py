"""ctvlp.predict.Predictor: a raw scan scores what the evaluation pipeline scores for the ingested
study (parity), in any stored orientation, from a DICOM series, without a mask through a
segmenter; bad scans are refused with ingest's reasons; the evaluation's thresholds give its calls.

All on CPU with a phase-4 debug export (tests/ctvlp/predict/case.py).
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from ctvlp.predict import Predictor, ScanRejected, SegmentationUnavailable
from tests.ctvlp.predict.case import CorpusMaskSegmenter

PARITY_ATOL = 1e-6  # the documented tolerance: same arrays, windows batched differently (float32)


@pytest.fixture(scope="module")
def predictor(case):
    return Predictor.from_export(case.export, device="cpu")


def scores_of(pred, names) -> np.ndarray:
    return np.array([pred.probabilities[n] for n in names])


def assert_same_scores(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=0, atol=PARITY_ATOL)


def test_raw_scan_scores_equal_the_evaluation_pipeline(case, job_outputs, predictor):
    names = [d.name for d in case.spec.eval.disease_list(case.spec.data)]
    assert predictor.diseases == names
    ids = [str(s) for s in job_outputs["study_id"]]
    assert sorted(ids) == case.study_ids
    for i, sid in enumerate(ids):
        image, mask = case.files(sid)
        pred = predictor(image, mask=mask)
        assert pred.study_id == sid
        assert_same_scores(scores_of(pred, names), job_outputs["scores"][i])
        assert np.array_equal(pred.present, job_outputs["present"][i])
        np.testing.assert_allclose(pred.embeddings[pred.present], job_outputs["embeds"][i][pred.present], atol=1e-5)
    assert np.isfinite(job_outputs["scores"]).sum() >= 40  # most diseases' anatomies are in the tiny scans


def test_many_scans_in_one_call_equal_one_at_a_time(case, predictor):
    sids = case.study_ids[:3]
    together = predictor.predict_many([case.files(s)[0] for s in sids], [case.files(s)[1] for s in sids])
    for sid, pred in zip(sids, together):
        alone = predictor(*case.files(sid))
        assert_same_scores(scores_of(pred, predictor.diseases), scores_of(alone, predictor.diseases))


@pytest.mark.parametrize("codes", [("L", "P", "I"), ("S", "A", "R")])
def test_the_same_scan_saved_in_another_orientation_scores_the_same(case, predictor, tmp_path, codes):
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    image, mask = case.files(case.study_ids[0])
    saved = {}
    for name, src, dtype in (("image", image, np.float32), ("mask", mask, np.uint8)):
        img = nib.load(src)
        data = np.asarray(img.dataobj).astype(dtype)  # float32 HU: re-saving keeps every value
        t = ornt_transform(io_orientation(img.affine), axcodes2ornt(codes))
        turned = nib.Nifti1Image(apply_orientation(data, t), img.affine @ inv_ornt_aff(t, data.shape))
        assert nib.aff2axcodes(turned.affine) == codes
        for tag, out in (("as_stored", nib.Nifti1Image(data, img.affine)), ("turned", turned)):
            saved[tag, name] = tmp_path / f"{tag}_{name}.nii.gz"
            nib.save(out, saved[tag, name])
    base = predictor(saved["as_stored", "image"], mask=saved["as_stored", "mask"])
    turned = predictor(saved["turned", "image"], mask=saved["turned", "mask"])
    assert turned.meta["orig_axcodes"] == "".join(codes) != base.meta["orig_axcodes"]
    assert_same_scores(scores_of(turned, predictor.diseases), scores_of(base, predictor.diseases))


def test_a_dicom_series_folder_scores_like_its_nifti(case, predictor, tmp_path):
    from ctvlp.transforms.io import dicom_series_bytes

    image, mask = case.files(case.study_ids[1])
    # RAS-ordered so that the slice axis points along row x column (dicom_series_bytes' contract);
    # DICOM stores integer HU, so the NIfTI to compare with holds the same integers
    img, msk = nib.as_closest_canonical(nib.load(image)), nib.as_closest_canonical(nib.load(mask))
    hu = np.round(np.asarray(img.dataobj, dtype=np.float64)).astype(np.int16)
    series = tmp_path / "series"
    series.mkdir()
    for k, blob in enumerate(dicom_series_bytes(hu, img.affine)):
        (series / f"slice{k:03d}.dcm").write_bytes(blob)
    nib.save(msk, tmp_path / "mask_ras.nii.gz")
    nib.save(nib.Nifti1Image(hu, img.affine), tmp_path / "integer_hu.nii.gz")
    from_dicom = predictor(series, mask=tmp_path / "mask_ras.nii.gz")
    from_nifti = predictor(tmp_path / "integer_hu.nii.gz", mask=tmp_path / "mask_ras.nii.gz")
    assert from_dicom.study_id == "series" and from_dicom.meta["source_format"] == "dicom"
    assert_same_scores(scores_of(from_dicom, predictor.diseases), scores_of(from_nifti, predictor.diseases))


def test_without_a_mask_the_segmenter_runs_on_the_scan(case, predictor):
    image, mask = case.files(case.study_ids[2])
    segmenter = CorpusMaskSegmenter(mask)
    seg = Predictor(predictor.model, predictor.study, case.spec.eval.disease_list(case.spec.data),
                    segmenter=segmenter)
    pred = seg(image)  # no mask
    assert segmenter.calls == 1 and pred.meta["segmented"]
    assert_same_scores(scores_of(pred, seg.diseases), scores_of(predictor(image, mask=mask), seg.diseases))


def test_without_a_mask_and_without_segmentation_the_message_says_what_to_do(case, tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "no-weights"))  # whatever this machine has
    predictor = Predictor.from_export(case.export, device="cpu")
    with pytest.raises(SegmentationUnavailable, match=r"(?s)no mask was given.*TotalSegmentator.*mask=\.\.\."):
        predictor(case.files(case.study_ids[0])[0])


@pytest.mark.parametrize("fault, reason", [
    ("truncated", "truncated"), ("garbage", "unreadable"), ("missing", "unreadable"), ("oblique", "oblique"),
    ("two_slices", "too_small"), ("mask_misaligned", "mask_mismatch"), ("not_ct", "not_ct"),
])
def test_bad_scans_are_refused_with_ingests_reason(case, predictor, tmp_path, fault, reason):
    from tests.ingest.corpus import tilted

    image, mask = case.files(case.study_ids[0])
    img, msk = nib.load(image), nib.load(mask)
    bad, bad_mask = tmp_path / "bad.nii.gz", mask
    if fault == "truncated":
        raw = image.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    elif fault == "garbage":
        bad.write_bytes(b"not a volume" * 50)
    elif fault == "missing":
        bad = tmp_path / "nowhere.nii.gz"
    elif fault == "oblique":
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), tilted(img.affine, 20.0)), bad)
        bad_mask = tmp_path / "mask.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(msk.dataobj), tilted(img.affine, 20.0)), bad_mask)
    elif fault == "two_slices":
        nib.save(img.slicer[:, :, 10:12], bad)
        bad_mask = tmp_path / "mask.nii.gz"
        nib.save(msk.slicer[:, :, 10:12], bad_mask)
    elif fault == "mask_misaligned":
        bad = image
        bad_mask = tmp_path / "mask.nii.gz"
        nib.save(msk.slicer[:-2], bad_mask)
    elif fault == "not_ct":
        nib.save(nib.Nifti1Image((np.asarray(img.dataobj) // 10 + 200).astype(np.int16), img.affine), bad)
    with pytest.raises(ScanRejected) as err:
        predictor(bad, mask=bad_mask)
    assert err.value.reason == reason
    assert str(tmp_path) not in err.value.detail  # details never carry paths (ingest's rule)


def test_the_evaluations_thresholds_travel_in_the_export_and_give_its_calls(case, job_outputs, tmp_path):
    """evaluation.json as jobs/evaluate.py writes it (thresholds of a table scored on these studies)
    -> a reloaded predictor calls yes exactly where the evaluation's rule (score > t) does."""
    from ctvlp.eval.metrics import evaluate, frames_from_arrays
    from ingest.storage import Storage
    from jobs.evaluate import record_in_export

    export = tmp_path / "export"
    shutil.copytree(case.export, export)
    diseases = case.spec.eval.disease_list(case.spec.data)
    names, scores = [d.name for d in diseases], job_outputs["scores"]
    # labels with both classes wherever a disease has 2+ distinct scores: the top half positive
    labels = np.where(np.isfinite(scores), (scores >= np.nanmedian(scores, axis=0)).astype(float), np.nan)
    result = evaluate(*frames_from_arrays(job_outputs["study_id"], names, labels, scores), n_bootstrap=0)
    card = record_in_export(str(export), {"zero-shot (threshold on the evaluated set)": result}, diseases,
                            split="test", num_scans=len(scores), report="report.html", storage=Storage(sse=None))
    assert card == f"{export}/README.md" and "Macro AUC" in (export / "README.md").read_text()
    record = json.loads((export / "evaluation.json").read_text())
    thresholds = {d: t for d, t in record["thresholds"].items() if t is not None}
    assert len(thresholds) >= 5
    predictor = Predictor.from_export(export, device="cpu")
    for i, sid in enumerate(str(s) for s in job_outputs["study_id"]):
        pred = predictor(*case.files(sid))
        for k, name in enumerate(names):
            if name in thresholds and np.isfinite(scores[i, k]):
                assert pred.calls[name] == bool(scores[i, k] > thresholds[name]), (sid, name)
            else:
                assert pred.calls[name] is None
    top = pred.top_findings(3)
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


def test_a_report_gives_its_per_anatomy_labels(case, predictor):
    pred = predictor(*case.files(case.study_ids[0]), report=("The heart is enlarged. Lungs are clear.", ""))
    assert pred.report_labels["heart"] == 1 and pred.report_labels["lung"] == 0
    unreadable = predictor(*case.files(case.study_ids[0]), report=".")
    assert set(unreadable.report_labels.values()) == {-1}


def test_a_vision_only_export_is_refused_with_the_reason(case, tmp_path):
    from ctvlp.tasks import build_task

    export = build_task(case.spec, 1, init={}).export(tmp_path / "export1")
    with pytest.raises(ValueError, match="needs a text encoder"):
        Predictor.from_export(export, device="cpu")


def test_an_asg_export_scores_as_the_evaluation_does(case, tmp_path):
    """ASG's default zero-shot is its tag classifier: the predictor gives its P(present) per finding
    (``scoring_bank``), not prompt scores of the global embedding."""
    from ctvlp.config import load_spec
    from ctvlp.eval.zeroshot import ExistenceBank
    from ctvlp.tasks import build_task

    spec = load_spec("jobs/specs/debug.yaml", ["methods.phase2_task=asg", "phases.phase2.init.vision_encoder=null"])
    predictor = Predictor.from_export(build_task(spec, 2).export(tmp_path / "asg"), device="cpu")
    assert isinstance(predictor.bank, ExistenceBank) and not predictor.bank.unscored
    probs = predictor(*case.files(case.study_ids[0])).probabilities
    assert probs and all(0.0 < p < 1.0 for p in probs.values() if np.isfinite(p))


def test_bf16_autocast_tracks_float32(case, predictor):
    """The evaluation's precision contract on CPU: bf16 autocast forward, float32 weights and scores."""
    bf16 = Predictor.from_export(case.export, device="cpu", bf16=True)
    assert bf16.model.bf16 and not predictor.model.bf16
    image, mask = case.files(case.study_ids[0])
    a = scores_of(bf16(image, mask=mask), predictor.diseases)
    b = scores_of(predictor(image, mask=mask), predictor.diseases)
    assert np.array_equal(np.isnan(a), np.isnan(b)) and np.abs(a - b)[np.isfinite(a)].max() < 0.02
    assert all(p.dtype == torch.float32 for p in bf16.model.parts["vision"].parameters())


@pytest.mark.slow  # ~30 s of CPU: TotalSegmentator's own resampling around the tiny network
def test_without_a_mask_the_specs_totalsegmentator_runs_live(case, predictor, tmp_path, monkeypatch):
    """The no-mask path through the real segmenter (``ctvlp.segment``): TotalSegmentator's
    ``total_fast`` task (one 3 mm network, kept cheap) as a tiny random nnU-Net in its weights
    layout, built from the spec by ``build_segmenter``, its network loaded once for two scans, its
    label map on the scan's grid. Random weights give a random map, so a scan is either scored or
    refused for its anatomies (``empty_mask``) -- never anything else."""
    from ctvlp.predict.scan import build_segmenter
    from ctvlp.segment import total_task
    from ctvlp.synthetic.nnunet import write_tiny_task

    write_tiny_task(tmp_path, total_task("total_fast"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    spec = case.spec.model_copy(deep=True)
    spec.ingest.totalseg.task = "total_fast"
    seg = build_segmenter(spec, "cpu")
    live = Predictor(predictor.model, predictor.study, case.spec.eval.disease_list(case.spec.data), segmenter=seg)
    for sid in case.study_ids[:2]:
        try:
            assert live(case.files(sid)[0]).meta["segmented"]
        except ScanRejected as exc:
            assert exc.reason == "empty_mask", exc
    assert seg.num_networks == 1 and seg.load_count == 1
