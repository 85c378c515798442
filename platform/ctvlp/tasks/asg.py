"""ASG in 3D as phase 2's task (``methods.phase2_task: asg``): Li et al., MICCAI 2024,
arXiv 2403.09294; released code ``ASGMVLP_CODE@088e896``.

One step, per the release's total ``L = L_IRA + L_ARSA + 5 L_IRL + L_ERL`` (weights in
``methods.asg``)::

    v, r_j    = ASGVision(image, mask)         global embedding, anatomy region features
    t, s_j    = ASGText(report of the anatomy texts)   report embedding, anatomy sentence features
    z         = TagDecoder(level tokens)        finding logits
    ira_loss  = L_IRA(v, t)                     gathered over ranks
    arsa_loss = L_ARSA(r, s) over the anatomies intact in the crop and with sentences
    irl_loss  = 5 * L_IRL(z, finding labels)
    erl_loss  = L_ERL(S(v, t), finding tags)    gathered over ranks

Where 3D departs from the release (each loss and model docstring says more): regions are anatomy
masks on the token grid instead of boxes; the report is rebuilt from the parser's anatomy texts;
the tags are the labels table's findings on their catalogue anatomy; IRA and ERL are gathered
across ranks; LayerNorm replaces BatchNorm in the heads; the text backbone is the project's
(``model.text``), as for every method here (the release: Bio_ClinicalBERT, 6 layers for the
report, 12 frozen layers for the tag queries).
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.losses.image_report_alignment import image_report_alignment_loss
from ctvlp.losses.image_tag_recognition import image_tag_recognition_loss
from ctvlp.losses.region_sentence_alignment import region_sentence_alignment_loss, region_sentence_logits
from ctvlp.losses.soft_label_alignment import soft_label_alignment_loss
from ctvlp.models.asg import ASGText, ASGVision, TagDecoder, window_outputs
from ctvlp.models.query_decoder import book_pooling, text_book
from ctvlp.models.text import build_text_backbone, build_tokenizer
from ctvlp.models.visd import build_token_encoder
from ctvlp.tasks.base import Losses, Metrics
from ctvlp.tasks.methods import MethodTask, special_token_ids


class ASGTask(MethodTask):
    method = "asg"
    required_keys = ("image", "mask", "abnormal", "text_ids", "text_mask", "disease_labels")
    export_parts = ("vision", "text", "tags")

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        cfg, model = spec.methods.asg, spec.model
        windows, encoder = build_token_encoder(model, spec.resources.activation_checkpointing, spec.data.hu_window)
        self.module["vision"] = ASGVision(windows, encoder, self.num_anatomies, cfg.token_level,
                                          model.embed_dim, cfg.head_hidden, cfg.zero_shot)
        text = ASGText(build_text_backbone(model.text.name_or_path), model.embed_dim, cfg.head_hidden,
                       cfg.temperature, model.text.pooling, model.pool_heads, model.pool_dropout, cfg.zero_shot)
        text.freeze_layers(model.text.freeze_layers)
        text.enable_hidden_cache(model.text.cache_size)
        self.module["text"] = text
        # the tag queries: the text backbone's [CLS] of each finding name, frozen at its initial
        # weights (the release uses a separate frozen BERT for them)
        book = text_book(text.backbone, build_tokenizer(model.text.name_or_path), self.finding_names,
                         model.text.max_length, book_pooling(model.text.pooling))
        self.module["tags"] = TagDecoder(book, model.token_dim, cfg.decoder)
        self.special = special_token_ids(model.text.name_or_path)

    @staticmethod
    def window_outputs(parts, image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the evaluation reads (``methods.asg.zero_shot``): ``ctvlp.models.asg.window_outputs``."""
        return window_outputs(parts, image, mask)

    @classmethod
    def scores_by_existence(cls, spec: JobSpec) -> bool:
        return spec.methods.asg.zero_shot == "tags"

    def image_embeddings(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"embeds": [B, M, E] (the global embedding, or the region features with zero_shot
        "region", where the anatomy is present), "valid": [B, M], and "scores" [B, F] with
        zero_shot "tags"}: what zero-shot scoring reads."""
        return self.window_outputs(self.module, batch["image"], batch["mask"])

    def training_step(self, batch: dict) -> tuple[Losses, Metrics]:
        self.check_batch(batch)
        cfg = self.spec.methods.asg
        img = self.module["vision"](batch["image"], batch["mask"])
        # the whole report (IRA, ERL) is cut at the report limit as CLIP's is, not at the limit of
        # one anatomy's text (64 tokens in compare.yaml would keep only the first organs)
        txt = self.module["text"].encode_reports(batch["text_ids"], batch["text_mask"], self.special,
                                                 self.spec.model.report_max_length)
        tau = self.module["text"].temperature()
        labels = self.labels(batch, img["valid"])  # [B, F], -1 = unknown or not in the crop
        tags = labels.clamp_min(0)  # ERL: unknown counts as absent, as released
        region_ok = img["intact"] & img["valid"] & txt["has_text"]
        arsa = region_sentence_alignment_loss(img["regions"], txt["sentences"], region_ok, tau)
        losses = {
            "ira_loss": cfg.ira_weight * image_report_alignment_loss(img["global"], txt["report"], tau),
            "arsa_loss": cfg.arsa_weight * arsa,
            "irl_loss": cfg.irl_weight * image_tag_recognition_loss(self.module["tags"](img["tokens"]), labels),
            "erl_loss": cfg.erl_weight * soft_label_alignment_loss(img["global"], txt["report"], tags, tau,
                                                                   cfg.erl_hard),
        }
        return losses, {"arsa_accuracy": arsa_accuracy(img["regions"], txt["sentences"], region_ok),
                        "arsa_anatomies": float(region_ok.sum())}


@torch.no_grad()
def arsa_accuracy(regions: torch.Tensor, sentences: torch.Tensor, valid: torch.Tensor) -> float:
    """Fraction of valid (scan, anatomy) rows whose region picks its own sentences among the scan's
    (the region -> sentence argmax of the ARSA logits); NaN when no row is valid."""
    if not valid.any():
        return float("nan")
    logits = region_sentence_logits(regions.float(), sentences.float(), valid, 1.0)  # [B, M, M]
    hit = logits.argmax(-1) == torch.arange(logits.shape[-1], device=logits.device)
    return float(hit[valid].float().mean())
