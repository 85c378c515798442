"""MeDSLIP in 3D as phase 2's task (``methods.phase2_task: medslip``): Fan et al., 2024,
arXiv 2403.10635; released code ``Shef-AIRE/MeDSLIP@7cfceb1``.

One step, all weights 1 as released (``loss = loss_ce + loss_cl + loss_ap``)::

    out        = MedSLIPModel(image, mask)       dual streams, decoders over the two query books
    exist_loss = CE_exist(pathology logits, finding labels) + CE_exist(anatomy logits, anatomy labels)
    proto_loss = ProtoCL(pathology -> anatomy book) + ProtoCL(anatomy -> pathology book)
    icl_loss   = BCE(<anatomy_j, pathology_f>, organ x finding matrix)

Labels (``ctvlp.tasks.methods``): a finding is labelled by the labels table on its catalogue
anatomy when that anatomy is in the crop; an anatomy by the report parser's normal/abnormal label
when it is in the crop; the organ x finding matrix holds each finding's label on its own anatomy
and -1 elsewhere. ProtoCL links: a present finding links to its anatomy's prompt; a present
anatomy links to the findings present on it. Negatives: up to ``num_negatives`` unlinked book
entries, drawn anew every step from torch's global generator (the runner seeds it).

The text encoder is only used, frozen, to embed the two books when the task is built: the
project's backbone (``model.text``), as for every method here (the release: Bio_ClinicalBERT).
"""

from __future__ import annotations

import torch

from ctvlp.config import JobSpec
from ctvlp.losses.intra_image_contrast import intra_image_contrast_loss
from ctvlp.losses.prototype_contrast import prototype_contrast_loss, sample_negatives
from ctvlp.losses.query_existence import query_existence_loss
from ctvlp.models.medslip import MedSLIPModel
from ctvlp.models.query_decoder import book_pooling, text_book
from ctvlp.models.text import build_text_backbone, build_tokenizer
from ctvlp.models.visd import build_token_encoder
from ctvlp.tasks.base import Losses, Metrics
from ctvlp.tasks.methods import MethodTask, organ_finding_matrix


class MedSLIPTask(MethodTask):
    method = "medslip"
    required_keys = ("image", "mask", "abnormal", "disease_labels")
    export_parts = ("vision",)

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        cfg, model = spec.methods.medslip, spec.model
        backbone = build_text_backbone(model.text.name_or_path)  # frozen; only embeds the books
        tokenizer = build_tokenizer(model.text.name_or_path)
        prompts = [cfg.anatomy_prompt.format(anatomy=a) for a in spec.data.anatomies]
        pooling = book_pooling(model.text.pooling)
        path_book = text_book(backbone, tokenizer, self.finding_names, model.text.max_length, pooling)
        anat_book = text_book(backbone, tokenizer, prompts, model.text.max_length, pooling)
        windows, encoder = build_token_encoder(model, spec.resources.activation_checkpointing, spec.data.hu_window)
        self.module["vision"] = MedSLIPModel(windows, encoder, self.num_anatomies, path_book, anat_book,
                                             cfg.token_level, cfg.gate_activation, cfg.memory, cfg.decoder)

    @classmethod
    def scores_by_existence(cls, spec: JobSpec) -> bool:
        return True  # no text side: its pathology stream's existence classifier is its zero-shot

    def image_embeddings(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's outputs: "embeds" [B, M, d], "valid" [B, M], "scores" [B, F] (existence), ..."""
        return self.module["vision"](batch["image"], batch["mask"])

    def targets(self, batch: dict, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Existence labels of both streams, the organ x finding matrix and the ProtoCL links."""
        findings = self.labels(batch, valid)  # [B, F]
        anatomies = batch["abnormal"].long().masked_fill(~valid, -1)  # [B, M], the parser's labels
        matrix = organ_finding_matrix(findings, self.anatomy_index.to(valid.device), self.num_anatomies)
        present = matrix == 1  # [B, M, F]
        return {"findings": findings, "anatomies": anatomies, "matrix": matrix,
                "path_links": present.transpose(1, 2), "anat_links": present}

    def training_step(self, batch: dict) -> tuple[Losses, Metrics]:
        self.check_batch(batch)
        cfg, net = self.spec.methods.medslip, self.module["vision"]
        out = self.image_embeddings(batch)
        t = self.targets(batch, out["valid"])
        k = cfg.num_negatives
        proto_path = prototype_contrast_loss(out["pathology_proto"], net.anatomy_book, t["path_links"],
                                             t["findings"] == 1, sample_negatives(t["path_links"], k))
        proto_anat = prototype_contrast_loss(out["anatomy_proto"], net.pathology_book, t["anat_links"],
                                             t["anatomies"] == 1, sample_negatives(t["anat_links"], k))
        losses = {
            "exist_loss": query_existence_loss(out["pathology_logits"], t["findings"])
            + query_existence_loss(out["anatomy_logits"], t["anatomies"]),
            "proto_loss": proto_path + proto_anat,
            "icl_loss": intra_image_contrast_loss(out["pathology"], out["anatomy"], t["matrix"]),
        }
        return losses, {"labelled_findings": float((t["findings"] >= 0).sum()),
                        "present_findings": float((t["findings"] == 1).sum())}
