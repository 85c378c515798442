"""What the other methods' tasks (ASG, MeDSLIP) share: the finding vocabulary, labels from the
batch, the organ x finding matrix, initialisation from a ViSD encoder, and their export config.

Labels. The shards carry, per study, the report parser's label per anatomy (``abnormal`` [B, M],
1/0) and the labels table's findings (``disease_labels``: one ``{name: 0/1}`` dict per study, in
every Ray batch). Our parser assigns sentences and a normal/abnormal label to anatomies; it does
not name findings. The finding axis therefore comes from the labels table (CT-RATE's labels are
themselves extracted from the reports by a text classifier), placed on the one anatomy the
catalogue (``ctvlp.diseases``) gives each finding:

* finding labels ``[B, F]``: 1/0 from the table, -1 when the table lacks the finding or when the
  finding's anatomy is not in the training crop (it cannot be seen there);
* organ x finding matrix ``[B, M, F]``: a finding's label on its own anatomy, -1 (unmentioned)
  on every other anatomy: what RadGraph's anatomy x observation adjacency is to MeDSLIP.

Shape legend: B batch, M anatomies, F findings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ctvlp.config import DATA_PRESETS, JobSpec
from ctvlp.diseases import DISEASE_PRESETS, Disease
from ctvlp.export import load_part
from ctvlp.models.text import build_tokenizer
from ctvlp.models.visd import build_vision_model
from ctvlp.tasks.base import Task


def finding_catalogue(spec: JobSpec) -> list[Disease]:
    """The findings a method learns (``methods.findings``; "auto" = the data preset's catalogue),
    restricted to the grouping's anatomies, in catalogue order. Independent of ``eval.*``."""
    name = spec.methods.findings
    name = DATA_PRESETS[spec.data.preset]["diseases"] if name == "auto" else name
    anatomies = set(spec.data.anatomies)
    found = [d for d in DISEASE_PRESETS[name] if d.anatomy in anatomies]
    if not found:
        raise ValueError(f"methods.findings={spec.methods.findings!r} has no finding on the grouping's anatomies "
                         f"{sorted(anatomies)}")
    return found


def finding_labels(disease_labels: Sequence[Mapping[str, Any]], names: Sequence[str],
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``[B, F]`` int64 from each study's ``{name: 0/1}``: 1 / 0, or -1 where a name is missing."""
    from ctvlp.eval.zeroshot import label_matrix  # the evaluation's reading of the same dicts

    labels = torch.from_numpy(label_matrix(disease_labels, names))  # [B, F] float64, NaN = missing
    return torch.nan_to_num(labels, nan=-1.0).long().to(device)


def visible_labels(labels: torch.Tensor, anatomy_index: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Labels ``[B, F]`` with -1 where the finding's anatomy (``anatomy_index`` [F]) is not
    ``visible`` [B, M] in the crop."""
    return labels.masked_fill(~visible[:, anatomy_index], -1)


def organ_finding_matrix(labels: torch.Tensor, anatomy_index: torch.Tensor, num_anatomies: int) -> torch.Tensor:
    """``[B, M, F]``: label of finding f on its anatomy, -1 (unmentioned) elsewhere."""
    b, f = labels.shape
    out = torch.full((b, num_anatomies, f), -1, dtype=labels.dtype, device=labels.device)
    cols = torch.arange(f, device=labels.device)
    out[:, anatomy_index, cols] = labels
    return out


def special_token_ids(name_or_path: str) -> dict[str, int]:
    """``{"cls", "sep", "pad"}`` ids of the spec's tokenizer (ASG joins anatomy texts with them)."""
    tok = build_tokenizer(name_or_path)
    ids = {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "pad": tok.pad_token_id or 0}
    if ids["cls"] is None or ids["sep"] is None:
        raise ValueError(f"text encoder {name_or_path!r}: its tokenizer has no [CLS]/[SEP] tokens, which "
                         "ASG's report joining needs (BERT-family tokenizers have them)")
    return ids


class MethodTask(Task):
    """A task of another method that trains in place of phase 2 (``methods.phase2_task``).

    Subclasses set ``method`` and build ``self.module``; ``self.findings`` is the vocabulary.
    Only ``phases.phase2.init.vision_encoder`` can initialise them: the encoder of a ViSD export
    (its pooling is not used). Exports record the method and the finding names, which is how the
    evaluation rebuilds the parts and reads the existence scores (``ctvlp.eval.embed.EvalModel``).
    """

    phase = 2
    method = ""

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self.findings = finding_catalogue(spec)
        self.finding_names = [d.name for d in self.findings]
        anatomies = spec.data.anatomies
        self.anatomy_index = torch.tensor([anatomies.index(d.anatomy) for d in self.findings])

    @staticmethod
    def window_outputs(parts: Mapping[str, Any], image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the shared evaluation reads of B windows (image [B, 1, D, H, W], mask [B, D, H, W]),
        given the task's parts (its module dict, or an export's parts): "embeds" [B, M, E], "valid"
        [B, M], and "scores" [B, F] for an existence classifier. Default: the vision part's outputs."""
        return parts["vision"](image, mask)

    @classmethod
    def scores_by_existence(cls, spec: JobSpec) -> bool:
        """Whether zero-shot scores come from an existence classifier ("scores" of
        :meth:`window_outputs`, ``ctvlp.eval.zeroshot.ExistenceBank``) rather than prompts."""
        return False

    def labels(self, batch: dict[str, Any], visible: torch.Tensor) -> torch.Tensor:
        """Finding labels [B, F] of a batch: table values where the anatomy is ``visible``, else -1."""
        labels = finding_labels(batch["disease_labels"], self.finding_names, visible.device)
        return visible_labels(labels, self.anatomy_index.to(visible.device), visible)

    def load_init(self, part: str, uri: str | Path, source_part: str | None = None) -> None:
        if part != "vision" or source_part not in (None, "vision"):
            raise ValueError(f"methods.phase2_task={self.method}: only phases.phase2.init.vision_encoder (a "
                             f"ViSD export's encoder) can initialise it, not {part!r}")
        donor = build_vision_model(self.spec.model, self.num_anatomies, hu_window=self.spec.data.hu_window)
        load_part(donor, "vision", uri)  # strict: the whole ViSD vision part must fit this spec
        self.module["vision"].encoder.load_state_dict(donor.encoder.state_dict())

    def export(self, out_dir: str | Path) -> Path:
        from ctvlp.config import settable_dict
        from ctvlp.export import save_parts

        config = {"phase": self.phase, "spec": settable_dict(self.spec), "method": self.method,
                  "findings": self.finding_names}
        return save_parts(self.module, self.export_parts, out_dir, config)
