"""Zero-shot scoring: pair softmax + ensemble, NaN for absent anatomies, export round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctvlp.config import DiseaseSpec, load_spec
from ctvlp.eval.embed import EvalModel, embed_studies, extract_window, present_anatomies, study_windows
from ctvlp.eval.zeroshot import PromptBank, label_matrix, pair_probability, zero_shot
from ctvlp.tasks import build_task
from ctvlp.transforms.array import anatomy_boxes


# ----------------------------------------------------------------------------- pure scoring
def test_pair_probability_hand_computed():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prompts = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # neg = y axis, pos = x axis
    got = pair_probability(e, prompts, tau=0.5)
    p = math.exp(2) / (1 + math.exp(2))  # logits (0, 2) for row 0, (2, 0) for row 1
    np.testing.assert_allclose(got.numpy(), [p, 1 - p], rtol=1e-6)


def test_pair_probability_averages_the_ensemble():
    e = torch.tensor([[0.6, 0.8]])
    pairs = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])
    tau = 0.1
    singles = [pair_probability(e, pairs[i : i + 1], tau).item() for i in range(3)]
    both = pair_probability(e, pairs, tau).item()
    assert both == pytest.approx(sum(singles) / 3, rel=1e-6)
    assert all(0.0 <= s <= 1.0 for s in singles)
    # hand value of the first pair: sigmoid((0.6 - 0.8) / 0.1)
    assert singles[0] == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-6)


@pytest.mark.parametrize("e, p, tau", [
    (torch.zeros(2, 3), torch.zeros(1, 2, 4), 0.1),
    (torch.zeros(2, 3), torch.zeros(1, 3, 3), 0.1),
    (torch.zeros(3), torch.zeros(1, 2, 3), 0.1),
    (torch.zeros(2, 3), torch.zeros(1, 2, 3), 0.0),
])
def test_pair_probability_rejects_bad_input(e, p, tau):
    with pytest.raises(ValueError):
        pair_probability(e, p, tau)


def test_label_matrix_missing_is_nan_and_bad_values_fail():
    out = label_matrix([{"A": 1, "B": 0}, {"A": 0}], ["A", "B"])
    np.testing.assert_array_equal(np.isnan(out), [[False, False], [False, True]])
    assert out[0, 0] == 1 and out[1, 0] == 0
    with pytest.raises(ValueError, match="0 or 1"):
        label_matrix([{"A": 2}], ["A"])


# --------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def spec():
    return load_spec("jobs/specs/debug.yaml")


@pytest.fixture(scope="module")
def exports(spec, tmp_path_factory):
    """Debug-size phase-2 and phase-4 exports (random weights) and the tasks that made them."""
    out = {}
    torch.manual_seed(0)
    for phase in (2, 4):
        task = build_task(spec, phase, init={})
        out[phase] = (task, task.export(tmp_path_factory.mktemp(f"export{phase}")))
    return out


def make_samples(num_anatomies: int, n: int = 3, shape=(40, 36, 30)) -> list[dict]:
    """Decoded-sample dicts: lung (9) and heart (6) in every study, liver (8) in study 1 only;
    the heart of study 2 is larger than the 32^3 window (a second window shape)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mask = np.zeros(shape, np.uint8)
        mask[5:15, 4:20, 3:12] = 9
        mask[20:30, 10:30, 10:25] = 6
        if i == 2:
            mask[18:38, 2:34, 2:28] = 6
        if i == 1:
            mask[30:38, 2:8, 2:8] = 8
        boxes, counts = anatomy_boxes(mask, num_anatomies)
        out.append({"study_id": f"s{i}", "image": rng.integers(0, 256, shape).astype(np.uint8), "mask": mask,
                    "boxes": boxes, "voxel_counts": counts, "abnormal": np.zeros(num_anatomies, np.int64),
                    "disease_labels": {"Cardiomegaly": i % 2, "Liver cyst": 1}})
    return out


def test_from_export_round_trip(spec, exports):
    for phase, parts in ((2, {"vision", "text"}), (4, {"vision", "text", "vqvae", "perception"})):
        task, path = exports[phase]
        model = EvalModel.from_export(path)
        assert set(model.parts) == parts and model.phase == phase and model.boosted == (phase == 4)
        for name, module in model.parts.items():
            ref = task.module[name].state_dict()
            for key, value in module.state_dict().items():
                torch.testing.assert_close(value, ref[key], rtol=0, atol=0, msg=f"{name}.{key}")
            assert not module.training


def test_zero_shot_scores_in_unit_interval_nan_where_absent(spec, exports):
    model = EvalModel.from_export(exports[2][1])
    diseases = spec.eval.disease_list(spec.data)
    samples = make_samples(len(model.anatomies))
    res = zero_shot(model, samples, diseases, spec.data.eval_window, batch_size=4)
    names = res.diseases
    assert res.scores.shape == (3, len(diseases))
    lung = [k for k, d in enumerate(diseases) if d.anatomy in ("lung", "heart")]
    liver = [k for k, d in enumerate(diseases) if d.anatomy == "liver"]
    assert np.isfinite(res.scores[:, lung]).all()
    assert ((res.scores[:, lung] >= 0) & (res.scores[:, lung] <= 1)).all()
    np.testing.assert_array_equal(np.isfinite(res.scores[:, liver[0]]), [False, True, False])
    others = [k for k, d in enumerate(diseases) if d.anatomy not in ("lung", "heart", "liver")]
    assert np.isnan(res.scores[:, others]).all()
    assert res.absent_counts[names[liver[0]]] == 2 and res.absent_counts["Cardiomegaly"] == 0
    labels, scores = res.frames()
    assert labels.index.name == "VolumeName" and labels.loc["s1", "Cardiomegaly"] == 1
    assert np.isnan(labels.loc["s0", "Lung nodule"])
    # the embeddings of absent anatomies are NaN, present ones unit-norm
    emb = res.embeddings
    assert np.isnan(emb.embeds[~emb.present]).all()
    np.testing.assert_allclose(np.linalg.norm(emb.embeds[emb.present], axis=-1), 1.0, rtol=1e-5)


def test_ensemble_score_is_mean_of_single_pair_scores(spec, exports):
    model = EvalModel.from_export(exports[2][1])
    pairs = [("Not cardiomegaly.", "Cardiomegaly."), ("Heart is normal.", "Heart is enlarged.")]
    samples = make_samples(len(model.anatomies))
    emb = embed_studies(model, samples, spec.data.eval_window)
    both = PromptBank(model, [DiseaseSpec(name="C", anatomy="heart", prompts=pairs)]).score(emb)
    one = [PromptBank(model, [DiseaseSpec(name="C", anatomy="heart", prompts=[p])]).score(emb) for p in pairs]
    np.testing.assert_allclose(both, (one[0] + one[1]) / 2, rtol=1e-5)


def test_batched_windows_equal_one_by_one(spec, exports):
    model = EvalModel.from_export(exports[4][1])
    samples = make_samples(len(model.anatomies))
    a = embed_studies(model, samples, spec.data.eval_window, batch_size=8, activation_samples=16)
    b = embed_studies(model, samples, spec.data.eval_window, batch_size=1, activation_samples=16)
    np.testing.assert_allclose(a.embeds, b.embeds, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a.code_counts, b.code_counts)
    # boosted model: activations sampled and codes counted for present anatomies only
    assert np.isfinite(a.act_orig[a.present]).any() and np.isfinite(a.act_boost[a.present]).any()
    assert np.isnan(a.act_orig[~a.present]).all()
    assert (a.code_counts[a.present].sum(-1) > 0).all() and a.code_counts[~a.present].sum() == 0


@pytest.mark.parametrize("phase", [2, 4])
def test_shared_windows_equal_one_window_per_anatomy(spec, exports, phase):
    """A window shared by every anatomy of a study (one encoder pass) gives each anatomy the
    embedding (and, boosted, the code counts) of its own single-anatomy window."""
    model = EvalModel.from_export(exports[phase][1])
    samples = make_samples(len(model.anatomies))
    roi = (48, 48, 32)  # no shorter than the volumes: one window per study
    assert all(len(study_windows(s, roi)) == 1 for s in samples)
    emb = embed_studies(model, samples, roi, batch_size=3, activation_samples=8)
    for i, s in enumerate(samples):
        for j in present_anatomies(s):
            img, msk = extract_window(s["image"], s["mask"], s["boxes"][j], j, roi)
            with torch.no_grad():
                res = model.forward_windows(torch.from_numpy(img)[None, None], torch.from_numpy(msk)[None])
            np.testing.assert_allclose(emb.embeds[i, j], res["embeds"][0, j].numpy(), rtol=1e-4, atol=1e-5)
            if phase == 4:
                codes = model.code_indices(res["orig4"], res["flags4"][:, j], torch.tensor([j]))[0]
                want = np.bincount(codes[res["flags4"][0, j]].numpy(), minlength=emb.code_counts.shape[-1])
                np.testing.assert_array_equal(emb.code_counts[i, j], want)


def test_prompt_bank_needs_text_and_known_anatomy(spec, exports):
    model = EvalModel.from_export(exports[2][1])
    with pytest.raises(ValueError, match="anatomy"):
        PromptBank(model, [DiseaseSpec(name="X", anatomy="brain", prompts=[("a", "b")])])
    vision_only = EvalModel(model.spec, {"vision": model.parts["vision"]}, phase=1)
    with pytest.raises(ValueError, match="text encoder"):
        PromptBank(vision_only, spec.eval.disease_list(spec.data))


def test_clip_export_scores_each_window_as_a_whole_volume(spec, tmp_path):
    """A CLIP export (model.alignment=global) rebuilds with one pooled 'anatomy' and one text query;
    every anatomy of a window gets the window's volume embedding, and its prompts go through the
    one query whatever the anatomy."""
    from ctvlp.eval.embed import study_windows
    from ctvlp.models.visd import volume_embedding

    clip = load_spec("jobs/specs/debug.yaml", ["model.alignment=global"])
    torch.manual_seed(0)
    task = build_task(clip, 2, init={})
    model = EvalModel.from_export(task.export(tmp_path / "clip"))
    assert model.whole_volume and model.parts["vision"].num_anatomies == 1
    assert model.parts["text"].num_queries == 1
    samples = make_samples(len(model.anatomies))
    emb = embed_studies(model, samples, clip.data.eval_window)
    for i, sample in enumerate(samples):
        for js, img, _ in study_windows(sample, clip.data.eval_window):
            with torch.no_grad():
                want = volume_embedding(model.parts["vision"], torch.from_numpy(img)[None, None])[0]
            for j in js:
                np.testing.assert_allclose(emb.embeds[i, j], want.numpy(), rtol=1e-4, atol=1e-5)
    diseases = clip.eval.disease_list(clip.data)
    res = zero_shot(model, samples, diseases, clip.data.eval_window)
    heart = [k for k, d in enumerate(diseases) if d.anatomy == "heart"]
    assert np.isfinite(res.scores[:, heart]).all()
