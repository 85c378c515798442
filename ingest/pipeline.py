"""The Ray Data ingest job: manifest -> (segment) -> CPU stage -> shard groups -> index + summary.

::

    manifest (driver) --invalid split--> quarantine/_invalid_split.parquet
        |             --data.exclude_volumes--> quarantine/_excluded.parquet
        |             --duplicates--> quarantine/_duplicates.parquet
        | plan: study -> shard group (deterministic), skip committed groups (_done/*.json)
        v
    [ingest.segmentation=totalsegmentator: one actor pool for the whole run segments every pending
     study without a mask (ingest.segment); masks stored under <shards_uri>/_masks/]
        v  per wave of groups:
    from_pandas -> [map_batches LLMReportActor, actor pool, only with ingest.report_parser=llm]
                -> map_batches process_batch (CPU: read, decode, repair, canonical, crop, resample,
                   window, boxes, report parse, tokenise, compress)
                -> groupby(shard).map_groups(write one Parquet shard + quarantine part + marker)
    index.json, summary.md, quarantine.parquet; check written + quarantined == manifest size

Groups are processed in waves so that the all-to-all groupby holds a bounded slice of the data
and a killed job loses at most one wave; each wave streams its map stages through Ray Data's
executor (with its progress bars). Only study ids are ever logged.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from ctvlp.tracking import eta_line
from ctvlp.transforms.study import StudyConfig
from ingest import manifest as mf
from ingest import quarantine, shards
from ingest.process import StageConfig, process_records
from ingest.reports import ReportConfig
from ingest.segment import SegmentConfig
from ingest.storage import Storage, join, storage_from_spec

# Output columns of the CPU stage: the shard columns (nullable for quarantined rows) + bookkeeping.
STAGE_SCHEMA = pa.schema(list(shards.SCHEMA) + [
    ("status", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("seconds", pa.float64()), ("timings", pa.string()), ("shard", pa.string()),
])


@dataclass(frozen=True)
class IngestConfig:
    """The job's parameters; :meth:`from_spec` maps a ``JobSpec`` onto it."""

    source_uri: str
    shards_uri: str
    stage: StageConfig
    manifest_format: str = "ctrate"
    valid_fraction: float = 0.1
    seed: int = 0
    segmentation: str = "supplied"
    segment: SegmentConfig | None = None  # with segmentation="totalsegmentator" (ingest.totalseg)
    batch_size: int = 4
    num_cpus_per_task: float = 1.0
    max_studies: int = 0
    shard_target_mb: float = 384.0
    studies_per_shard: int = 0  # >0 overrides the size-based plan (tests)
    groups_per_wave: int = 0  # 0 = 2 x cluster CPUs
    mask_dir: str = "masks"  # CT-RATE layout: masks/<split>/<patient>/<study>/<volume>.nii.gz
    exclude_volumes: tuple[str, ...] = ()  # study ids quarantined as `excluded` (known-bad inputs)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: Any) -> IngestConfig:
        d, ing = spec.data, spec.ingest
        if not d.source_uri or not d.shards_uri:
            raise ValueError("data.source_uri and data.shards_uri must be set for ingest")
        stage = StageConfig(  # the grid and checks exactly as ctvlp.predict reads them from a spec
            **StudyConfig.from_spec(spec).as_kwargs(), codec=ing.codec, codec_level=ing.codec_level,
            text_name_or_path=spec.model.text.name_or_path, max_length=spec.model.text.max_length,
            storage=storage_from_spec(spec), reports=ReportConfig.from_spec(ing),
        )
        segment = SegmentConfig.from_spec(spec) if ing.segmentation == "totalsegmentator" else None
        return cls(
            source_uri=d.source_uri, shards_uri=d.shards_uri, stage=stage,
            manifest_format=d.manifest_format, valid_fraction=d.valid_fraction, seed=spec.seed,
            segmentation=ing.segmentation, segment=segment,
            batch_size=ing.batch_size, num_cpus_per_task=ing.num_cpus_per_task,
            max_studies=ing.max_studies, shard_target_mb=ing.shard_target_mb,
            # Not (yet) in IngestSpec: read with defaults so that the spec can grow them later.
            studies_per_shard=getattr(ing, "studies_per_shard", 0),
            groups_per_wave=getattr(ing, "groups_per_wave", 0),
            mask_dir=getattr(ing, "mask_dir", "masks"),
            exclude_volumes=tuple(d.exclude_volumes),
        )


def process_batch(batch: pd.DataFrame, cfg: StageConfig) -> pa.Table:
    """``map_batches`` UDF: manifest rows -> one output row each (shard row or quarantine row)."""
    rows = process_records(batch.to_dict("records"), cfg)
    return pa.Table.from_pylist(rows, schema=STAGE_SCHEMA)


def write_group_batch(group: pa.Table, storage: Storage, root: str) -> pa.Table:
    """``map_groups`` UDF: one shard group's rows -> files + marker; returns per-study bookkeeping."""
    rows = group.to_pylist()
    t0 = time.perf_counter()
    shards.write_group(rows, rows[0]["shard"], storage, root)
    write_s = time.perf_counter() - t0
    return pa.Table.from_pylist([
        {"study_id": r["study_id"], "shard": r["shard"], "status": r["status"],
         "seconds": r["seconds"], "timings": r["timings"], "write_s": write_s / len(rows)}
        for r in rows
    ])


def _fingerprint(planned: pd.DataFrame, cfg: IngestConfig) -> dict[str, Any]:
    import hashlib

    st = cfg.stage
    ids = "\n".join(f"{s}\t{p}\t{h}" for s, p, h in planned[["study_id", "split", "shard"]].itertuples(index=False))
    return {
        "studies_sha1": hashlib.sha1(ids.encode()).hexdigest(),
        "grouping": st.grouping, "spacing": list(st.spacing), "hu_window": list(st.hu_window),
        "crop_margin": list(st.crop_margin), "min_size": list(st.min_size), "codec": st.codec,
        "codec_level": st.codec_level, "tokenizer": st.text_name_or_path, "max_length": st.max_length,
        "reports": st.reports.fingerprint(), "min_slices": st.min_slices,
        "min_extent_mm": list(st.min_extent_mm), "max_oblique_deg": st.max_oblique_deg,
        # Only where they apply, so that shards of earlier runs without them still resume.
        **({"segmentation": cfg.segment.fingerprint()} if cfg.segment else {}),
        **({"dicom": dataclasses.asdict(st.dicom)} if (planned.image_format == "dicom").any() else {}),
    }


def _check_job(storage: Storage, root: str, fp: dict[str, Any]) -> None:
    """Refuse to mix outputs of a different manifest or processing spec in one shards_uri."""
    uri = join(root, "_job.json")
    if storage.exists(uri):
        old = json.loads(storage.read_bytes(uri))
        diff = sorted(k for k in fp if old.get(k) != fp[k])
        if diff:
            raise ValueError(
                f"{root} holds shards of a different ingest (differs in {diff}); "
                "resume only with the same manifest and spec, or choose a new data.shards_uri"
            )
    else:
        storage.write_bytes(uri, json.dumps(fp, indent=1).encode())


def _waves(shard_names: list[str], per_wave: int) -> list[list[str]]:
    return [shard_names[i : i + per_wave] for i in range(0, len(shard_names), per_wave)]


def wave_rows(pending: pd.DataFrame, wave: list[str]) -> pd.DataFrame:
    """The rows of ``wave`` (consecutive names of the sorted plan) from ``pending`` sorted by
    shard: one binary search per wave, not a scan of the whole plan (that would be N x waves)."""
    col = pending.shard.to_numpy()
    lo, hi = col.searchsorted(wave[0], side="left"), col.searchsorted(wave[-1], side="right")
    return pending.iloc[lo:hi]


def _quarantine_listed(storage: Storage, root: str, name: str, rows: pd.DataFrame, reason: str,
                       detail: str | Callable[[Any], str]) -> None:
    """One quarantine part for manifest rows set aside before decoding (deterministic content:
    rewriting it on a rerun changes nothing). ``detail`` is a string or a function of the row."""
    if len(rows):
        rows_out = [quarantine.row(r.study_id, r.split, reason, detail(r) if callable(detail) else detail)
                    for r in rows.itertuples()]
        table = quarantine.to_table(rows_out)
        storage.write_bytes(shards.quarantine_uri(root, name), shards._parquet_bytes(table))


def prepare(cfg: IngestConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Driver-side planning: manifest, exclusions, duplicates, shard plan, resume state. No decoding."""
    storage, root = cfg.stage.storage, cfg.shards_uri
    df = mf.build_manifest(storage, cfg.source_uri, cfg.manifest_format,
                           valid_fraction=cfg.valid_fraction, seed=cfg.seed, mask_dir=cfg.mask_dir)
    if cfg.max_studies:
        df = df.head(cfg.max_studies)
    df, bad_split = mf.split_invalid_splits(df)
    kept, excluded, unmatched = mf.split_excluded(df, cfg.exclude_volumes)
    unique, dups = mf.split_duplicates(kept)
    planned = shards.plan_shards(
        unique, target_mb=cfg.shard_target_mb, studies_per_shard=cfg.studies_per_shard,
        sample_mb=shards.estimate_sample_mb(cfg.stage.min_size),
    )
    _check_job(storage, root, _fingerprint(planned, cfg))
    _quarantine_listed(storage, root, "_invalid_split", bad_split, "invalid_split",
                       lambda r: f"split {r.raw_split[:20]!r} is not one of {list(mf.SPLITS)}")
    _quarantine_listed(storage, root, "_excluded", excluded, "excluded", "listed in data.exclude_volumes")
    _quarantine_listed(storage, root, "_duplicates", dups, "duplicate_study_id", "later manifest row")
    if cfg.exclude_volumes:
        log(f"[ingest] excluded {len(excluded)} rows listed in data.exclude_volumes; "
            f"{len(unmatched)} listed names are not in the manifest")
    done = shards.committed(storage, root)  # one listing; markers are not read
    pending = planned[~planned.shard.isin(done)]
    log(f"[ingest] manifest: {len(df)} rows, {len(dups)} duplicate ids, "
        f"{planned.shard.nunique()} shard groups; already done: {len(planned) - len(pending)} "
        f"studies in {len(done)} groups; to decode now: {len(pending)} studies")
    if len(bad_split):
        log(f"[ingest] {len(bad_split)} rows with an invalid split quarantined (invalid_split)")
    return {"manifest_size": len(df) + len(bad_split), "planned": planned, "pending": pending,
            "num_dups": len(dups), "num_excluded": len(excluded), "num_invalid_split": len(bad_split)}


def _run_wave(frame: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    import ray
    from ray.data.context import DataContext, ShuffleStrategy

    # Task-based sort shuffle for the groupby: the default hash shuffle starts aggregator actors
    # (a process each) per run, which costs far more than shuffling a few thousand small rows.
    ctx = DataContext.get_current()
    previous, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        # One block per batch: a single from_pandas block would run every study in one task.
        frame = frame.reset_index(drop=True)
        step = cfg.batch_size
        blocks = [frame.iloc[i : i + step] for i in range(0, len(frame), step)]
        return _execute_wave(ray.data.from_pandas(blocks), frame, cfg)
    finally:
        ctx.shuffle_strategy = previous


def _execute_wave(ds, frame: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    if cfg.stage.reports.parser == "llm":
        from ingest.reports import add_llm_stage

        ds = add_llm_stage(ds, cfg.stage.anatomies, cfg.stage.reports)
    ds = ds.map_batches(
        process_batch, fn_kwargs={"cfg": cfg.stage}, batch_size=cfg.batch_size,
        batch_format="pandas", num_cpus=cfg.num_cpus_per_task,
    )
    # One reduce partition per group at most: the default (200) costs seconds of empty tasks.
    num_partitions = max(1, min(frame.shard.nunique(), 64))
    out = ds.groupby("shard", num_partitions=num_partitions).map_groups(
        write_group_batch, fn_kwargs={"storage": cfg.stage.storage, "root": cfg.shards_uri},
        batch_format="pyarrow",
    )
    return out.to_pandas()


def _stage_seconds(results: pd.DataFrame) -> dict[str, float]:
    total: dict[str, float] = {}
    for t in results.get("timings", []):
        for k, v in json.loads(t).items():
            total[k] = total.get(k, 0.0) + v
    total["write"] = float(results["write_s"].sum()) if len(results) else 0.0
    return total


def finalize(cfg: IngestConfig, manifest_size: int, stats: dict[str, Any]) -> dict[str, Any]:
    """Index, summary and the consolidated quarantine table; the exact-count check (raises)."""
    storage, root = cfg.stage.storage, cfg.shards_uri
    index, quar = shards.build_index(storage, root, cfg.stage.anatomies)
    written = index["num_written"]
    if index["num_unique_written"] != written:
        raise RuntimeError(f"{written - index['num_unique_written']} studies written twice under {root}")
    if written + len(quar) != manifest_size:
        raise RuntimeError(
            f"count check failed: written {written} + quarantined {len(quar)} != manifest "
            f"{manifest_size}: shards under {root} are incomplete or from another run"
        )
    index["manifest_size"] = manifest_size
    storage.write_bytes(shards.index_uri(root), json.dumps(index, indent=1).encode())
    storage.write_bytes(join(root, "summary.md"), shards.summary_markdown(index, stats).encode())
    storage.write_bytes(join(root, "quarantine.parquet"),
                        shards._parquet_bytes(pa.Table.from_pandas(quar, preserve_index=False)))
    return index


def run_ingest(cfg: IngestConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the ingest job. Returns run stats; raises when the counts do not add up."""
    import ray

    t0 = time.perf_counter()
    if cfg.segment:
        from jobs.preflight import require_segmentation

        require_segmentation(cfg.segment)  # before anything is read or written (jobs/preflight.py)
    plan = prepare(cfg, log)
    pending, seg_stats = plan["pending"], {}
    if cfg.segment and len(pending):
        from ingest.segment import run_segmentation

        pending, seg_stats = run_segmentation(pending, cfg, log)
    pending = pending.sort_values("shard", kind="stable")  # a wave is one slice of it
    names = sorted(pending.shard.unique())
    per_wave = cfg.groups_per_wave or max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
    results = []
    waves = _waves(names, per_wave)
    t_waves, done = time.perf_counter(), 0
    for i, wave in enumerate(waves):
        tw = time.perf_counter()
        frame = wave_rows(pending, wave)
        res = _run_wave(frame, cfg)
        results.append(res)
        now, done = time.perf_counter(), done + len(frame)
        log(f"{eta_line('ingest', done, len(pending), now - t_waves, 'studies')} | wave {i + 1}/{len(waves)}: "
            f"{len(frame)} studies in {len(wave)} groups, {now - tw:.1f} s")
    res = pd.concat(results, ignore_index=True) if results else pd.DataFrame(
        columns=["study_id", "status", "seconds", "timings", "write_s"])
    stats = {
        "manifest_size": plan["manifest_size"], "num_decoded": len(res), "num_dups": plan["num_dups"],
        "num_excluded": plan["num_excluded"], "num_invalid_split": plan["num_invalid_split"],
        "num_skipped": len(plan["planned"]) - len(pending),
        "num_ok_this_run": int((res.status == "ok").sum()) if len(res) else 0,
        "stage_seconds": _stage_seconds(res), "num_waves": len(waves), "segmentation": seg_stats,
    }
    stats["wall_s"] = time.perf_counter() - t0
    index = finalize(cfg, stats["manifest_size"], stats)
    stats["index"] = index
    log(f"[ingest] done: written {index['num_written']}, quarantined {index['num_quarantined']}, "
        f"manifest {stats['manifest_size']}; decoded this run {stats['num_decoded']}, "
        f"skipped {stats['num_skipped']}; wall {stats['wall_s']:.1f} s")
    for stage, sec in stats["stage_seconds"].items():
        rate = stats["num_decoded"] / sec if sec > 0 else float("inf")
        log(f"[ingest]   stage {stage:<9} {sec:8.2f} s total  {rate:8.2f} studies/s per core")
    root = cfg.shards_uri
    log(f"[ingest] outputs under {root}: shards {join(root, 'data')}, {join(root, 'index.json')}, "
        f"{join(root, 'summary.md')} (counts, reasons), {join(root, 'quarantine.parquet')} (one row per bad input)")
    return stats
