"""Phase 4: boosted fine-tuning (ViSD-Boost sec. 3.3.2 + eq. 1).

The aligned model (phase 2) is fine-tuned with eq. 1 while each anatomy's level-4 tokens are
replaced by the perception MLP's output on concat(original, frozen VQ-VAE reconstruction)
(:func:`ctvlp.models.boost.boosted_forward`). The VQ-VAE (phase 3) is frozen; the perception MLP
is new.
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.models.boost import boosted_forward
from ctvlp.models.perception import AbnormalityPerception
from ctvlp.models.text import build_text_encoder
from ctvlp.models.visd import build_vision_model
from ctvlp.models.vqvae import build_vqvae
from ctvlp.tasks.base import Losses, Metrics, Task
from ctvlp.tasks.phase2 import alignment_loss


class BoostedAlignmentTask(Task):
    phase = 4
    required_keys = ("image", "mask", "abnormal", "text_ids", "text_mask")
    export_parts = ("vision", "text", "vqvae", "perception")
    frozen_parts = ("vqvae",)

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        m = self.num_anatomies
        self.module["vision"] = build_vision_model(spec.model, m, spec.resources.activation_checkpointing,
                                                   spec.data.hu_window)
        self.module["text"] = build_text_encoder(spec.model, m)
        self.module["vqvae"] = build_vqvae(spec.model, m)
        self.module["perception"] = AbnormalityPerception(m, spec.model.token_dim,
                                                          spec.model.perception_activation)
        self.freeze("vqvae")

    def image_embeddings(self, batch: dict[str, torch.Tensor]) -> dict:
        """Boosted anatomy embeddings {"embeds": [B, M, E], "valid": [B, M], ...}."""
        return boosted_forward(self.module["vision"], self.module["vqvae"], self.module["perception"],
                               batch["image"], batch["mask"])

    def training_step(self, batch: dict[str, torch.Tensor]) -> tuple[Losses, Metrics]:
        self.check_batch(batch)
        return alignment_loss(self.spec, self.module["text"], self.image_embeddings(batch), batch)
