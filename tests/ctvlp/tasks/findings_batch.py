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
from ctvlp.reports import parse_report
from ctvlp.synthetic.lesions import Finding
from ctvlp.synthetic.reports import write_report

ANATOMIES = ("lung", "heart", "esophagus", "aorta")
FINDINGS = ("Lung nodule", "Cardiomegaly", "Hiatal hernia", "Arterial wall calcification")
BOXES = ((4, 14, 4, 14), (4, 14, 18, 28), (18, 28, 4, 14), (18, 28, 18, 28))  # (h0, h1, w0, w1)
LOCATIONS = (("right upper lobe", "left lower lobe"), (), (), ("ascending", "descending"))  # Finding.location
SLICES = (6, 26)
SIZE = (32, 32, 32)


def _plant(image: np.ndarray, j: int, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    """Finding j over its whole organ: bright, dark, a checkerboard, slabs (+ noise)."""
    h0, h1, w0, w1 = box
    d, h, w = np.indices((SLICES[1] - SLICES[0], h1 - h0, w1 - w0))
    looks = (np.full(d.shape, 250.0), np.zeros(d.shape), 250.0 * ((d + h + w) % 2), 250.0 * (d // 2 % 2))
    image[SLICES[0]:SLICES[1], h0:h1, w0:w1] = looks[j] + rng.normal(0.0, 5.0, d.shape)


def _finding(j: int, rng: np.random.Generator) -> Finding:
    """Organ j's finding with the details the corpus's report templates read (size, place, severity)."""
    return Finding(FINDINGS[j], ANATOMIES[j], side=str(rng.choice(["left", "right"])),
                   location=str(rng.choice(LOCATIONS[j])) if LOCATIONS[j] else None,
                   size_mm=float(rng.integers(6, 25)), details={"severity": str(rng.choice(["mild", "moderate"]))})


def report_texts(present: np.ndarray, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Per-anatomy texts and labels as ingest stores them for the synthetic corpus: the corpus's
    report of the present findings (``ctvlp.synthetic.reports.write_report``) split by the rule
    parser (``ctvlp.reports.parse_report``): "Cardiomegaly. Mild cardiomegaly is noted." or
    "heart shows no significant abnormalities. Heart size is normal.". Findings are named only
    where present, so "Not X." never occurs in them (unlike :func:`prompt_texts`)."""
    findings = [_finding(j, rng) for j in range(len(ANATOMIES)) if present[j]]
    parsed = parse_report(*write_report(findings, False, rng), ANATOMIES)
    return [parsed[a][0] for a in ANATOMIES], np.asarray([parsed[a][1] for a in ANATOMIES], np.int64)


def prompt_texts(present: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-anatomy texts that are the evaluation's prompt pair: "Lung nodule." / "Not lung nodule."."""
    texts = [f"{f}." if p else f"Not {f.lower()}." for f, p in zip(FINDINGS, present)]
    return texts, present.astype(np.int64)


def samples(n: int, seed: int, tokenizer, labelled: int = 2, max_length: int = 64,
            texts: str = "prompts") -> list[dict]:
    """``n`` decoded studies drawn by ``seed``; the labels table holds the first ``labelled`` findings.
    ``texts``: "prompts" (:func:`prompt_texts`) or "reports" (:func:`report_texts`, drawn from a
    second generator so that the images are the same either way)."""
    if texts not in ("prompts", "reports"):
        raise ValueError(f"texts must be 'prompts' or 'reports', got {texts!r}")
    rng, text_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    out = []
    for i in range(n):
        image = rng.normal(70.0, 5.0, SIZE)
        mask = np.zeros(SIZE, np.uint8)
        present = rng.integers(0, 2, len(ANATOMIES))
        boxes = []
        for j, (h0, h1, w0, w1) in enumerate(BOXES):
            mask[SLICES[0]:SLICES[1], h0:h1, w0:w1] = j + 1
            image[SLICES[0]:SLICES[1], h0:h1, w0:w1] += 30.0 + 90.0 * rng.random()
            if present[j]:
                _plant(image, j, (h0, h1, w0, w1), rng)
            boxes.append([SLICES[0], SLICES[1], h0, h1, w0, w1])
        study_texts, abnormal = report_texts(present, text_rng) if texts == "reports" else prompt_texts(present)
        out.append({
            "study_id": f"study_{seed}_{i}", "split": "train",
            "image": np.clip(image, 0, 255).astype(np.uint8), "mask": mask,
            "boxes": np.asarray(boxes, np.int32),
            "voxel_counts": np.asarray([(mask == j + 1).sum() for j in range(len(ANATOMIES))], np.int64),
            "abnormal": abnormal, "texts": study_texts,
            "input_ids": [np.asarray(x, np.int64) for x in tokenize_texts(tokenizer, study_texts, max_length)],
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
