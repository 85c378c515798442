"""The linear probe of the evaluation job on ASG's and MeDSLIP's exports: the common ground with
the prompt-based rows (``jobs.evaluate.run_probe`` over ``ctvlp.eval.embed`` embeddings of the
export, as ``jobs.evaluate`` computes them per split, without Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctvlp.eval.embed import EvalModel, embed_studies
from ctvlp.eval.zeroshot import label_matrix
from ctvlp.models.text import build_tokenizer
from ctvlp.tasks import build_task
from jobs.evaluate import SplitOutputs, run_probe
from tests.ctvlp.tasks import findings_batch as fb
from tests.ctvlp.tasks.method_training import method_spec


def split(model: EvalModel, studies: list[dict], roi, names: list[str]) -> SplitOutputs:
    """What ``jobs.evaluate.infer_splits`` returns for one split (the arrays the probe reads)."""
    emb = embed_studies(model, studies, roi)
    labels = label_matrix([s["disease_labels"] for s in studies], names)
    return SplitOutputs(emb.study_ids, {"embeds": emb.embeds, "present": emb.present, "labels": labels})


@pytest.mark.parametrize("method", ["asg", "medslip"])
def test_probe_runs_on_the_export(method, tmp_path):
    """Untrained exports: the probe still reads each finding off the frozen embeddings (whole-organ
    looks change every feature of the image), so an AUC well above chance shows that the probe got
    the finding's own embedding and labels, not a misaligned row."""
    spec = method_spec(method, "eval.bootstrap_samples=20", "eval.probe_epochs=200")
    torch.manual_seed(0)
    model = EvalModel.from_export(build_task(spec, 2).export(tmp_path / method))
    tok = build_tokenizer(spec.model.text.name_or_path)
    names = list(fb.FINDINGS[:2])
    anatomy_of = dict(zip(fb.FINDINGS, fb.ANATOMIES))
    train, test = (split(model, fb.samples(n, seed, tok), spec.data.eval_window, names)
                   for n, seed in ((24, 0), (24, 1)))
    assert np.isfinite(train.arrays["embeds"][train.arrays["present"]]).all()
    assert train.arrays["embeds"].std(0)[train.arrays["present"].all(0)].max() > 0  # studies differ
    result = run_probe(spec, train, test, names, anatomy_of)
    auc = result.per_disease.loc[names, "auc"]
    assert (auc >= 0.8).all(), auc.to_dict()
