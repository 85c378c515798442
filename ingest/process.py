"""The CPU stage for one study: bytes in storage -> one shard row (or a quarantine reason).

Steps (each a pure function of ``ctvlp.transforms`` / ``ctvlp.reports`` / ``ctvlp.models.text``):
per-anatomy report texts and labels first (``ingest.reports``: a missing or unreadable report
costs no decode) -> read bytes -> decode NIfTI (magic-byte gzip detection) or a DICOM series ->
:mod:`ctvlp.transforms.study` (shared with ``ctvlp.predict``, so a scan scored from disk goes
through exactly these steps): repair the header from the metadata row (CT-RATE), checks (3D,
finite, geometry: spacing, obliquity, size; CT range), the mask on the image grid holding only
class-map ids, then crop to the anatomies at native resolution (with room for margin and min
size) -> canonical RAS (D, H, W) views -> resample (nearest raw ids, then grouped; trilinear
image with the HU window to uint8 folded in) -> boxes / voxel counts -> final crop + margin ->
pad to min size (``study.transform`` says which copies this order saves) -> token ids -> compress.

No Ray here: :mod:`ingest.pipeline` calls :func:`process_batch` from ``map_batches``; tests and
``bench/ingest.py`` call it directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ctvlp.data.codec import encode_volume
from ctvlp.transforms import dicom, io, study
from ctvlp.transforms.study import StudyConfig, check_geometry, repair, transform  # noqa: F401 - ingest's names
from ingest.quarantine import QuarantineError, classify
from ingest.reports import ReportConfig, report_labels
from ingest.storage import Storage


@dataclass(frozen=True)
class StageConfig(StudyConfig):
    """Everything the CPU stage needs, as plain values (picklable into Ray tasks): the grid and
    checks of :class:`~ctvlp.transforms.study.StudyConfig` plus

    Args:
        codec / codec_level: volume compression in shards.
        text_name_or_path / max_length: the spec's tokenizer.
        storage: where the studies' objects are read from.
        reports: the report parser and its policies (``ingest.report_*``, ``ingest.llm_*``).
    """

    codec: str = "zstd"
    codec_level: int = 1
    text_name_or_path: str = "tiny"
    max_length: int = 384
    storage: Storage = field(default_factory=Storage)
    reports: ReportConfig = field(default_factory=ReportConfig)


@lru_cache(maxsize=2)
def _tokenizer(name_or_path: str):
    from ctvlp.models import text  # transformers import: once per worker process

    return text.build_tokenizer(name_or_path)


def tokenize(texts: list[str], cfg: StageConfig) -> list[list[int]]:
    """Per-anatomy token ids (no padding; the collate pads per batch)."""
    from ctvlp.models import text

    return text.tokenize_texts(_tokenizer(cfg.text_name_or_path), texts, cfg.max_length)


def read_image(rec: dict[str, Any], storage: Storage,
               rules: dicom.DicomRules | None = None) -> tuple[Any, Any, dict]:
    """Decode the study's image: ``(array_xyz, affine, info)`` (HU after any stored rescale).
    A DICOM folder may hold several series: ``rules`` choose one (``ctvlp.transforms.dicom``)."""
    try:
        if rec["image_format"] == "dicom":
            files = storage.list_files(rec["image_uri"])
            if not files:
                raise QuarantineError("unreadable", "no object under the DICOM series prefix")
            return dicom.read_dicom_folder([storage.read_bytes(f) for f in files], rules or dicom.DicomRules())
        return io.read_nifti(storage.read_bytes(rec["image_uri"]))
    except (FileNotFoundError, PermissionError) as exc:
        raise QuarantineError("unreadable", f"image object: {type(exc).__name__}") from exc


def read_mask(rec: dict[str, Any], shape, affines: list, storage: Storage):
    """The study's TotalSegmentator mask ``[X, Y, Z]`` (supplied, or written by the segmentation
    stage), checked to lie on the image grid.

    ``affines`` are the acceptable image affines (as stored, and after header repair): masks made
    before or after repairing a CT-RATE header are both on the image grid.
    """
    if rec.get("_seg_error"):  # the TotalSegmentator stage (ingest.segment) failed on this study
        raise QuarantineError("segmentation_failed", rec["_seg_error"])
    if not rec.get("mask_uri"):
        raise QuarantineError("missing_mask", "no mask_uri and segmentation is 'supplied'")
    try:
        mask, mask_affine, _ = io.read_nifti(storage.read_bytes(rec["mask_uri"]))
    except (FileNotFoundError, PermissionError) as exc:
        raise QuarantineError("unreadable", f"mask object: {type(exc).__name__}") from exc
    return study.check_mask_on_grid(mask, mask_affine, shape, affines)


def report_texts(rec: dict[str, Any], cfg: StageConfig) -> tuple[list[str], list[int]]:
    """Per-anatomy (text, label 1 / 0 / -1) in the grouping's order (:func:`ingest.reports.report_labels`)."""
    return report_labels(rec, cfg.anatomies, cfg.reports)


def read_checked(rec: dict[str, Any], cfg: StageConfig):
    """Decode, repair and check the study's image: ``(array_xyz, affine, repaired affine, info,
    oblique_deg)``. Raises on bad input (the segmentation actors call it too, so they never spend
    a network pass on a study that this stage quarantines anyway)."""
    image, affine, info = read_image(rec, cfg.storage, cfg.dicom)
    meta = json.loads(rec.get("meta") or "{}")
    image, fixed_affine, oblique_deg = study.check_image(image, affine, info, meta, cfg)
    return image, affine, fixed_affine, info, oblique_deg


def process_study(rec: dict[str, Any], cfg: StageConfig, timings: dict[str, float]) -> dict[str, Any]:
    """One manifest record -> one shard row (docs/DESIGN.md). Raises on bad input.

    ``timings`` accumulates seconds per sub-stage (read, transform, text, encode).
    """
    t0 = time.perf_counter()
    texts, labels = report_texts(rec, cfg)  # first: a missing report costs no decode
    image, affine, fixed_affine, info, oblique_deg = read_checked(rec, cfg)
    meta = json.loads(rec.get("meta") or "{}")
    mask = read_mask(rec, image.shape, [fixed_affine, affine], cfg.storage)
    t1 = time.perf_counter()
    out = transform(image, fixed_affine, mask, cfg)
    t2 = time.perf_counter()
    ids = tokenize(texts, cfg)
    t3 = time.perf_counter()
    row = {
        "study_id": rec["study_id"], "split": rec["split"],
        "shape": list(out["image"].shape), "spacing": [float(s) for s in out["spacing"]],
        "image": encode_volume(out["image"], cfg.codec, cfg.codec_level),
        "mask": encode_volume(out["mask"], cfg.codec, cfg.codec_level),
        "codec": cfg.codec, "boxes": out["boxes"].tolist(), "voxel_counts": out["counts"].tolist(),
        "texts": texts, "abnormal": labels, "input_ids": ids,
        "disease_labels": rec.get("disease_labels") or "{}",
        "meta": json.dumps({  # non-identifying only: geometry and source format
            "orig_shape": out["orig_shape"], "orig_spacing": [round(s, 4) for s in out["orig_spacing"]],
            "orig_axcodes": info.get("axcodes", ""), "source_format": info.get("format", ""),
            "header_repaired": bool(cfg.repair_headers and meta), "oblique_deg": round(oblique_deg, 2),
            **({"dicom": info["dicom"]} if "dicom" in info else {}),  # numbers and fixed words only
        }),
    }
    t4 = time.perf_counter()
    for k, v in (("read", t1 - t0), ("transform", t2 - t1), ("text", t3 - t2), ("encode", t4 - t3)):
        timings[k] = timings.get(k, 0.0) + v
    return row


def process_records(records: list[dict[str, Any]], cfg: StageConfig) -> list[dict[str, Any]]:
    """Process studies; every record yields exactly one output: a shard row or a quarantine row.

    Output dicts carry ``status`` ("ok" / "quarantined"), ``reason``/``detail`` (quarantined) and
    ``seconds`` (this study's processing time) besides the shard columns.
    """
    if records:
        _tokenizer(cfg.text_name_or_path)  # once per worker, kept out of the per-study timings
    out = []
    for rec in records:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            row = process_study(rec, cfg, timings)
            row.update(status="ok", reason="", detail="")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a quarantine row
            reason, detail = classify(exc, secrets=[rec.get("image_uri", ""), rec.get("mask_uri", ""),
                                                    rec.get("patient_id", "")])
            row = {"study_id": rec["study_id"], "split": rec["split"], "status": "quarantined",
                   "reason": reason, "detail": detail}
        row["seconds"] = time.perf_counter() - t0
        row["timings"] = json.dumps(timings)
        row["shard"] = rec.get("shard", "")
        out.append(row)
    return out
