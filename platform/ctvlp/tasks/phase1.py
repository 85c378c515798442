"""Phase 1: disease-level visual contrastive learning (ViSD-Boost eq. 2, sec. 3.2).

The online vision model (encoder + anatomy pooling) embeds the batch; an EMA copy (momentum
0.995) embeds a second, differently augmented view. Normal anatomies pull towards every normal
momentum feature of the same anatomy, abnormal ones towards their own momentum view only.
With ``model.visual_contrast: instance`` (VSEI, the instance-level row of Table 5) every
anatomy pulls towards its own momentum view only (:mod:`ctvlp.losses.instance_contrastive`).

The second view is made here, on the batch's device (random flips per sample and axis plus an
intensity jitter), so that phase 1 reads the same shard batches as every other phase. Flips keep
every anatomy intact, so the intact flags of both views agree.
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.losses.disease_contrastive import disease_contrastive_loss
from ctvlp.losses.instance_contrastive import instance_contrastive_loss
from ctvlp.models.momentum import MomentumEncoder
from ctvlp.models.visd import build_vision_model
from ctvlp.tasks.base import Losses, Metrics, Task


def second_view(image: torch.Tensor, mask: torch.Tensor, flip_prob: float = 0.5,
                intensity: float = 0.1, noise: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """A differently augmented view: per-sample flips of D/H/W, scale/shift jitter, noise.

    Args: image [B, 1, D, H, W] in [0, 1]; mask [B, D, H, W]. Returns the same shapes.
    """
    image, mask = image.clone(), mask.clone()
    b = image.shape[0]
    flips = torch.rand(b, 3, device=image.device) < flip_prob  # [B, 3] one draw per sample/axis
    for i in range(b):  # B small flips; a per-sample loop over at most 3 axes each
        axes = [a for a in range(3) if flips[i, a]]
        if axes:
            image[i] = image[i].flip([a + 1 for a in axes])
            mask[i] = mask[i].flip(axes)
    scale = 1.0 + intensity * (2 * torch.rand(b, 1, 1, 1, 1, device=image.device) - 1)
    shift = intensity * 0.5 * (2 * torch.rand(b, 1, 1, 1, 1, device=image.device) - 1)
    image = image * scale + shift + noise * torch.randn_like(image)
    return image.clamp(0, 1), mask


class DiseaseContrastiveTask(Task):
    phase = 1
    required_keys = ("image", "mask", "abnormal")
    export_parts = ("vision",)
    frozen_parts = ("momentum",)

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        vision = build_vision_model(spec.model, self.num_anatomies,
                                    spec.resources.activation_checkpointing, spec.data.hu_window)
        self.module["vision"] = vision
        self.module["momentum"] = MomentumEncoder(vision, spec.model.momentum)

    def load_init(self, part, uri, source_part=None) -> None:
        super().load_init(part, uri, source_part)
        if part == "vision":  # the momentum copy starts from the loaded weights too
            self.module["momentum"] = MomentumEncoder(self.module["vision"], self.spec.model.momentum)

    def training_step(self, batch: dict[str, torch.Tensor]) -> tuple[Losses, Metrics]:
        self.check_batch(batch)
        image, mask, abnormal = batch["image"], batch["mask"], batch["abnormal"]
        view_image, view_mask = second_view(image, mask)
        q = self.module["vision"](image, mask)
        k = self.module["momentum"](view_image, view_mask)  # no autograd inside
        valid = q["intact"] & q["valid"] & k["valid"]  # [B, M]
        tau = self.spec.model.disease_temperature
        metrics = {"intact_pairs": float(valid.sum()),
                   "abnormal_frac": float((abnormal.bool() & valid).sum() / valid.sum().clamp_min(1))}
        if self.spec.model.visual_contrast == "instance":  # VSEI: every sample its own class
            return {"instance_loss": instance_contrastive_loss(q["embeds"], k["embeds"], valid, tau)}, metrics
        loss = disease_contrastive_loss(q["embeds"], k["embeds"], valid, abnormal, tau,
                                        positives=self.spec.model.disease_positives)
        return {"disease_loss": loss}, metrics

    def after_step(self) -> None:
        super().after_step()
        self.module["momentum"].update(self.module["vision"])
