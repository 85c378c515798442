"""Zero-shot diagnosis per anatomy with (negative, positive) prompt pairs (ViSD-Boost sec. 4.1),
or with an existence classifier's scores for exports that score by one (MeDSLIP, ASG's tags:
:class:`ExistenceBank`).

For a disease of anatomy j with prompt pairs ``(n_p, p_p)``, p = 1..P, and the anatomy window's
embedding ``v`` (:mod:`ctvlp.eval.embed`)::

    score = 1/P * sum_p softmax([v . t(n_p), v . t(p_p)] / tau)[1]

with ``t(.)`` the unit-norm prompt embedding from the text encoder (anatomy j's query when the
text pooling is per-anatomy) and ``tau`` the model's learned alignment temperature, as in the
released ``model.py`` (``img_feat @ [t_neg, t_pos].T / temp``, softmax over the two prompts).
With P = 1 this is exactly the release; P > 1 is the prompt ensemble. Prompt embeddings are
computed once per disease. A scan without the disease's anatomy is not evaluated for it (NaN),
and counted (:attr:`ZeroShotResult.absent_counts`).

Shape legend: S studies, M anatomies, E embed dim, P prompt pairs, D diseases, N windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctvlp.eval.embed import EvalModel, StudyEmbeddings, embed_studies
from ctvlp.eval.metrics import frames_from_arrays
from ctvlp.models.text import pad_batch, tokenize_texts


def pair_probability(embeds_NE: torch.Tensor, prompts_P2E: torch.Tensor, tau: float) -> torch.Tensor:
    """P(positive) of each embedding, softmax over each (neg, pos) pair, mean over the P pairs.

    Args:
        embeds_NE: [N, E] image embeddings. prompts_P2E: [P, 2, E] (index 0 negative, 1 positive).
        tau: temperature (logits = similarity / tau), > 0.
    Returns:
        [N] scores in [0, 1].
    """
    if embeds_NE.ndim != 2 or prompts_P2E.ndim != 3 or prompts_P2E.shape[1] != 2 \
            or prompts_P2E.shape[-1] != embeds_NE.shape[-1]:
        raise ValueError(f"need embeds [N, E] and prompts [P, 2, E]; got {tuple(embeds_NE.shape)} "
                         f"and {tuple(prompts_P2E.shape)}")
    if not tau > 0:
        raise ValueError(f"temperature must be > 0, got {tau}")
    logits_NP2 = torch.einsum("ne,pke->npk", embeds_NE.float(), prompts_P2E.float()) / tau
    return logits_NP2.softmax(-1)[..., 1].mean(-1)


class PromptBank:
    """Prompt-pair embeddings of every disease, computed once.

    Args:
        model: an :class:`EvalModel` with a text part.
        diseases: objects with ``name``, ``anatomy`` and ``prompts`` [(neg, pos), ...]
            (``spec.eval.disease_list(spec.data)``).
    """

    def __init__(self, model: EvalModel, diseases: Sequence[Any]) -> None:
        if not model.has_text:
            raise ValueError(f"zero-shot scoring needs a text encoder; the phase-{model.phase} export has "
                             f"only {sorted(model.parts)} (use a phase-2 or phase-4 export, or the linear probe)")
        names = [d.name for d in diseases]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"disease names must be unique and non-empty, got {names}")
        self.names = names
        self.anatomy_index: dict[str, int] = {}
        self.prompts: dict[str, torch.Tensor] = {}  # name -> [P, 2, E]
        for d in diseases:
            if d.anatomy not in model.anatomies:
                raise ValueError(f"disease {d.name!r}: anatomy {d.anatomy!r} is not one of the model's "
                                 f"anatomies {model.anatomies}")
            if not d.prompts or any(len(pair) != 2 for pair in d.prompts):
                raise ValueError(f"disease {d.name!r}: prompts must be a non-empty list of (negative, positive)")
            self.anatomy_index[d.name] = model.anatomies.index(d.anatomy)
            self.prompts[d.name] = self.encode_texts(model, [t for pair in d.prompts for t in pair],
                                                self.anatomy_index[d.name]).view(len(d.prompts), 2, -1)
        self.tau = float(model.parts["text"].temperature().detach())

    @staticmethod
    @torch.no_grad()
    def encode_texts(model: EvalModel, texts: list[str], anatomy: int) -> torch.Tensor:
        """[N, E] text embeddings of ``texts`` through anatomy ``anatomy``'s text query (the one
        query of a whole-report text encoder, CLIP's)."""
        ids = tokenize_texts(model.tokenizer, texts, model.spec.model.text.max_length)
        pad_id = model.tokenizer.pad_token_id or 0
        ids_NT, mask_NT = pad_batch(ids, pad_id)
        query = anatomy if model.parts["text"].num_queries > 1 else 0
        which = torch.full((len(texts),), query, dtype=torch.long, device=model.device)
        with model.autocast():
            out = model.parts["text"](ids_NT.to(model.device), mask_NT.to(model.device), which)
        return out.float().cpu()

    @classmethod
    def from_text_encoder(cls, spec: Any, text: torch.nn.Module, diseases: Sequence[Any],
                          device: torch.device, bf16: bool = False) -> "PromptBank":
        """A bank over a live text encoder (validation during training), not an export. The
        caller puts ``text`` in eval mode; nothing here changes it."""
        return cls(_LiveText(spec, text, device, bf16), diseases)  # type: ignore[arg-type]

    def score(self, emb: StudyEmbeddings) -> np.ndarray:
        """Scores [S, D] (columns in ``self.names`` order); NaN where the anatomy is absent."""
        s = emb.embeds.shape[0]
        out = np.full((s, len(self.names)), np.nan)
        for k, name in enumerate(self.names):
            j = self.anatomy_index[name]
            rows = np.flatnonzero(emb.present[:, j])
            if rows.size:
                v = torch.from_numpy(np.ascontiguousarray(emb.embeds[rows, j]))
                out[rows, k] = pair_probability(v, self.prompts[name], self.tau).numpy()
        return out


class _LiveText:
    """The attributes of :class:`EvalModel` that :class:`PromptBank` reads, over a live module."""

    def __init__(self, spec: Any, text: torch.nn.Module, device: torch.device, bf16: bool) -> None:
        from ctvlp.models.text import build_tokenizer

        self.spec, self.device, self.bf16, self.phase = spec, torch.device(device), bf16, 0
        self.parts, self.has_text = {"text": text}, True
        self.anatomies = list(spec.data.anatomies)
        self.tokenizer = build_tokenizer(spec.model.text.name_or_path)

    def autocast(self):
        from ctvlp.precision import bf16_autocast

        return bf16_autocast(self.device, self.bf16)


class ExistenceBank:
    """Zero-shot scores of a closed-vocabulary existence classifier (MeDSLIP's pathology stream,
    ASG's tag decoder).

    Disease d of anatomy j scores, on each study, the classifier's P(present) of the finding named
    d on anatomy j's evaluation window (``StudyEmbeddings.finding_scores``): the same windows,
    studies, labels and metrics as prompt scoring, only the score differs (released MeDSLIP
    ``test.py``: softmax of the existence logits, not an image-text similarity). A disease whose
    name is not in the model's finding book cannot be scored: NaN, like a scan without its anatomy.

    Args:
        model: an :class:`EvalModel` with ``finding_names`` (an existence classifier's export).
        diseases: objects with ``name`` and ``anatomy`` (``spec.eval.disease_list(spec.data)``).
    """

    def __init__(self, model: EvalModel, diseases: Sequence[Any]) -> None:
        if not model.finding_names:
            raise ValueError("existence scoring needs an export with a finding book (MeDSLIP, or ASG with "
                             "methods.asg.zero_shot: tags)")
        self.names = [d.name for d in diseases]
        self.anatomy_index = {d.name: model.anatomies.index(d.anatomy) for d in diseases}
        self.finding_index = {d.name: model.finding_names.index(d.name) for d in diseases
                              if d.name in model.finding_names}
        self.unscored = [n for n in self.names if n not in self.finding_index]

    def score(self, emb: StudyEmbeddings) -> np.ndarray:
        """Scores [S, D] (columns in ``self.names`` order); NaN where the anatomy is absent or the
        finding is not in the book."""
        out = np.full((emb.embeds.shape[0], len(self.names)), np.nan)
        for k, name in enumerate(self.names):
            if name in self.finding_index:
                j = self.anatomy_index[name]
                rows = np.flatnonzero(emb.present[:, j])
                out[rows, k] = emb.finding_scores[rows, j, self.finding_index[name]]
        return out


def scoring_bank(model: EvalModel, diseases: Sequence[Any]) -> PromptBank | ExistenceBank | None:
    """How an export scores diseases: its existence classifier when it scores by one (MeDSLIP; ASG
    with ``methods.asg.zero_shot: tags``: ``model.finding_names`` is set), else prompts with a text
    part, else None (a vision-only export: the linear probe is all it can do)."""
    if getattr(model, "finding_names", None):
        return ExistenceBank(model, diseases)
    if model.has_text:
        return PromptBank(model, diseases)
    return None


def macro_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean ROC AUC over the columns (diseases) with both classes among their finite cells;
    NaN when none has. scores, labels: [S, D] (NaN = not evaluated)."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for d in range(scores.shape[1]):
        ok = np.isfinite(scores[:, d]) & np.isfinite(labels[:, d])
        y = labels[ok, d]
        if ok.any() and 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, scores[ok, d]))
    return float(np.mean(aucs)) if aucs else float("nan")


def label_matrix(disease_labels: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
    """[S, D] float labels from each study's ``disease_labels`` dict (NaN where a name is missing)."""
    out = np.full((len(disease_labels), len(names)), np.nan)
    for i, labels in enumerate(disease_labels):
        for k, name in enumerate(names):
            value = labels.get(name)
            if value is not None:
                if value not in (0, 1):
                    raise ValueError(f"disease label {name!r} must be 0 or 1, got {value!r}")
                out[i, k] = float(value)
    return out


@dataclass
class ZeroShotResult:
    """Scores and labels of S studies x D diseases (NaN = not evaluated) plus the embeddings."""

    study_ids: list[str]
    diseases: list[str]
    anatomy_of: dict[str, str]
    scores: np.ndarray  # [S, D]
    labels: np.ndarray  # [S, D]
    embeddings: StudyEmbeddings

    @property
    def absent_counts(self) -> dict[str, int]:
        """Scans not evaluated for each disease because they lack its anatomy."""
        return {d: int(np.isnan(self.scores[:, k]).sum()) for k, d in enumerate(self.diseases)}

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(labels, scores) DataFrames keyed by VolumeName for :func:`ctvlp.eval.metrics.evaluate`."""
        return frames_from_arrays(self.study_ids, self.diseases, self.labels, self.scores)


def zero_shot(model: EvalModel, samples: Sequence[dict], diseases: Sequence[Any], roi: Sequence[int],
              batch_size: int = 8, activation_samples: int = 64,
              bank: PromptBank | ExistenceBank | None = None) -> ZeroShotResult:
    """Score decoded samples (``ctvlp.data.decode_sample``) for every disease.

    Args:
        diseases: ``spec.eval.disease_list(spec.data)``; roi: ``spec.data.eval_window``.
        batch_size: windows per forward pass; bank: reuse prompt embeddings across calls
            (default :func:`scoring_bank`: prompts, or an existence classifier's scores).
    """
    bank = bank or scoring_bank(model, diseases)
    if bank is None:
        raise ValueError(f"the phase-{model.phase} export has only {sorted(model.parts)}: it has neither a text "
                         "encoder nor an existence classifier to score with (use the linear probe)")
    emb = embed_studies(model, samples, roi, batch_size, activation_samples)
    labels = label_matrix([s.get("disease_labels") or {} for s in samples], bank.names)
    return ZeroShotResult(emb.study_ids, list(bank.names), {d.name: d.anatomy for d in diseases},
                          bank.score(emb), labels, emb)
