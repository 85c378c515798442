"""Zero-shot validation during training (jobs.runner._ZeroShotValidation), in one process: on the
same crops it gives the macro AUC that the evaluation path (an export through EvalModel and
PromptBank) gives, for phases 2 and 4; the spec refuses it where there is no text side."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ctvlp import golden
from ctvlp.tasks import build_task


def _batches(spec, n: int = 3, b: int = 6) -> list[dict]:
    diseases = spec.eval.disease_list(spec.data)
    anatomies = list(spec.data.anatomies)
    out = []
    for batch in golden.golden_batches(spec, n, b, seed=11):
        ab = batch["abnormal"].numpy()
        batch["disease_labels"] = [{d.name: int(ab[i, anatomies.index(d.anatomy)]) for d in diseases}
                                   for i in range(b)]
        out.append(batch)
    return out


@pytest.mark.parametrize("phase", [2, 4])
def test_validation_auc_equals_the_evaluation_path(phase, tmp_path):
    from ctvlp.eval.embed import EvalModel
    from ctvlp.eval.zeroshot import PromptBank, label_matrix, macro_auc
    from jobs.runner import _ZeroShotValidation

    torch.manual_seed(0)
    spec = golden.golden_spec(phase)
    task = build_task(spec, phase, init={})
    task.module.eval()
    engine = SimpleNamespace(device=torch.device("cpu"), torch_autocast_enabled=lambda: False)
    loop = SimpleNamespace(spec=spec, task=task, engine=engine,
                           plan=SimpleNamespace(train=SimpleNamespace(channels_last=False)))
    zs = _ZeroShotValidation(loop)
    batches = _batches(spec)
    for batch in batches:
        zs.add(batch)
    got = zs.macro_auc()
    assert 0.0 <= got <= 1.0

    model = EvalModel.from_export(task.export(tmp_path / "export"))
    bank = PromptBank(model, spec.eval.disease_list(spec.data))
    scores, labels = [], []
    for batch in batches:
        out = model.forward_windows(batch["image"], batch["mask"])
        emb = SimpleNamespace(embeds=out["embeds"].numpy(), present=out["valid"].numpy())
        scores.append(bank.score(emb))
        labels.append(label_matrix(batch["disease_labels"], bank.names))
    assert got == pytest.approx(macro_auc(np.concatenate(scores), np.concatenate(labels)), abs=1e-9)


def test_zero_shot_validation_needs_a_text_side_and_auc_selection_needs_it():
    from ctvlp.config import load_spec

    with pytest.raises(Exception, match="only phases 2 and 4"):
        load_spec(None, ["phases.phase1.validate_zero_shot=true"])
    with pytest.raises(Exception, match="needs phase2.validate_zero_shot=true"):
        load_spec(None, ["phases.phase2.select_best=valid_macro_auc"])


def test_macro_auc_skips_single_class_columns():
    from ctvlp.eval.zeroshot import macro_auc

    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, np.nan]])
    labels = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    assert macro_auc(scores, labels) == pytest.approx(1.0)  # column 2 has one finite class only
    assert np.isnan(macro_auc(scores[:, 1:], np.ones((3, 1))))
