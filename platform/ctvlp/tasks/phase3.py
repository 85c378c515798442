"""Phase 3: anatomical normality modelling with a VQ-VAE in latent space (ViSD-Boost eq. 3).

The vision encoder (from phase 2) is frozen. Training reads cached level-4 tokens (one
deterministic window per study, computed once: ``tokens`` [N, L, C], ``token_mask`` [N, L],
``anatomy`` [N], ``abnormal`` [N]), or computes them from image batches with the frozen encoder.
Only normal anatomies enter the VQ-VAE, so its EMA codebook sees normal vectors only (eq. 3's
indicator); abnormal ones are kept in the cache for the validation AUC of the reconstruction error.
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.losses.normality_vq import normality_vq_loss, select_normal
from ctvlp.models.boost import encode_tokens, level4_instances
from ctvlp.models.visd import VisionModel, build_vision_model
from ctvlp.models.vq_codebook import perplexity, usage_counts
from ctvlp.models.vqvae import build_vqvae
from ctvlp.tasks.base import Losses, Metrics, Task


@torch.no_grad()
def token_instances(vision: VisionModel, image: torch.Tensor, mask: torch.Tensor,
                    abnormal: torch.Tensor) -> dict[str, torch.Tensor]:
    """Level-4 token sets of every intact anatomy in an image batch (frozen encoder).

    Returns {"tokens": [N, L4, C], "token_mask": [N, L4], "anatomy": [N], "abnormal": [N],
    "sample": [N]}.
    """
    enc = encode_tokens(vision, image, mask)
    t, tm, a, s = level4_instances(enc["tokens"][-1], enc["flags"][-1], enc["intact"])
    return {"tokens": t, "token_mask": tm, "anatomy": a, "abnormal": abnormal[s, a].long(), "sample": s}


class NormalityTask(Task):
    phase = 3
    required_keys = ("tokens", "token_mask", "anatomy", "abnormal")
    export_parts = ("vqvae",)
    frozen_parts = ("vision",)

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        if not spec.phases.phase3_cached_tokens:  # image batches through the frozen encoder
            self.required_keys = ("image", "mask", "abnormal")
        self.module["vision"] = build_vision_model(spec.model, self.num_anatomies, hu_window=spec.data.hu_window)
        self.module["vqvae"] = build_vqvae(spec.model, self.num_anatomies)
        self.freeze("vision")

    def instances(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cached token batches pass through; image batches go through the frozen encoder."""
        if "tokens" in batch:
            return batch
        if "image" not in batch:
            raise KeyError(f"phase 3 needs cached tokens {self.required_keys} or image batches; "
                           f"got {sorted(batch)}")
        return token_instances(self.module["vision"], batch["image"], batch["mask"], batch["abnormal"])

    def training_step(self, batch: dict[str, torch.Tensor]) -> tuple[Losses, Metrics]:
        inst = self.instances(batch)
        tokens, token_mask, anatomy = select_normal(inst["tokens"], inst["token_mask"].bool(),
                                                    inst["anatomy"].long(), inst["abnormal"].long())
        vqvae = self.module["vqvae"]
        out = vqvae(tokens.float(), token_mask, anatomy)
        terms = normality_vq_loss(out, tokens.float(), self.spec.model.vq.beta)
        flat = vqvae.quantizer.to_flat(out.indices, anatomy)
        counts = usage_counts(flat, out.mask, self.num_anatomies, self.spec.model.vq.codebook_size)
        used = perplexity(counts)[counts.sum(-1) > 0]  # anatomies seen in this batch
        metrics = {"normal_instances": float(tokens.shape[0]),
                   "perplexity": float(used.mean()) if used.numel() else 0.0}
        return {"recon_loss": terms["recon"], "commit_loss": self.spec.model.vq.beta * terms["commitment"]}, metrics
