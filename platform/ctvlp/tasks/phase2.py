"""Phase 2: anatomy-wise image-report alignment (ViSD-Boost eq. 1, sec. 3.1).

Each intact anatomy's pooled image embedding is contrasted with its own report text over the
global batch of samples in which that anatomy is intact (hard targets as eq. 1, or fVLM's soft
targets: ``spec.model.itc_targets``).
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.losses.anatomy_infonce import anatomy_infonce_loss, text_identity_keys
from ctvlp.models.text import TextEncoder, build_text_encoder
from ctvlp.models.visd import build_vision_model
from ctvlp.tasks.base import Losses, Metrics, Task


def encode_anatomy_texts(text: TextEncoder, ids: torch.Tensor, mask: torch.Tensor,
                         select: torch.Tensor) -> torch.Tensor:
    """Embed the selected anatomy texts only.

    Args: ids, mask [B, M, T]; select [B, M] bool. Returns [B, M, E], zero where not selected.

    At least one row is always encoded (and enters the result with weight 0 when unselected)
    so that every rank's text encoder takes part in the backward pass of every step.
    """
    b, m, _ = ids.shape
    sel = select.clone()
    if not sel.any():
        sel[0, 0] = True
    rows, cols = sel.nonzero(as_tuple=True)
    ids_n, mask_n = ids[rows, cols], mask[rows, cols]  # [N, T]
    # Report texts repeat (every normal anatomy starts with the same template, phrasings recur):
    # encode each distinct (text, anatomy) once and share the result. Same output and gradient
    # as encoding every row, up to dropout masks, for a fraction of the text encoder's cost.
    key = text_identity_keys(ids_n[None], mask_n[None])[0]  # [N]
    _, inverse = torch.unique(torch.stack([key, cols]), dim=1, return_inverse=True)  # [N] -> [U]
    first = torch.full((int(inverse.max()) + 1,), len(rows), device=ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(rows), device=ids.device), "amin")
    emb = text(ids_n[first], mask_n[first], cols[first])[inverse]  # [N, E]
    out = emb.new_zeros(b, m, emb.shape[-1])
    weight = select[rows, cols].to(emb.dtype)[:, None]
    out[rows, cols] = emb * weight
    return out


def alignment_loss(spec: JobSpec, text: TextEncoder, img: dict, batch: dict) -> tuple[Losses, Metrics]:
    """Eq. 1 between pooled image embeddings ``img`` and the batch's anatomy texts."""
    has_text = batch["text_mask"].any(-1)  # [B, M]
    valid = img["intact"] & img["valid"] & has_text
    txt = encode_anatomy_texts(text, batch["text_ids"], batch["text_mask"], valid)
    tau = text.temperature()
    key = text_identity_keys(batch["text_ids"], batch["text_mask"]) if spec.model.itc_targets == "soft" else None
    loss = anatomy_infonce_loss(img["embeds"], txt, valid, batch["abnormal"], tau, key,
                                targets=spec.model.itc_targets, reduction=spec.model.itc_reduction,
                                skip_without_abnormal=spec.model.itc_skip_without_abnormal)
    return {"itc_loss": loss}, {"temperature": float(tau.detach()), "intact_pairs": float(valid.sum())}


class AlignmentTask(Task):
    phase = 2
    required_keys = ("image", "mask", "abnormal", "text_ids", "text_mask")
    export_parts = ("vision", "text")

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self.module["vision"] = build_vision_model(spec.model, self.num_anatomies,
                                                   spec.resources.activation_checkpointing,
                                                   spec.data.hu_window)
        self.module["text"] = build_text_encoder(spec.model, self.num_anatomies)

    def image_embeddings(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"embeds": [B, M, E], "valid": [B, M]}: what zero-shot scoring compares with prompts."""
        return self.module["vision"](batch["image"], batch["mask"])

    def training_step(self, batch: dict[str, torch.Tensor]) -> tuple[Losses, Metrics]:
        self.check_batch(batch)
        return alignment_loss(self.spec, self.module["text"], self.image_embeddings(batch), batch)
