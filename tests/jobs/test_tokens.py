"""jobs.tokens: the cached level-4 token rows and their padding back into phase-3 batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctvlp.config import load_spec
from ctvlp.data import decode_sample
from ctvlp.eval.embed import extract_window
from ctvlp.models.boost import encode_tokens
from ctvlp.models.visd import build_vision_model
from jobs import tokens


@pytest.fixture(scope="module")
def setup():
    from tests.jobs.test_evaluate import shard_row

    spec = load_spec("jobs/specs/tune_debug.yaml")
    m = spec.data.num_anatomies
    torch.manual_seed(0)
    vision = build_vision_model(spec.model, m, hu_window=spec.data.hu_window).eval()
    samples = [decode_sample(shard_row(f"s{i}", "valid", i, m)) for i in range(3)]
    return spec, vision, samples


def test_one_row_per_present_anatomy_with_its_own_tokens(setup):
    spec, vision, samples = setup
    cols = tokens.window_instances(vision, samples, spec.data.eval_window, batch_size=2)
    present = [(str(s["study_id"]), j) for s in samples for j in range(spec.data.num_anatomies)
               if s["boxes"][j][0] >= 0 and s["voxel_counts"][j] > 0]
    assert sorted(zip(cols["study_id"], cols["anatomy"])) == sorted(present)  # liver only in odd studies
    # each row equals anatomy j's flagged level-4 tokens of its window, computed directly
    for r in range(len(cols["anatomy"])):
        s = next(x for x in samples if x["study_id"] == cols["study_id"][r])
        j = cols["anatomy"][r]
        img, msk = extract_window(s["image"], s["mask"], s["boxes"][j], j, spec.data.eval_window)
        with torch.no_grad():
            enc = encode_tokens(vision, torch.from_numpy(img)[None, None], torch.from_numpy(msk)[None])
        want = enc["tokens"][-1][0][enc["flags"][-1][0, j]].numpy()
        got = np.frombuffer(cols["tokens"][r], np.float32).reshape(cols["num_tokens"][r], -1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert cols["abnormal"][r] == s["abnormal"][j]


def test_padding_round_trip_and_collate():
    sets = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((1, 2), np.float32)]
    t, m = tokens.pad_instances([a.tobytes() for a in sets], [3, 1], 2)
    assert t.shape == (2, 3, 2) and m.tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(t[0], torch.from_numpy(sets[0])) and torch.equal(t[1, 1:], torch.zeros(2, 2))
    batch = tokens.TokenCollate()({"tokens": np.array([a.tobytes() for a in sets], dtype=object),
                                   "num_tokens": np.array([3, 1]), "anatomy": np.array([2, 0]),
                                   "abnormal": np.array([0, 1])})
    assert torch.equal(batch["tokens"], t) and torch.equal(batch["token_mask"], m)
    assert batch["anatomy"].tolist() == [2, 0] and batch["abnormal"].dtype == torch.int64
    with pytest.raises(ValueError, match="expected 2 x 2"):
        tokens.pad_instances([sets[0].tobytes()], [2], 2)


def test_frozen_encoder_uri_takes_vision_encoder_then_aligned_model():
    base = ["phases.phase3.init.vision_encoder=null"]
    spec = load_spec("jobs/specs/tune_debug.yaml", ["phases.phase3.init.vision_encoder=/exports/p2"])
    assert tokens.frozen_encoder_uri(spec) == "/exports/p2"
    spec = load_spec("jobs/specs/tune_debug.yaml", [*base, "phases.phase3.init.aligned_model=/exports/aligned"])
    assert tokens.frozen_encoder_uri(spec) == "/exports/aligned"
    # the validator refuses a phase 3 without either, so build one past it to check our own error
    spec = spec.model_copy(update={"phases": spec.phases.model_copy(update={
        "phase3": spec.phases.phase3.model_copy(update={"init": spec.phases.phase3.init.model_copy(
            update={"aligned_model": None})})})})
    with pytest.raises(ValueError, match="vision_encoder .or aligned_model."):
        tokens.frozen_encoder_uri(spec)
