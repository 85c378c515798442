"""CLIP: global image-report alignment, the first, non-fine-grained row of ViSD-Boost's Table 5.

Phase 2's slot when ``model.alignment: global`` (:func:`ctvlp.tasks.build_task`). One embedding
per volume (:func:`ctvlp.models.visd.volume_embedding`: the same encoder and pooling module as the
anatomy-wise models, with the whole crop as the one pooled "anatomy") against one embedding per
whole report (the anatomy texts of the sample joined in anatomy order, :func:`whole_report_ids`,
through the same text encoder with one query), trained with CLIP's symmetric InfoNCE over the
global batch (:mod:`ctvlp.losses.global_infonce`). Masks and anatomy labels are not used for
training: the method sees what CLIP sees.

Zero-shot diagnosis scores it the same way as every method (``ctvlp.eval``): the window around a
disease's anatomy is embedded (here as a whole volume) and compared with the disease's prompt
pair; :meth:`GlobalAlignmentTask.image_embeddings` gives every anatomy present in a crop the
crop's embedding, which is what the validation scoring and the evaluation read.
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.losses.global_infonce import global_infonce_loss
from ctvlp.models.text import build_text_encoder, pad_batch
from ctvlp.models.tokens import anatomy_presence
from ctvlp.models.visd import build_vision_model, volume_embedding
from ctvlp.tasks.base import Losses, Metrics, Task


def whole_report_ids(text_ids: torch.Tensor, text_mask: torch.Tensor,
                     max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample's anatomy texts joined into one report: ``[CLS] t_1 ... t_M [SEP]``.

    Every anatomy text is stored as ``[CLS] words [SEP]`` (ingest tokenises per anatomy); the
    words of the texts that exist are concatenated in anatomy order (the report's organ order) and
    truncated to ``max_length`` tokens in all.

    Args:
        text_ids, text_mask: ``[B, M, T]`` per-anatomy token ids and attention mask.
        max_length: token limit of a joined report (>= 3).

    Returns:
        ids ``[B, T']`` int64 and mask ``[B, T']`` (padded to the longest report), and
        has_text ``[B]`` bool (at least one anatomy text with words).
    """
    if text_ids.shape != text_mask.shape or text_ids.dim() != 3:
        raise ValueError(f"text_ids and text_mask must both be [B,M,T], got {tuple(text_ids.shape)} "
                         f"and {tuple(text_mask.shape)}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 ([CLS] word [SEP]), got {max_length}")
    lengths = text_mask.sum(-1).tolist()  # [B][M]
    ids = text_ids.tolist()
    reports, has_text = [], []
    for b, (row_ids, row_len) in enumerate(zip(ids, lengths)):
        texts = [row_ids[j][:n] for j, n in enumerate(row_len) if n > 0]
        words = [w for t in texts for w in t[1:-1]]  # drop each text's [CLS] and [SEP]
        cls, sep = (texts[0][0], texts[0][-1]) if texts else (0, 0)
        reports.append([cls, *words[: max_length - 2], sep])
        has_text.append(bool(words))
    out_ids, out_mask = pad_batch(reports)
    device = text_ids.device
    return out_ids.to(device), out_mask.to(device), torch.tensor(has_text, device=device)


class GlobalAlignmentTask(Task):
    phase = 2
    required_keys = ("image", "mask", "text_ids", "text_mask")
    export_parts = ("vision", "text")

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        # one pooled "anatomy" (the whole volume) and one text query (the whole report)
        self.module["vision"] = build_vision_model(spec.model, 1, spec.resources.activation_checkpointing,
                                                   spec.data.hu_window)
        self.module["text"] = build_text_encoder(spec.model, 1)

    def image_embeddings(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"embeds": [B, M, E] the volume's embedding for every anatomy present, "valid": [B, M]}."""
        present = anatomy_presence(batch["mask"], self.num_anatomies)  # [B, M]
        emb = volume_embedding(self.module["vision"], batch["image"])  # [B, E]
        return {"embeds": emb[:, None, :] * present[..., None].to(emb.dtype), "valid": present}

    def training_step(self, batch: dict[str, torch.Tensor]) -> tuple[Losses, Metrics]:
        self.check_batch(batch)
        ids, mask, has_text = whole_report_ids(batch["text_ids"], batch["text_mask"],
                                               self.spec.model.report_max_length)
        img = volume_embedding(self.module["vision"], batch["image"])  # [B, E]
        txt = self.module["text"](ids, mask)  # [B, E]
        tau = self.module["text"].temperature()
        loss = global_infonce_loss(img, txt, tau, has_text)
        metrics = {"temperature": float(tau.detach()), "report_tokens": float(mask.sum(-1).float().mean())}
        return {"clip_loss": loss}, metrics
