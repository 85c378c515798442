"""Segmentation stage: TotalSegmentator in a Ray Data actor pool, once per study, before the waves.

Used when ``ingest.segmentation = totalsegmentator``; a study with a supplied mask keeps it.
Each actor builds one :class:`ctvlp.segment.TotalSegmentatorSegmenter` (the networks load once
per actor) and runs every study of its blocks through it::

    pending studies without a mask and without a stored one (a resumed run skips those)
      -> from_pandas (one block per ingest.totalseg.batch_size studies)
      -> map_batches(SegmentActor, concurrency=num_actors, num_gpus=gpus_per_actor | num_cpus)
           per study: read + repair + check the image (ingest.process.read_checked: a study the CPU
           stage quarantines anyway costs no network pass) -> segment -> write
           <shards_uri>/_masks/<study_id>.nii.gz (TotalSegmentator ids on the image grid)
      -> one bookkeeping row per study: status ok / failed / skipped, actor id, its load count
    driver: mask_uri <- the stored mask; a failure -> `_seg_error`, which the CPU stage
    quarantines as `segmentation_failed` with the exception type (never its message).

The pass runs once over all pending studies rather than inside each wave, because a Ray Data
actor pool lives as long as its dataset: per wave it would reload the networks every wave.
Segmentation is 15-40x the CPU stage's cost per study, so overlapping the two would save little.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ingest.storage import join

MASK_DIR = "_masks"
COLUMNS = ["study_id", "split", "image_uri", "image_format", "meta", "findings", "impression", "patient_id"]


@dataclass(frozen=True)
class SegmentConfig:
    """The stage's parameters (from ``ingest.totalseg``; :meth:`ingest.pipeline.IngestConfig.from_spec`).

    Args:
        settings: what each actor's segmenter loads (``ctvlp.segment.SegmenterSettings``).
        num_actors: 0 = one per GPU of the cluster (GPU actors), or one CPU actor without GPUs.
        device: ``"auto"`` (GPU actors when the cluster has GPUs), ``"gpu"`` or ``"cpu"``.
        gpus_per_actor / cpus_per_actor: resources of one actor.
        batch_size: studies per actor call.
    """

    settings: Any
    num_actors: int = 0
    device: str = "auto"
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    batch_size: int = 1

    @classmethod
    def from_spec(cls, spec: Any) -> SegmentConfig:
        from ctvlp.segment import SegmenterSettings

        ts = spec.ingest.totalseg
        return cls(settings=SegmenterSettings.from_spec(spec, device="auto"), num_actors=ts.num_actors,
                   device=ts.device, gpus_per_actor=ts.gpus_per_actor, cpus_per_actor=ts.cpus_per_actor,
                   batch_size=ts.batch_size)

    def fingerprint(self) -> dict[str, Any]:
        """What changes the masks (for the resume check)."""
        s = self.settings
        return {"task": s.task.name, "parts": [p.dataset_id for p in s.task.parts],
                "roi_subset": list(s.roi_subset)}

    def pool(self, cluster_gpus: float) -> tuple[int, dict[str, float]]:
        """(number of actors, Ray resources of one) for a cluster with ``cluster_gpus`` GPUs."""
        on_gpu = self.device == "gpu" or (self.device == "auto" and cluster_gpus >= self.gpus_per_actor)
        if on_gpu:
            n = self.num_actors or max(1, int(cluster_gpus / self.gpus_per_actor))
            return n, {"num_gpus": self.gpus_per_actor, "num_cpus": self.cpus_per_actor}
        return self.num_actors or 1, {"num_cpus": self.cpus_per_actor}


def mask_uri(root: str, study_id: str) -> str:
    return join(root, MASK_DIR, f"{study_id}.nii.gz")


class SegmentActor:
    """Ray Data actor UDF: one segmenter per actor; one bookkeeping row per study."""

    def __init__(self, settings: Any, stage: Any, root: str, device: str):
        import dataclasses

        from ctvlp.segment import TotalSegmentatorSegmenter

        self.actor_id = uuid.uuid4().hex[:12]
        self.stage, self.root = stage, root
        self.segmenter = TotalSegmentatorSegmenter(
            dataclasses.replace(settings, device="cuda" if device == "gpu" else "cpu"))

    def _one(self, rec: dict[str, Any]) -> dict[str, Any]:
        from ctvlp.transforms import io
        from ingest.process import read_checked

        t0 = time.perf_counter()
        out = {"study_id": rec["study_id"], "seg_status": "skipped", "seg_error": "",
               "seg_actor": self.actor_id, "seg_loads": self.segmenter.load_count}
        if not (rec.get("findings") or rec.get("impression")):
            return {**out, "seg_s": 0.0}  # quarantined as missing_report before any decode
        try:
            image, _, affine, _, _ = read_checked(rec, self.stage)
        except Exception:  # noqa: BLE001 - the CPU stage quarantines it with the precise reason
            return {**out, "seg_s": time.perf_counter() - t0}
        try:
            labels = self.segmenter(image, affine)
            self.stage.storage.write_bytes(mask_uri(self.root, rec["study_id"]), io.nifti_bytes(labels, affine))
            out["seg_status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one failed study must not stop the pool
            # The type and our own limit messages only: a library's message may quote a path.
            detail = str(exc) if "max_voxels" in str(exc) else ""
            out.update(seg_status="failed", seg_error=f"{type(exc).__name__}" + (f": {detail}" if detail else ""))
        out["seg_s"] = time.perf_counter() - t0
        out["seg_loads"] = self.segmenter.load_count
        return out

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([self._one(r) for r in batch.to_dict("records")])


def run_segmentation(pending: pd.DataFrame, cfg: Any, log: Any = print) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Segment the studies of ``pending`` that need it; returns ``pending`` with ``mask_uri`` set
    (and ``_seg_error`` on failures) and the stage's stats (actors, loads, seconds per volume)."""
    import ray

    seg, storage, root = cfg.segment, cfg.stage.storage, cfg.shards_uri
    stored = set(storage.list_files(join(root, MASK_DIR), ".nii.gz"))
    pending = pending.copy()
    pending["_seg_error"] = ""
    supplied = pending.mask_uri.astype(bool)
    done = ~supplied & pending.study_id.map(lambda s: mask_uri(root, s) in stored)
    pending.loc[done, "mask_uri"] = pending.loc[done, "study_id"].map(lambda s: mask_uri(root, s))
    todo = pending[~supplied & ~done]
    stats: dict[str, Any] = {"num_supplied": int(supplied.sum()), "num_stored": int(done.sum()),
                             "num_segmented": 0, "num_failed": 0, "actors": {}, "seconds": 0.0}
    if todo.empty:
        return pending, stats
    n, resources = seg.pool(float(ray.cluster_resources().get("GPU", 0)))
    device = "gpu" if "num_gpus" in resources else "cpu"
    frame = todo[[c for c in COLUMNS if c in todo]].reset_index(drop=True)
    blocks = [frame.iloc[i : i + seg.batch_size] for i in range(0, len(frame), seg.batch_size)]
    log(f"[ingest] segmenting {len(frame)} studies with {n} {device} actor(s) ({seg.settings.task.name})")
    t0 = time.perf_counter()
    rows = ray.data.from_pandas(blocks).map_batches(
        SegmentActor, fn_constructor_kwargs={"settings": seg.settings, "stage": cfg.stage, "root": root,
                                             "device": device},
        batch_size=seg.batch_size, batch_format="pandas", concurrency=n, **resources,
    ).to_pandas()
    stats["wall_s"] = time.perf_counter() - t0
    by_id = rows.set_index("study_id")
    ok = pending.study_id.isin(by_id.index[by_id.seg_status == "ok"])
    failed = by_id[by_id.seg_status == "failed"].seg_error
    pending.loc[ok, "mask_uri"] = pending.loc[ok, "study_id"].map(lambda s: mask_uri(root, s))
    bad = pending.study_id.isin(failed.index)
    pending.loc[bad, "_seg_error"] = pending.loc[bad, "study_id"].map(failed)
    stats.update(num_segmented=int((rows.seg_status == "ok").sum()), num_failed=len(failed),
                 seconds=float(rows.seg_s.sum()), device=device,
                 actors={a: int(g.seg_loads.max()) for a, g in rows.groupby("seg_actor")},
                 studies_per_actor={a: len(g) for a, g in rows.groupby("seg_actor")})
    ran = rows[rows.seg_status != "skipped"]
    stats["s_per_volume"] = float(ran.seg_s.mean()) if len(ran) else 0.0
    log(f"[ingest] segmentation: {stats['num_segmented']} masks, {stats['num_failed']} failed, "
        f"{len(stats['actors'])} actors, network loads per actor {sorted(stats['actors'].values())}, "
        f"{stats['s_per_volume']:.2f} s/volume, wall {stats['wall_s']:.1f} s")
    return pending, stats


def summary_lines(stats: dict[str, Any]) -> list[str]:
    """The segmentation section of ``summary.md`` (no ids: counts and seconds)."""
    if not stats:
        return []
    loads = sorted(stats.get("actors", {}).values())
    return ["## Segmentation (TotalSegmentator, this run)", "",
            f"- masks made: {stats['num_segmented']}, failed (quarantined as segmentation_failed): "
            f"{stats['num_failed']}, supplied: {stats['num_supplied']}, reused from an earlier run: "
            f"{stats['num_stored']}",
            f"- actors: {len(loads)} ({stats.get('device', '-')}), network loads per actor: {loads}; "
            f"studies per actor: {sorted(stats.get('studies_per_actor', {}).values())}",
            f"- seconds per segmented volume: {stats.get('s_per_volume', 0.0):.2f} "
            f"(sum {stats.get('seconds', 0.0):.1f} s, wall {stats.get('wall_s', 0.0):.1f} s)", ""]

