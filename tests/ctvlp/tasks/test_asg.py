"""ASG (3D) as phase 2's task: it learns findings from its reports (zero-shot AUC >= 0.9 after 50
steps on a fixed batch) and not from shuffled ones (<= 0.6); report joining, init, export, bf16."""

from __future__ import annotations

import pytest
import torch

from ctvlp import golden
from ctvlp.tasks import build_task
from ctvlp.tasks.asg import ASGTask
from tests.ctvlp.tasks.method_training import method_spec, train_and_score


@pytest.fixture(scope="module")
def spec():
    return method_spec("asg")


@pytest.mark.xfail(strict=False, reason="KNOWN GAP (issue 24): measured clean AUC 0.78 (seed 0; 0.69-0.79 over lr "
                   "3e-4..3e-3, tau 0.2, irl_weight 1) < 0.9; 0.72 (lung 1.0, heart 0.44) with per-anatomy texts as "
                   "ingest stores them (findings_batch texts='reports', model.text.max_length=160). With the prompt "
                   "texts, 'Not' is the only word telling a report's findings apart, so one global embedding scored "
                   "by 'X.' vs 'Not X.' ranks scans by their number of findings: AUC 0.773 exactly for 4 "
                   "independent p=1/2 findings")
def test_learns_findings_from_its_reports(spec):
    """Prompt scores of the shared evaluation (each anatomy window's global embedding against the
    catalogue's prompt pair, embedded as reports) on the batch it trained on."""
    auc, task = train_and_score(spec, shuffle=False)
    assert auc >= 0.9, auc


def test_shuffled_reports_teach_nothing(spec):
    auc, _ = train_and_score(spec, shuffle=True)
    assert auc <= 0.6, auc


def test_join_report_concatenates_the_anatomy_texts():
    from ctvlp.models.asg import join_report

    ids = torch.tensor([[[101, 5, 6, 102, 0], [101, 7, 102, 0, 0], [0, 0, 0, 0, 0]],
                        [[101, 8, 102, 0, 0], [101, 9, 10, 11, 102], [101, 102, 0, 0, 0]]])
    rep, mask, span = join_report(ids, (ids != 0).long(), 101, 102, 0, max_length=64)
    assert rep.tolist() == [[101, 5, 6, 7, 102, 0], [101, 8, 9, 10, 11, 102]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert span[0].long().tolist() == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0] * 6]
    assert span[1].long().tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0] * 6]
    # max_length 4: [CLS] + two body tokens + [SEP]; later anatomies lose their tail first
    rep, _, span = join_report(ids, (ids != 0).long(), 101, 102, 0, max_length=4)
    assert rep.tolist() == [[101, 5, 6, 102], [101, 8, 9, 102]]
    assert not span[0, 1].any() and span[1, 1].long().tolist() == [0, 0, 1, 0]


def test_starts_from_a_visd_encoder_and_scores_prompts_as_reports(spec, tmp_path):
    from ctvlp.config import load_spec
    from ctvlp.eval.embed import EvalModel

    visd = build_task(load_spec("jobs/specs/debug.yaml", ["data.grouping=chest"]), 2, init={})
    donor = visd.export(tmp_path / "p2")
    task = build_task(spec, 2, init={"vision_encoder": donor})
    assert isinstance(task, ASGTask)
    for k, v in task.module["vision"].encoder.state_dict().items():
        assert torch.equal(v, visd.module["vision"].encoder.state_dict()[k]), k
    with pytest.raises(ValueError, match="only phases.phase2.init.vision_encoder"):
        build_task(spec, 2, init={"text_encoder": donor})
    model = EvalModel.from_export(task.export(tmp_path / "asg"))
    assert model.method == "asg" and model.has_text and sorted(model.parts) == ["tags", "text", "vision"]
    text = model.parts["text"]
    ids = torch.tensor([[2, 30, 31, 3]])
    # a prompt is embedded as a report whatever anatomy query the scorer asks for
    torch.testing.assert_close(text(ids, torch.ones_like(ids), torch.tensor([3])), text(ids, torch.ones_like(ids)))
    assert float(text.temperature()) == pytest.approx(0.07)


def test_bf16_training_tracks_float32():
    """The GPU path's configuration on CPU (DeepSpeed + bf16 autocast), 6 golden steps: every
    step's loss within 5 % of the float32 run. Looser than the phases' 2 %: IRA, ARSA and ERL
    divide cosines of bf16-computed unit vectors by the released fixed tau = 0.07, so bf16's
    relative rounding (2^-8) becomes ~0.06 per logit; measured 2.8 % at step 2."""
    overrides = ["methods.phase2_task=asg"]
    fp32 = golden.golden_run(2, overrides, steps=6)
    bf16 = golden.golden_run(2, overrides, steps=6, bf16=True)
    for i, (a, b) in enumerate(zip(fp32.losses, bf16.losses)):
        assert abs(a - b) <= 0.05 * abs(a), f"step {i}: float32 {a}, bf16 {b}"
    assert fp32.losses != bf16.losses
    assert set(fp32.steps[0]) >= {"ira_loss", "arsa_loss", "irl_loss", "erl_loss"}


def test_the_whole_report_is_cut_at_the_report_limit_not_one_texts():
    """IRA/ERL read the joined report up to ``model.report_max_length``: a short per-anatomy limit
    (``model.text.max_length``) must not drop the later organs' sentences from ARSA."""
    from ctvlp.models.text import build_tokenizer
    from tests.ctvlp.tasks import findings_batch as fb

    batch = fb.training_batch(fb.samples(4, 0, build_tokenizer("tiny")))
    counts = []
    for limit in (64, 8):  # 8 tokens would hold only the first anatomy's text
        torch.manual_seed(0)
        task = build_task(method_spec("asg", f"model.text.max_length={limit}"), 2)
        counts.append(task.training_step(batch)[1]["arsa_anatomies"])
    assert counts[0] == counts[1] > 4, counts
