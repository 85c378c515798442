"""One call from a raw scan to findings: :class:`Predictor`.

``Predictor.from_export(uri)`` (a local folder, ``s3://`` or a hub name; ``from_pretrained`` is the
same call) rebuilds the exported model (``ctvlp.eval.embed.EvalModel``, safetensors only), the
spec's grid and input checks (``ctvlp.transforms.study.StudyConfig``) and the scoring of the
diseases the evaluation scored (``ctvlp.eval.zeroshot.scoring_bank``: the prompt bank, or an
existence classifier's scores for MeDSLIP and ASG's tags). ``predictor(scan, mask=None,
report=None)`` then runs, per scan:

1. ingest's reading, checks and transforms (:mod:`ctvlp.predict.scan`): a scan ingest would
   quarantine is refused with the same reason code (:class:`ScanRejected`);
2. the evaluation's anatomy windows and embeddings (``ctvlp.eval.embed.embed_studies``) and its
   scores (``PromptBank.score`` or ``ExistenceBank.score``);
3. yes/no calls at the thresholds the evaluation job recorded in the export's ``evaluation.json``
   (``score > threshold``, as ``ctvlp.eval.metrics`` predicts).

Precision is the evaluation's (``EvalModel``): float32 weights, the encoders' forward under bf16
autocast when ``bf16`` resolves on ("auto" = on with CUDA), embeddings, prompt logits and
probabilities in float32 (``ctvlp.precision``; the bf16 CPU test tracks float32 within 0.02).

So a study scores what the evaluation pipeline scores for it (``tests/ctvlp/predict``: equal to
1e-6 on CPU; windows batched differently may differ in the last float32 bits). Without a mask the
spec's segmentation runs (``ctvlp.segment.TotalSegmentatorSegmenter``, or the ``segmenter`` given),
or :class:`SegmentationUnavailable` says what is missing. No Ray here: ``jobs/predict.py`` is the
Ray Data edge for many scans.

Shape legend: M anatomies, E embed dim, D diseases, S scans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctvlp.card import EVALUATION
from ctvlp.predict.scan import Mask, Scan, ScanRejected, Segmenter, build_segmenter, prepare


def export_diseases(export_dir: str | Path) -> tuple[list[Any], dict[str, float | None]]:
    """(diseases, thresholds) of a local export: those the evaluation recorded in
    ``evaluation.json``, else the export spec's ``eval`` diseases without thresholds."""
    from ctvlp.config import DiseaseSpec, spec_from_dict
    from ctvlp.export import read_config

    path = Path(export_dir) / EVALUATION
    if path.is_file():
        record = json.loads(path.read_text())
        return ([DiseaseSpec(name=d["name"], anatomy=d["anatomy"], prompts=[tuple(p) for p in d["prompts"]])
                 for d in record["diseases"]], dict(record["thresholds"]))
    spec = spec_from_dict(read_config(export_dir)["spec"])
    return spec.eval.disease_list(spec.data), {}


@dataclass
class Prediction:
    """What the predictor says about one scan.

    Attributes:
        study_id: the scan's name; anatomies: the M anatomy names (grouping order).
        present: [M] bool, the anatomy is in the mask; embeddings: [M, E] float32 unit vectors
            (NaN rows for absent anatomies).
        probabilities: disease -> P(positive) of its prompt pairs (NaN where its anatomy is absent).
        thresholds: disease -> the evaluation's threshold (None: not evaluated or single-class).
        calls: disease -> True / False (``probability > threshold``), None without a threshold.
        anatomy_of: disease -> anatomy. report_labels: anatomy -> 1 / 0 / -1 from the rule parser
            when a report was given (None otherwise). meta: geometry and timing of the scan.
    """

    study_id: str
    anatomies: list[str]
    present: np.ndarray
    embeddings: np.ndarray
    probabilities: dict[str, float]
    thresholds: dict[str, float | None]
    calls: dict[str, bool | None]
    anatomy_of: dict[str, str]
    report_labels: dict[str, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def top_findings(self, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` most probable diseases: dicts with disease, anatomy, probability, threshold, call."""
        scored = [d for d, p in self.probabilities.items() if math.isfinite(p)]
        scored.sort(key=lambda d: -self.probabilities[d])
        return [{"disease": d, "anatomy": self.anatomy_of[d], "probability": self.probabilities[d],
                 "threshold": self.thresholds.get(d), "call": self.calls.get(d)} for d in scored[:k]]


class Predictor:
    """A trained export that scores scans from disk (see the module doc).

    Args:
        model: an ``EvalModel`` that scores diseases (a phase 2 or 4 export, or another method's).
        study: the grid and checks (``StudyConfig.from_spec(model.spec)``).
        diseases: objects with ``name``, ``anatomy``, ``prompts`` (the evaluation's).
        thresholds: disease -> threshold (None entries: no call).
        segmenter: ``(array_xyz, affine) -> TotalSegmentator ids`` for scans without a mask;
            None: built from the spec on first use (``ctvlp.predict.scan.build_segmenter``).
        batch_size: windows per forward pass.
    """

    def __init__(self, model: Any, study: Any, diseases: Sequence[Any], *, thresholds: dict | None = None,
                 segmenter: Segmenter | None = None, batch_size: int = 8, source: str = "") -> None:
        from ctvlp.eval.zeroshot import PromptBank, scoring_bank

        self.model, self.study, self.source = model, study, source
        # scored as the evaluation scores: prompts, or an existence classifier (MeDSLIP, ASG's tags);
        # PromptBank refuses a vision-only export with the reason
        self.bank = scoring_bank(model, diseases) or PromptBank(model, diseases)
        self.anatomy_of = {d.name: d.anatomy for d in diseases}
        self.thresholds = {n: (thresholds or {}).get(n) for n in self.bank.names}
        self.roi = tuple(model.spec.data.eval_window)
        self.batch_size, self._segmenter = batch_size, segmenter

    @classmethod
    def from_export(cls, uri: str | Path, *, device: str = "auto", bf16: str | bool = "auto",
                    segmenter: Segmenter | None = None, batch_size: int = 8, revision: str | None = None,
                    cache_dir: str | Path | None = None, s3_endpoint_url: str | None = None) -> Predictor:
        """Load an export by URI (``ctvlp.export.resolve_export``); device "auto" = CUDA when present."""
        import torch

        from ctvlp.eval.embed import EvalModel
        from ctvlp.export import resolve_export
        from ctvlp.precision import resolve_bf16
        from ctvlp.transforms.study import StudyConfig

        local = resolve_export(uri, revision=revision, cache_dir=cache_dir, s3_endpoint_url=s3_endpoint_url)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        model = EvalModel.from_export(local, device, bf16=resolve_bf16(bf16, device.startswith("cuda")))
        diseases, thresholds = export_diseases(local)
        return cls(model, StudyConfig.from_spec(model.spec), diseases, thresholds=thresholds,
                   segmenter=segmenter, batch_size=batch_size, source=str(uri))

    from_pretrained = from_export

    @property
    def spec(self) -> Any:
        return self.model.spec

    @property
    def diseases(self) -> list[str]:
        return list(self.bank.names)

    def segmenter(self) -> Segmenter:
        """The segmenter for scans without a mask (built from the spec on first use)."""
        if self._segmenter is None:
            self._segmenter = build_segmenter(self.spec, str(self.model.device))
        return self._segmenter

    def prepare(self, scan: Scan, mask: Mask = None, study_id: str | None = None) -> dict[str, Any]:
        """The scan on the model's grid, as ingest would store it (:func:`ctvlp.predict.scan.prepare`)."""
        return prepare(scan, mask, self.study, self.segmenter, study_id)

    def __call__(self, scan: Scan, mask: Mask = None, report: Any = None, study_id: str | None = None) -> Prediction:
        """Score one scan. ``report``: findings text, or ``(findings, impression)``. Raises
        :class:`ScanRejected` (with ingest's reason code) or ``SegmentationUnavailable``."""
        return self.score_samples([self.prepare(scan, mask, study_id)], [report])[0]

    def predict_many(self, scans: Sequence[Scan], masks: Sequence[Mask] | None = None,
                     reports: Sequence[Any] | None = None) -> list[Prediction | ScanRejected]:
        """Score many scans in this process, windows batched across them; a refused scan gives
        its :class:`ScanRejected` in its place (the others are scored)."""
        masks = list(masks) if masks is not None else [None] * len(scans)
        reports = list(reports) if reports is not None else [None] * len(scans)
        out: list[Any] = []
        ok = []
        for scan, mask in zip(scans, masks):
            try:
                out.append(self.prepare(scan, mask))
                ok.append(len(out) - 1)
            except ScanRejected as exc:
                out.append(exc)
        scored = self.score_samples([out[i] for i in ok], [reports[i] for i in ok])
        for i, pred in zip(ok, scored):
            out[i] = pred
        return out

    def score_samples(self, samples: list[dict[str, Any]], reports: Sequence[Any]) -> list[Prediction]:
        """Prepared samples -> predictions: the evaluation's windows, embeddings and scores."""
        from ctvlp.eval.embed import embed_studies

        if not samples:
            return []
        emb = embed_studies(self.model, samples, self.roi, self.batch_size, activation_samples=0)
        scores_SD = self.bank.score(emb)
        return [self._prediction(s, emb.present[i], emb.embeds[i], scores_SD[i], r)
                for i, (s, r) in enumerate(zip(samples, reports))]

    def _prediction(self, sample: dict, present_M, embeds_ME, scores_D, report) -> Prediction:
        probs = {n: float(v) for n, v in zip(self.bank.names, scores_D)}
        calls = {n: (None if t is None or not math.isfinite(probs[n]) else bool(probs[n] > t))
                 for n, t in self.thresholds.items()}
        return Prediction(sample["study_id"], list(self.model.anatomies), present_M, embeds_ME, probs,
                          dict(self.thresholds), calls, dict(self.anatomy_of), self.report_labels(report),
                          dict(sample["meta"]))

    def report_labels(self, report: Any) -> dict[str, int] | None:
        """anatomy -> 1 abnormal / 0 normal / -1 unknown from the rule parser (the spec's
        ``ingest.report_uncertainty``); all -1 for a report it cannot read; None without one."""
        if report is None:
            return None
        from ctvlp.reports.readable import unreadable_reason
        from ctvlp.reports.rules import rule_parser

        findings, impression = (report, "") if isinstance(report, str) else tuple(report)
        anatomies = list(self.model.anatomies)
        if unreadable_reason(findings, impression, tuple(self.spec.ingest.report_languages)) is not None:
            return {a: -1 for a in anatomies}
        parsed = rule_parser(anatomies, self.spec.ingest.report_uncertainty).parse(findings, impression)
        return {a: int(parsed.labels[a]) for a in anatomies}
