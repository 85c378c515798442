"""The comparison's methods as tasks: CLIP (phase 2 with model.alignment=global), fVLM's recipe
(jobs/specs/ablation/fvlm.yaml) and VSEI (phase 1 with model.visual_contrast=instance).

Each report-reading method trains 50 steps on one fixed synthetic batch and must then retrieve
the right report for each image (retrieval AUC >= 0.9 on that batch), while the same task trained
on report-shuffled batches (a fresh permutation of the reports every step) stays <= 0.6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctvlp.config import load_spec
from ctvlp.losses.anatomy_infonce import text_identity_keys
from ctvlp.models.text import build_tokenizer, pad_batch, tokenize_texts
from ctvlp.tasks import build_task, total_loss
from ctvlp.tasks.clip import GlobalAlignmentTask, whole_report_ids

M = 4  # chest grouping: lung, heart, esophagus, aorta
B = 8  # studies in the fixed batch (CLIP's whole-report retrieval reads 16: 16 positives, not 8)
SIZE = (16, 32, 32)
DEBUG = ["data.grouping=chest", "model.pool_dropout=0.0", "model.momentum=0.9", "data.crop_size=[16,32,32]"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("tiny")


# finding -> (organ intensity shift, lesion cube side (0 = none), lesion value, report text)
FINDINGS = {1: (0.3, 0, 0.0, "the organ is diffusely dense."), 2: (-0.3, 0, 0.0, "the organ is diffusely dark."),
            3: (0.0, 7, 1.0, "a large dense nodule."), 4: (0.0, 7, 0.0, "a large dark cyst.")}


def fixed_batch(tokenizer, seed: int = 0, b: int = B) -> dict:
    """B studies of M box anatomies with per-study organ sizes and intensities. An abnormal anatomy has one
    of four findings (diffusely dense or dark, a dense nodule or a dark cyst at a random place) and
    its report names that finding, so image and report share what tells the studies apart; no two
    studies have the same report."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = SIZE
    image = 0.3 + 0.02 * torch.randn(b, 1, d, h, w, generator=g)
    mask = torch.zeros(b, d, h, w, dtype=torch.long)
    corners = [(3, 3), (3, 17), (17, 3), (17, 17)]  # (h0, w0) of each anatomy's box
    kinds = torch.randint(0, 5, (b, M), generator=g)  # 0 = normal, else a FINDINGS key
    while len({tuple(r) for r in kinds.tolist()}) < b:
        kinds = torch.randint(0, 5, (b, M), generator=g)
    texts = []
    for i in range(b):
        for j, (h0, w0) in enumerate(corners):
            kind = int(kinds[i, j])
            shift, side, value, text = FINDINGS.get(kind, (0.0, 0, 0.0, "no significant abnormalities."))
            eh, ew = (int(v) for v in torch.randint(8, 13, (2,), generator=g))  # the study's organ size
            mask[i, 2:14, h0:h0 + eh, w0:w0 + ew] = j + 1
            image[i, 0, 2:14, h0:h0 + eh, w0:w0 + ew] = 0.4 + 0.05 * j + shift + 0.06 * float(torch.rand(1, generator=g))
            if side:
                z, y, x = (int(torch.randint(0, n - side + 1, (1,), generator=g)) for n in (12, eh, ew))
                image[i, 0, 2 + z:2 + z + side, h0 + y:h0 + y + side, w0 + x:w0 + x + side] = value
            texts.append(text)
    ids, am = pad_batch(tokenize_texts(tokenizer, texts, 32), tokenizer.pad_token_id or 0)
    return {"image": image.clamp(0, 1), "mask": mask, "abnormal": (kinds > 0).long(),
            "text_ids": ids.view(b, M, -1), "text_mask": am.view(b, M, -1)}


def shuffled(batch: dict, g: torch.Generator) -> dict:
    """The batch with its reports (texts and their labels) permuted across studies."""
    perm = torch.randperm(batch["image"].shape[0], generator=g)
    return {**batch, "text_ids": batch["text_ids"][perm], "text_mask": batch["text_mask"][perm],
            "abnormal": batch["abnormal"][perm]}


def train(task, batch: dict, shuffle: bool, lr: float, steps: int = 50) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(task.trainable_parameters(), lr=lr, weight_decay=0.0)
    task.train()
    for _ in range(steps):
        losses, _ = task.training_step(shuffled(batch, g) if shuffle else batch)
        opt.zero_grad()
        total_loss(losses).backward()
        opt.step()
        task.after_step()


@torch.no_grad()
def eval_mode(task, batch: dict) -> None:
    """Eval mode with BatchNorm statistics of the batch itself (recalibrated as SWA's
    ``update_bn`` does): the running averages of 50 steps lag behind weights that move fast, and
    the retrieval is read on the batch the model was trained on."""
    task.module.eval()
    norms = [m for m in task.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass = the batch's statistics
        m.train()
    task.module["vision"](batch["image"], batch["mask"])
    for m in norms:
        m.eval()


def pair_auc(sim: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of similarities over (image, report) pairs, positive = the image's own report."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive.ravel(), sim.ravel()))


@torch.no_grad()
def clip_retrieval_auc(task: GlobalAlignmentTask, batch: dict) -> float:
    """Whole-volume vs whole-report similarities; positives: identical reports (own one included)."""
    eval_mode(task, {**batch, "mask": torch.ones_like(batch["mask"])})
    ids, am, _ = whole_report_ids(batch["text_ids"], batch["text_mask"], 512)
    img = task.image_embeddings(batch)["embeds"][:, 0]  # [B, E] (every anatomy present)
    txt = task.module["text"](ids, am)
    key = text_identity_keys(ids[:, None], am[:, None])[:, 0]
    return pair_auc((img @ txt.t()).numpy(), (key[:, None] == key[None, :]).numpy())


@torch.no_grad()
def anatomy_retrieval_auc(task, batch: dict) -> float:
    """Per anatomy, image vs report embeddings of the batch; positives: identical anatomy texts."""
    from ctvlp.tasks.phase2 import encode_anatomy_texts

    eval_mode(task, batch)
    img = task.image_embeddings(batch)
    txt = encode_anatomy_texts(task.module["text"], batch["text_ids"], batch["text_mask"], img["valid"])
    key = text_identity_keys(batch["text_ids"], batch["text_mask"])  # [B, M]
    sims, pos = [], []
    for j in range(M):
        sims.append((img["embeds"][:, j] @ txt[:, j].t()).numpy())
        pos.append((key[:, j, None] == key[None, :, j]).numpy())
    return pair_auc(np.stack(sims), np.stack(pos))


def test_whole_report_joins_anatomy_texts_in_order(tokenizer):
    texts = ["lungs are clear.", "", "the heart is enlarged.", "aorta normal."]
    ids, am = pad_batch(tokenize_texts(tokenizer, texts, 32), tokenizer.pad_token_id or 0)
    am[1] = 0  # anatomy 1 has no text
    ids, am = ids.view(1, 4, -1), am.view(1, 4, -1)
    joined, mask, has_text = whole_report_ids(ids, am, 64)
    words = tokenize_texts(tokenizer, ["lungs are clear. the heart is enlarged. aorta normal."], 64)[0]
    assert joined[0, : int(mask.sum())].tolist() == words and bool(has_text[0])
    short, mask, _ = whole_report_ids(ids, am, 5)  # [CLS] + 3 words + [SEP]
    assert short[0].tolist() == words[:4] + words[-1:] and int(mask.sum()) == 5
    _, _, has_text = whole_report_ids(ids, torch.zeros_like(am), 64)
    assert not bool(has_text[0])


@pytest.mark.parametrize("shuffle", [False, True], ids=["paired", "shuffled"])
def test_clip_retrieves_its_reports_and_shuffled_reports_do_not(tokenizer, shuffle):
    spec = load_spec("jobs/specs/debug.yaml", [*DEBUG, "model.alignment=global",
                                               "phases.phase2.init.vision_encoder=null"])
    torch.manual_seed(0)
    task = build_task(spec, 2, init={})
    assert isinstance(task, GlobalAlignmentTask)
    batch = fixed_batch(tokenizer, b=16)
    train(task, batch, shuffle, lr=5e-4)
    auc = clip_retrieval_auc(task, batch)
    assert (auc <= 0.6) if shuffle else (auc >= 0.9), auc


@pytest.mark.parametrize("shuffle", [False, True], ids=["paired", "shuffled"])
def test_fvlm_recipe_retrieves_its_reports_and_shuffled_reports_do_not(tokenizer, shuffle):
    from jobs.ablation import row_spec

    spec = row_spec(load_spec("jobs/specs/debug.yaml", DEBUG), "fvlm")
    assert (spec.model.text.pooling, spec.model.itc_targets, spec.model.itc_reduction) == ("cls", "soft", "anatomy_sum")
    torch.manual_seed(0)
    task = build_task(spec, 2, init={})
    batch = fixed_batch(tokenizer)
    train(task, batch, shuffle, lr=2e-3)
    auc = anatomy_retrieval_auc(task, batch)
    assert (auc <= 0.6) if shuffle else (auc >= 0.9), auc


@torch.no_grad()
def view_similarities(task, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """[M, B, B] cosine similarities of the online embeddings of the batch with those of a second
    view, and the intact mask [B, M]."""
    from ctvlp.tasks.phase1 import second_view

    eval_mode(task, batch)
    torch.manual_seed(7)
    q = task.module["vision"](batch["image"], batch["mask"])
    k = task.module["vision"](*second_view(batch["image"], batch["mask"]))
    return torch.einsum("bme,kme->mbk", q["embeds"], k["embeds"]).numpy(), q["intact"].numpy()


def instance_retrieval_auc(task, batch: dict) -> float:
    """Per anatomy, each intact anatomy's second view retrieves its own first view (AUC)."""
    sim, intact = view_similarities(task, batch)
    pairs = intact.T[:, :, None] & intact.T[:, None, :]  # [M, B, B]
    own = np.broadcast_to(np.eye(sim.shape[1], dtype=bool), sim.shape)
    return pair_auc(sim[pairs], own[pairs])


def normal_pair_similarity(task, batch: dict) -> float:
    """Mean similarity of the same anatomy's normal instances in two different studies."""
    sim, intact = view_similarities(task, batch)
    normal = (batch["abnormal"].numpy() == 0) & intact  # [B, M]
    others = (normal.T[:, :, None] & normal.T[:, None, :]) & ~np.eye(sim.shape[1], dtype=bool)
    return float(sim[others].mean())


def phase1_task(contrast: str):
    spec = load_spec("jobs/specs/debug.yaml", [*DEBUG, f"model.visual_contrast={contrast}"])
    torch.manual_seed(0)
    return build_task(spec, 1, init={})


def test_vsei_never_reads_the_labels(tokenizer):
    batch = fixed_batch(tokenizer)
    a, b = phase1_task("instance"), phase1_task("instance")
    train(a, batch, shuffle=False, lr=1e-3, steps=5)
    train(b, {**batch, "abnormal": 1 - batch["abnormal"]}, shuffle=False, lr=1e-3, steps=5)
    for p, q in zip(a.module.parameters(), b.module.parameters()):
        assert torch.equal(p, q)


def test_vsei_separates_instances_where_vsed_pools_normal_anatomies(tokenizer):
    """VSEI has no reports, so no report-shuffled control: after 50 steps a study's second view
    retrieves it better than at initialisation, and normal anatomies of different studies stay
    further apart than under eq. 2 (VSED), which makes them one class."""
    batch = fixed_batch(tokenizer)
    vsei, vsed = phase1_task("instance"), phase1_task("disease")
    before = instance_retrieval_auc(vsei, batch)
    for task in (vsei, vsed):
        train(task, batch, shuffle=False, lr=1e-3)
    assert instance_retrieval_auc(vsei, batch) >= before + 0.05
    assert normal_pair_similarity(vsed, batch) > normal_pair_similarity(vsei, batch)


def test_clip_is_phase_two_only(tokenizer):
    spec = load_spec("jobs/specs/debug.yaml", [*DEBUG, "model.alignment=global"])
    for phase in (1, 3, 4):
        with pytest.raises(ValueError, match="phase 2 only"):
            build_task(spec, phase, init={})
