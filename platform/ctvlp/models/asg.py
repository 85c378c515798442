"""ASG in 3D: "Anatomical Structure-Guided Medical Vision-Language Pre-training" (Li et al.,
MICCAI 2024, arXiv 2403.09294); released code ``ASGMVLP_CODE@088e896`` (built on MGCA).

Three parts, each an export part of :class:`ctvlp.tasks.asg.ASGTask`:

``ASGVision`` (part ``vision``): the ViSD token encoder, then
  * global image embedding v = head_g(mean of the level-4 tokens), L2-normalised (ResNet-ASG:
    ``avgpool(layer4)`` -> ``global_embed``);
  * region features r_j = mean over the level-``token_level`` tokens that anatomy j's mask touches
    of normalise(head_l(token)) (the release: ``roi_align`` of the normalised patch embeddings in
    the region's box; ResNet-ASG reads ``layer3``, hence level 3 by default).
``ASGText`` (part ``text``): the project's text backbone on the *report*, rebuilt from the parser's
  anatomy texts joined in anatomy order (:func:`join_report`); report embedding t =
  normalise(head_g(pooled states)), pooled by ``model.text.pooling`` (the release: [CLS]);
  sentence feature s_j = mean over anatomy j's tokens of normalise(head_l(state)) (the release
  averages aggregated whole words; here word pieces).
``TagDecoder`` (part ``tags``): the IRL decoder (:class:`QueryDecoder`) whose queries are the
  frozen [CLS] embeddings of the finding names, over the level-``token_level`` tokens.

Heads: MGCA's ``GlobalEmbedding``/``LocalEmbedding`` are Linear -> BatchNorm -> ReLU -> Linear ->
BatchNorm(affine=False); with 3D batches of 2-6 crops per GPU, batch statistics are noise, so
:class:`ProjectionHead` uses LayerNorm in both places (a deliberate departure). The released
embedding width is 128; here it is ``model.embed_dim``, the space every method here shares.

Zero-shot in the shared evaluation (``methods.asg.zero_shot``; the evaluation scores anatomy j
on anatomy j's window, :mod:`ctvlp.eval.embed`):

* ``"global"`` (the release's zero-shot, ``ZERO_SHOT_MODES``): ``embeds[:, j]`` is the window's
  global v for every anatomy the window holds, and the prompts go through ``ASGText.forward``
  ([CLS] or query -> head_g), the report path: "Not X." / "X." embedded as reports.
* ``"region"`` (a 3D adaptation): ``embeds[:, j]`` = normalise(r_j), anatomy j's mask-pooled region
  feature, the one ARSA trains, and the prompts are embedded as ARSA embeds a sentence: the mean of
  normalise(head_l(state)) over the prompt's body tokens (:meth:`ASGText.embed_sentences`).
* ``"tags"`` (a 3D adaptation): the IRL tag decoder's sigmoid per finding on anatomy j's window,
  P(finding present), an existence classifier: it enters the evaluation as MeDSLIP's existence
  scores do (:func:`window_outputs` adds "scores" [B, F]; ``ctvlp.eval.zeroshot.ExistenceBank``).
  ``embeds`` stay the global v (the linear probe's input, as with ``"global"``).

Why ``"tags"`` is the default, and where it departs from the release: docs/methods.md ("ASG's
zero-shot scoring"). In short: ASG trains one closed-vocabulary classifier of exactly the
catalogue's findings (IRL, 5x the weight of every other loss), and a user scoring those findings
expects that classifier's answer; the released prompt scoring compares one global embedding per
scan with "X." / "Not X." embedded as whole reports, which in our per-anatomy evaluation can only
rank a scan by how abnormal its whole report is (measured: 0.78 after 50 steps on the fixed batch,
where the tags reach >= 0.9). Findings outside the tag book are not scored under ``"tags"`` (NaN,
listed); ``"global"`` or ``"region"`` score any prompt pair.

Shape legend: B batch, M anatomies, L tokens, C token dim, E embed dim, H text hidden, T tokens
of a text, F findings.

Precision (docs/DESIGN.md): float32 weights; encoder, heads, backbone and decoder compute in bf16
under autocast; every loss casts to float32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctvlp.models.query_decoder import QueryDecoder, init_normal_
from ctvlp.models.text import LearnableTemperature, TextEncoder, trim_padding
from ctvlp.models.tokens import anatomy_token_flags, intact_anatomies


ZERO_SHOT_MODES = ("global", "region", "tags")  # methods.asg.zero_shot; "global" is the release's


def check_zero_shot(mode: str) -> None:
    if mode not in ZERO_SHOT_MODES:
        raise ValueError(f"ASG zero_shot must be one of {ZERO_SHOT_MODES}, got {mode!r}")


class ProjectionHead(nn.Module):
    """``Linear(in, hidden) -> LayerNorm -> ReLU -> Linear(hidden, out) -> LayerNorm(no affine)``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, out_dim), nn.LayerNorm(out_dim, elementwise_affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def freeze_unread_levels(encoder: nn.Module, read: set[int]) -> None:
    """Freeze what no read level (1-based) depends on: the token projections of the other levels
    and the backbone stages after the deepest read one. No gradient would reach them, and a
    trainable parameter without gradient trips the data-parallel wrappers."""
    for level, proj in enumerate(encoder.proj, start=1):
        if level not in read:
            proj.requires_grad_(False)
    for level, stage in enumerate(encoder.backbone.layers, start=1):
        if level > max(read):
            stage.requires_grad_(False)


class ASGVision(nn.Module):
    """Token encoder + ASG's global and region features.

    Args:
        windows, encoder: from :func:`ctvlp.models.visd.build_token_encoder`.
        num_anatomies: M. token_level: the level (1..4) of the region features.
        embed_dim: E. head_hidden: width of the projection heads (2048 as released).
        zero_shot: what ``embeds`` holds (module docstring): the global v ("global", "tags") or
            anatomy j's normalised region feature ("region").
    """

    def __init__(self, windows: nn.Module | None, encoder: nn.Module, num_anatomies: int, token_level: int,
                 embed_dim: int, head_hidden: int, zero_shot: str = "global") -> None:
        super().__init__()
        check_zero_shot(zero_shot)
        self.windows, self.encoder = windows, encoder
        self.num_anatomies, self.token_level, self.zero_shot = num_anatomies, token_level, zero_shot
        c = encoder.token_dim
        self.global_head = ProjectionHead(c, head_hidden, embed_dim)
        self.local_head = ProjectionHead(c, head_hidden, embed_dim)
        freeze_unread_levels(encoder, {token_level, 4})

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Level tokens ``[B, L_s, C]`` of image ``[B, 1, D, H, W]`` (input windows first, if any)."""
        return self.encoder(image if self.windows is None else self.windows(image))[0]

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """image [B, 1, D, H, W], mask [B, D, H, W] -> {"global": [B, E] unit, "regions": [B, M, E],
        "tokens": [B, L, C] (level ``token_level``), "valid" / "intact": [B, M] bool,
        "embeds": [B, M, E] (what the shared evaluation scores: ``global`` where valid, or with
        ``zero_shot="region"`` the normalised ``regions``; 0 where not valid)}."""
        tokens = self.encode(image)
        flags = anatomy_token_flags(mask, self.num_anatomies)[self.token_level - 1]  # [B, M, L]
        local = tokens[self.token_level - 1]  # [B, L, C]
        glob = F.normalize(self.global_head(tokens[-1].mean(1)), dim=-1)  # [B, E]
        emb = F.normalize(self.local_head(local), dim=-1)  # [B, L, E]
        w = flags.to(emb.dtype)
        regions = (w @ emb) / w.sum(-1, keepdim=True).clamp_min(1)  # [B, M, E], mean of unit vectors
        valid = flags.any(-1)
        chosen = F.normalize(regions, dim=-1) if self.zero_shot == "region" else glob[:, None, :]
        embeds = chosen * valid[..., None].to(chosen.dtype)
        return {"global": glob, "regions": regions, "tokens": local, "valid": valid,
                "intact": intact_anatomies(mask, self.num_anatomies), "embeds": embeds}


def join_report(ids: torch.Tensor, mask: torch.Tensor, cls_id: int, sep_id: int, pad_id: int,
                max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One report per study from its anatomy texts: ``[CLS] body_0 body_1 ... [SEP]``.

    Each anatomy text is ``[CLS] body [SEP]`` (``tokenize_texts``); the bodies are joined in
    anatomy order and cut at ``max_length`` tokens in all (later anatomies lose their tail first).

    Args: ids, mask [B, M, T]. Returns report ids [B, T'] and mask [B, T'] (int64), and the span of
    each anatomy's body in the report, [B, M, T'] bool.
    """
    if ids.shape != mask.shape or ids.dim() != 3:
        raise ValueError(f"ids and mask must be [B, M, T], got {tuple(ids.shape)} and {tuple(mask.shape)}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    b, m, t = ids.shape
    lengths = mask.sum(-1, keepdim=True)  # [B, M, 1]
    pos_t = torch.arange(t, device=ids.device)
    body = ((pos_t >= 1) & (pos_t < lengths - 1)).reshape(b, m * t)  # between [CLS] and [SEP]
    pos = body.long().cumsum(-1)  # position in the report of each body token ([CLS] is 0)
    keep = body & (pos <= max_length - 2)  # room for [SEP]
    n = keep.sum(-1)  # [B] body tokens kept
    width = int(n.max()) + 2 if b else 2
    rep = torch.full((b, width), pad_id, dtype=torch.long, device=ids.device)
    rows, cols = keep.nonzero(as_tuple=True)
    rep[:, 0] = cls_id
    rep[rows, pos[rows, cols]] = ids.reshape(b, m * t)[rows, cols]
    rep[torch.arange(b, device=ids.device), n + 1] = sep_id
    rep_mask = (torch.arange(width, device=ids.device) <= (n + 1)[:, None]).long()
    span = torch.zeros(b, m, width, dtype=torch.bool, device=ids.device)
    span[rows, cols // t, pos[rows, cols]] = True
    return rep, rep_mask, span


class ASGText(TextEncoder):
    """The report side of ASG: a :class:`TextEncoder` with one pooling query whose projection is a
    :class:`ProjectionHead` (head_g), plus head_l for the sentence features; a fixed temperature.

    Pooling follows ``model.text.pooling`` like every text encoder here: "cls" is the release's
    [CLS] state; "query" (the default) is one learnable query, which starts as the masked mean
    (zero-initialised) and, unlike [CLS], tells texts apart through a randomly initialised backbone.
    ``forward(ids, mask)`` embeds prompts for zero-shot scoring: as reports (IRA's embedding),
    or with ``zero_shot="region"`` as ARSA's sentences (:meth:`embed_sentences`).
    """

    def __init__(self, backbone: nn.Module, embed_dim: int, head_hidden: int, temperature: float,
                 pooling: str = "cls", num_heads: int = 4, dropout: float = 0.1, zero_shot: str = "global") -> None:
        tau = LearnableTemperature(temperature, temperature, temperature, learnable=False)
        super().__init__(backbone, embed_dim, pooling=pooling, num_queries=1, num_heads=num_heads,
                         dropout=dropout, temperature=tau)
        check_zero_shot(zero_shot)
        self.zero_shot = zero_shot
        self.proj = ProjectionHead(self.hidden_size, head_hidden, embed_dim)
        self.local_proj = ProjectionHead(self.hidden_size, head_hidden, embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, anatomy: torch.Tensor | None = None) -> torch.Tensor:
        """Prompts embedded for zero-shot scoring: ids/mask [N, T] (or [B, M, T]) -> [N, E] (or
        [B, M, E]); as reports, or as ARSA's sentences with ``zero_shot="region"``. ``anatomy`` is
        accepted for the prompt-scoring interface and ignored: a report has one query."""
        lead = ids.shape[:-1]
        flat, flat_mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, mask.shape[-1])
        if self.zero_shot == "region":
            return self.embed_sentences(flat, flat_mask).reshape(*lead, -1)
        which = torch.zeros(flat.shape[0], dtype=torch.long, device=ids.device)
        return super().forward(flat, flat_mask, which).reshape(*lead, -1)

    def embed_sentences(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Texts ``[CLS] body [SEP]`` (ids/mask [N, T]) embedded as ARSA embeds a sentence: the
        mean over the body tokens of normalise(head_l(state)), not renormalised -> [N, E]."""
        ids, mask = trim_padding(ids, mask)
        words = F.normalize(self.local_proj(self._hidden(ids, mask)), dim=-1)  # [N, T, E]
        pos = torch.arange(ids.shape[-1], device=ids.device)
        body = ((pos >= 1) & (pos < mask.sum(-1, keepdim=True) - 1)).to(words.dtype)  # [N, T]
        return (body[:, None, :] @ words).squeeze(1) / body.sum(-1, keepdim=True).clamp_min(1)

    def encode_reports(self, ids: torch.Tensor, mask: torch.Tensor, special: dict[str, int],
                       max_length: int) -> dict[str, torch.Tensor]:
        """Anatomy texts ids, mask [B, M, T] -> {"report": [B, E] unit, "sentences": [B, M, E],
        "has_text": [B, M] bool (anatomy j has tokens in the report)}. ``special``: the
        tokenizer's ``cls``, ``sep`` and ``pad`` ids."""
        rep, rep_mask, span = join_report(ids, mask, special["cls"], special["sep"], special["pad"], max_length)
        hidden = self._hidden(rep, rep_mask)  # [B, T', H]
        pooled = hidden[:, 0] if self.pooling == "cls" else self._query_pool(hidden, rep_mask, None)
        report = F.normalize(self.proj(pooled), dim=-1)
        words = F.normalize(self.local_proj(hidden), dim=-1)  # [B, T', E]
        w = span.to(words.dtype)
        sentences = (w @ words) / w.sum(-1, keepdim=True).clamp_min(1)
        return {"report": report, "sentences": sentences, "has_text": span.any(-1)}


def window_outputs(parts: Any, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the shared evaluation (and training's image side) reads of B windows: the vision part's
    outputs (:meth:`ASGVision.forward`), plus with ``zero_shot="tags"`` "scores" [B, F] =
    sigmoid of the tag decoder's logits on the window's tokens (P(finding present), float32).
    ``parts``: a mapping with "vision" and "tags" (the task's module dict or an export's parts)."""
    out = parts["vision"](image, mask)
    if parts["vision"].zero_shot == "tags":
        out["scores"] = torch.sigmoid(parts["tags"](out["tokens"]).float())
    return out


class TagDecoder(nn.Module):
    """ASG's image-tag recognition head: frozen finding-name queries over the image tokens.

    Args:
        book: [F, H] frozen [CLS] embeddings of the finding names (a buffer).
        token_dim: C, the decoder width (the release's 768 is the ViT width; the queries are
            projected by a ``Linear(H -> C)`` here because H and C differ).
        decoder: ``num_layers``, ``num_heads``, ``ffn_dim``, ``dropout`` (released 4, 4, 1024, 0.1).
    """

    def __init__(self, book: torch.Tensor, token_dim: int, decoder: Any) -> None:
        super().__init__()
        self.register_buffer("book", book.float().clone())
        self.query_proj = nn.Linear(book.shape[1], token_dim)
        self.decoder = QueryDecoder(token_dim, decoder.num_layers, decoder.num_heads, decoder.ffn_dim,
                                    decoder.dropout)
        self.dropout = nn.Dropout(decoder.dropout)
        self.head = nn.Linear(token_dim, 1)
        init_normal_(self.query_proj)
        init_normal_(self.head)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, C] -> tag logits [B, F]."""
        out = self.decoder(self.query_proj(self.book), tokens)  # [B, F, C]
        return self.head(self.dropout(out)).squeeze(-1)
