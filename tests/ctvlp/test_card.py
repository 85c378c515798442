"""ctvlp.card: the model card of an export, before and after evaluation, from the export's own files."""

from __future__ import annotations

import json

import pytest
import torch

from ctvlp.card import CARD, EVALUATION, META, data_facts, evaluation_record, write_card
from ctvlp.config import load_spec
from ctvlp.tasks import build_task

INDEX = {"splits": {"train": {"num_samples": 530}, "valid": {"num_samples": 56}, "test": {"num_samples": 314}},
         "num_quarantined": 3, "quarantine_reasons": {"oblique": 2, "too_small": 1}}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    spec = load_spec("jobs/specs/debug.yaml")
    torch.manual_seed(0)
    out = build_task(spec, 2, init={}).export(tmp_path_factory.mktemp("card") / "export")
    meta = {"run_name": "debug-phase2-abc", "selection": {"kind": "last"}, "data": data_facts(spec, INDEX, "ctrate")}
    (out / META).write_text(json.dumps(meta))
    return spec, out


def test_card_says_what_the_model_is_what_it_saw_and_what_it_is_not(export):
    spec, out = export
    card = write_card(out).read_text()
    assert card.startswith("---\nlibrary_name: ctvlp\n")
    for needle in ("phase 2", "anatomy-level image-report alignment (anatomy-wise InfoNCE", "`vision`", "`text`",
                   "studies per split (ingest index): test 314, train 530, valid 56; "
                   "quarantined 3 (oblique 2, too_small 1)",
                   "CC BY-NC-SA 4.0", "preset `demo`", "grouping `chest-abdomen`, M = 16",
                   "text encoder init: none: a randomly initialised", "Not evaluated yet", "not a medical device",
                   "run: `debug-phase2-abc`", "Predictor.from_export", "name: debug"):
        assert needle in card, needle
    assert json.loads((out / "config.json").read_text())["git_commit"] in card


def test_the_evaluation_rewrites_the_card_with_its_table_and_thresholds(export):
    import numpy as np

    from ctvlp.eval.metrics import evaluate, frames_from_arrays

    spec, out = export
    diseases = spec.eval.disease_list(spec.data)[:3]
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, (40, 3)).astype(float), rng.random((40, 3))
    result = evaluate(*frames_from_arrays([f"s{i}" for i in range(40)], [d.name for d in diseases], labels, scores),
                      n_bootstrap=50)
    record = evaluation_record(result, diseases, split="test", num_scans=40, report="s3://b/report.html")
    (out / EVALUATION).write_text(json.dumps(record, allow_nan=False))
    card = write_card(out).read_text()
    assert "Not evaluated yet" not in card and "on the `test` split (40 scans)" in card and "95% CI" in card
    assert "| Disease |" in card and diseases[0].name in card and "s3://b/report.html" in card
    assert set(record["thresholds"]) == {d.name for d in diseases}
    assert all(0.0 <= t <= 1.0 for t in record["thresholds"].values())
    assert record["diseases"][0]["prompts"] == [list(p) for p in diseases[0].prompts]
    assert (out / CARD).is_file()
