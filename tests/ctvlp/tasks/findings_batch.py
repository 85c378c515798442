"""A fixed synthetic batch with visible findings, for the method tasks' learning tests.

Four organ boxes (the chest grouping's lung, heart, esophagus, aorta) over the slices of a 32^3
volume, each of a random grey level. Each organ carries its finding (the first catalogue finding
of its anatomy) independently with probability 1/2, over the whole organ and with a look of its
own (:func:`_plant`). The anatomy texts are what the parser gives: the finding's positive prompt
when present ("Lung nodule."), its negative prompt otherwise ("Not lung nodule."), and the
parser's per-anatomy label follows. The labels table holds only the first ``labelled`` findings:
the other organs' findings are seen in the images and named in the texts, but not tabulated.

Why this shape (measured while writing the tests, 50 steps of the debug models):

* Whole-organ, distinct looks: ASG and MeDSLIP read the image through query decoders whose
  attention starts uniform (release init, no positional encoding) and a classifier shared by
  all queries; they first learn "some finding is present" and need many steps to tell which.
  Small lesions, or four co-occurring tabulated findings, stay near 0.8 after 50 steps.
* Every organ varies: an organ that is normal in every study gives labels that never change
  (its parser label is always 0), and a model then learns "typical image -> absent" from the
  label marginals alone, which ranks abnormal studies higher even on shuffled reports.

Samples follow the decoded-sample contract (``ctvlp.data.decode_sample``: what the evaluation
reads); :func:`training_batch` collates them as the Ray pipeline does, ``disease_labels`` included.
:func:`shuffled_reports` gives the negative control: the reports dealt to the studies at random.
"""

from __future__ import annotations

import numpy as np
import torch

from ctvlp.data import collate
from ctvlp.models.text import tokenize_texts

ANATOMIES = ("lung", "heart", "esophagus", "aorta")
FINDINGS = ("Lung nodule", "Cardiomegaly", "Hiatal hernia", "Arterial wall calcification")
BOXES = ((4, 14, 4, 14), (4, 14, 18, 28), (18, 28, 4, 14), (18, 28, 18, 28))  # (h0, h1, w0, w1)
SLICES = (6, 26)
SIZE = (32, 32, 32)


def _plant(image: np.ndarray, j: int, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """Finding j over its whole organ: bright, dark, a checkerboard, slabs (+ noise)."""
    h0, h1, w0, w1 = box
    d, h, w = np.indices((SLICES[1] - SLICES[0], h1 - h0, w1 - w0))
    looks = (np.full(d.shape, 250.0), np.zeros(d.shape), 250.0 * ((d + h + w) % 2), 250.0 * (d // 2 % 2))
    image[SLICES[0]:SLICES[1], h0:h1, w0:w1] = looks[j] + rng.normal(0.0, 5.0, d.shape)


def samples(n: int, seed: int, tokenizer, labelled: int = 2, max_length: int = 64) -> list[dict]:
    """``n`` decoded studies drawn by ``seed``; the labels table holds the first ``labelled`` findings."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = rng.normal(70.0, 5.0, SIZE)
        mask = np.zeros(SIZE, np.uint8)
        present = rng.integers(0, 2, len(ANATOMIES))
        boxes, texts = [], []
        for j, (h0, h1, w0, w1) in enumerate(BOXES):
            mask[SLICES[0]:SLICES[1], h0:h1, w0:w1] = j + 1
            image[SLICES[0]:SLICES[1], h0:h1, w0:w1] += 30.0 + 90.0 * rng.random()
            if present[j]:
                _plant(image, j, (h0, h1, w0, w1), rng)
            boxes.append([SLICES[0], SLICES[1], h0, h1, w0, w1])
            texts.append(f"{FINDINGS[j]}." if present[j] else f"Not {FINDINGS[j].lower()}.")
        out.append({
            "study_id": f"study_{seed}_{i}", "split": "train",
            "image": np.clip(image, 0, 255).astype(np.uint8), "mask": mask,
            "boxes": np.asarray(boxes, np.int32),
            "voxel_counts": np.asarray([(mask == j + 1).sum() for j in range(len(ANATOMIES))], np.int64),
            "abnormal": present.astype(np.int64), "texts": texts,
            "input_ids": [np.asarray(x, np.int64) for x in tokenize_texts(tokenizer, texts, max_length)],
            "disease_labels": {name: int(p) for name, p in zip(FINDINGS[:labelled], present)},
        })
    return out


def training_batch(studies: list[dict]) -> dict:
    """The batch contract of a Ray batch (``jobs.data.collate_columns``): collate + disease_labels."""
    batch = collate(studies)
    batch["disease_labels"] = [s["disease_labels"] for s in studies]
    return batch


def shuffled_reports(batch: dict, generator: torch.Generator) -> dict:
    """The batch with its reports (texts, parser labels, table labels) dealt to its studies in a
    uniformly random order. Uniform, not a derangement: a derangement never gives a study its own
    report, so a study with a finding would meet slightly fewer positives than one without, and a
    model that memorises the batch would learn that anti-correlation."""
    perm = torch.randperm(batch["image"].shape[0], generator=generator)
    out = dict(batch)
    for key in ("text_ids", "text_mask", "abnormal"):
        out[key] = batch[key][perm]
    out["disease_labels"] = [batch["disease_labels"][int(k)] for k in perm]
    return out


def recalibrate_batchnorm(task, batch: dict) -> None:
    """Set every BatchNorm's running statistics to this batch's, as the evaluation reads them:
    after 50 steps at a test's learning rate the running averages (momentum 0.1) lag behind the
    weights, and eval mode would then score other features than the ones that were trained."""
    norms = [m for m in task.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets the batch's statistics
    task.train()
    with torch.no_grad():
        task.image_embeddings(batch)
    for m in norms:
        m.momentum = 0.1
