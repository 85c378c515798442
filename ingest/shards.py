"""Training shards: deterministic shard plan, the group writer, completion markers, index, summary.

Format: **Parquet**, one row per study (schema: docs/DESIGN.md), volumes as compressed uint8
inside binary columns (Parquet's own compression is off for those two columns, zstd for the
rest). Chosen over WebDataset tar by measurement (``bench/shard_format.py``, figures in
``bench/results/shard_format.md``): read + decode samples/s per core are set by the volume codec,
not by the container (Parquet and tar were within the run-to-run noise of our shared 2-core
machine), so Parquet wins on what is left: column projection (the index and the eval's metadata
scans read no voxels), row groups for streaming a 384 MB shard without holding it, typed nested
columns for boxes and token ids instead of per-sample JSON members, and per-file parallel reads
in Ray Data (one read task per file the index lists: ``jobs.data.read_shards``). Codec (``ingest.codec``/``codec_level``): on a 143 x 256 x 352
uint8 crop, lz4 decoded 2-5x faster than zstd-3 for ~1.5x the bytes, zstd-1 sat between them
(the default level since issue 25: +11 % bytes of zstd-3, half its encode and ~0.6x its decode time),
gzip (.nii.gz) was the slowest; the choice is bytes on the wire/disk vs cores per GPU.

Naming and resumption ("nothing lost, nothing twice"): the plan assigns each study to
``<split>-<bucket>-of-<n>`` with ``bucket = sha1(study_id) mod n`` and ``n`` from the split's size
and the target shard size, so a rerun over the same manifest makes the same plan. A group is
committed by ``_done/<shard>.json`` (its written and quarantined study ids), written after the
data and quarantine files; a rerun skips committed groups and rewrites the others under the same
names (a partially written group is overwritten, never duplicated). Once every group is committed
and the counts add up, ``index.json`` lists the shard files of each split with their rows and
bytes (:func:`shard_table`): readers take their file list from it, never from a listing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ingest import quarantine
from ingest.storage import Storage, join

SCHEMA = pa.schema([
    ("study_id", pa.string()),
    ("split", pa.string()),
    ("shape", pa.list_(pa.int32())),
    ("spacing", pa.list_(pa.float32())),
    ("image", pa.binary()),
    ("mask", pa.binary()),
    ("codec", pa.string()),
    ("boxes", pa.list_(pa.list_(pa.int32()))),
    ("voxel_counts", pa.list_(pa.int64())),
    ("texts", pa.list_(pa.string())),
    ("abnormal", pa.list_(pa.int8())),
    ("input_ids", pa.list_(pa.list_(pa.int32()))),
    ("disease_labels", pa.string()),
    ("meta", pa.string()),
])
META_COLUMNS = ["study_id", "split", "shape", "spacing", "voxel_counts", "abnormal", "meta"]
ROWS_PER_ROW_GROUP = 16  # ~50-80 MB per row group at CT-RATE crop sizes: streamable


def data_uri(root: str, shard: str) -> str:
    return join(root, "data", f"{shard}.parquet")


def quarantine_uri(root: str, shard: str) -> str:
    return join(root, "quarantine", f"{shard}.parquet")


def done_uri(root: str, shard: str) -> str:
    return join(root, "_done", f"{shard}.json")


def bucket_of(study_id: str, num_buckets: int) -> int:
    """Stable across processes and machines (unlike ``hash()``, which is salted per process)."""
    return int(hashlib.sha1(study_id.encode()).hexdigest()[:12], 16) % num_buckets


def estimate_sample_mb(min_size: tuple[int, int, int]) -> float:
    """Stored MB per sample: crops average ~1.3x min size, zstd-3 keeps ~40 % of uint8 CT voxels
    (bench/results/shard_format.md) and the mask adds ~2 %."""
    return 1.3 * float(np.prod(min_size)) * 0.42 / 1e6


def plan_shards(df: pd.DataFrame, *, target_mb: float, sample_mb: float,
                studies_per_shard: int = 0) -> pd.DataFrame:
    """Add a ``shard`` column: ``<split>-<bucket:05d>-of-<n:05d>``, deterministic per study id.

    ``n`` per split is ``ceil(num_studies / studies_per_shard)`` when given (tests), else
    ``ceil(num_studies * sample_mb / target_mb)``.
    """
    out = df.copy()
    out["shard"] = ""
    for split, idx in out.groupby("split").groups.items():
        n_studies = len(idx)
        if studies_per_shard > 0:
            n = math.ceil(n_studies / studies_per_shard)
        else:
            n = math.ceil(n_studies * sample_mb / target_mb)
        n = max(1, n)
        out.loc[idx, "shard"] = [f"{split}-{bucket_of(s, n):05d}-of-{n:05d}"
                                 for s in out.loc[idx, "study_id"]]
    return out


def committed(storage: Storage, root: str) -> set[str]:
    """Names of the committed groups, from one listing of ``_done/`` (no marker is read)."""
    prefix = join(root, "_done") + "/"
    return {uri[len(prefix):-len(".json")] for uri in storage.list_files(join(root, "_done"), ".json")}


def completed(storage: Storage, root: str) -> dict[str, dict[str, Any]]:
    """Committed groups with their markers: ``{shard: {"written": [...], "quarantined": [...]}}``
    (one GET per group: for audits and tests; planning needs only :func:`committed`)."""
    out = {}
    for uri in storage.list_files(join(root, "_done"), ".json"):
        rec = json.loads(storage.read_bytes(uri))
        out[rec["shard"]] = rec
    return out


def _parquet_bytes(table: pa.Table, binary_cols: tuple[str, ...] = ()) -> bytes:
    # Already-compressed volumes: a second (Parquet) zstd pass costs CPU and saves nothing.
    compression = {c: ("none" if c in binary_cols else "zstd") for c in table.column_names}
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression, row_group_size=ROWS_PER_ROW_GROUP,
                   use_dictionary=[c for c in table.column_names if c not in binary_cols])
    return buf.getvalue()


def write_group(rows: list[dict[str, Any]], shard: str, storage: Storage, root: str) -> dict:
    """Write one group's shard and quarantine part, then its commit marker. Returns the marker.

    ``rows`` are :func:`ingest.process.process_records` outputs of exactly one shard group.
    """
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["study_id"])
    bad = sorted((r for r in rows if r["status"] != "ok"), key=lambda r: r["study_id"])
    if ok:
        table = pa.Table.from_pylist([{k: r[k] for k in SCHEMA.names} for r in ok], schema=SCHEMA)
        storage.write_bytes(data_uri(root, shard), _parquet_bytes(table, ("image", "mask")))
    else:  # a killed earlier attempt may have left a file under this name
        storage.delete(data_uri(root, shard))
    if bad:
        qrows = [quarantine.row(r["study_id"], r["split"], r["reason"], r["detail"]) for r in bad]
        storage.write_bytes(quarantine_uri(root, shard), _parquet_bytes(quarantine.to_table(qrows)))
    else:
        storage.delete(quarantine_uri(root, shard))
    marker = {
        "shard": shard,
        "written": [r["study_id"] for r in ok],
        "quarantined": [r["study_id"] for r in bad],
        "bytes": sum(len(r["image"]) + len(r["mask"]) for r in ok),
    }
    storage.write_bytes(done_uri(root, shard), json.dumps(marker).encode())
    return marker


def read_table(storage: Storage, uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.arrow_fs(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def _read_sized(storage: Storage, uri: str, columns: list[str]) -> tuple[pa.Table, int]:
    """``(columns of the file, its size in bytes)``: the size comes with the open, no extra request."""
    fs, path = storage.arrow_fs(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f, columns=columns), int(f.size())


def shard_table(files: list[str], tables: list[pa.Table], sizes: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The index's ``shards`` entry: ``{split: [{"name", "rows", "bytes"}, ...]}`` sorted by name,
    the split read from the shard name (``<split>-<bucket>-of-<n>``). Readers take their file list
    from it (``jobs.data.shard_files``): no listing, no footer or marker read per epoch."""
    out: dict[str, list[dict[str, Any]]] = {}
    for uri, table, size in sorted(zip(files, tables, sizes), key=lambda t: t[0]):
        name = uri.rsplit("/", 1)[-1].removesuffix(".parquet")
        out.setdefault(name.split("-", 1)[0], []).append({"name": name, "rows": table.num_rows, "bytes": size})
    return out


def _hist(values: list[float], edges: list[float]) -> dict[str, int]:
    counts, _ = np.histogram(values, bins=edges)
    return {f"[{lo:g}, {hi:g})": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], counts)}


def build_index(storage: Storage, root: str, anatomies: list[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(index, quarantine rows)`` of what is under ``root``, from metadata columns only (no voxel
    is read). The index counts unique written ids too, for the exactly-once check."""
    files = storage.list_files(join(root, "data"), ".parquet")
    sized = [_read_sized(storage, f, META_COLUMNS) for f in files]
    tables = [t for t, _ in sized]
    meta = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=META_COLUMNS)
    qfiles = storage.list_files(join(root, "quarantine"), ".parquet")
    qt = [read_table(storage, f) for f in qfiles]
    quar = pa.concat_tables(qt).to_pandas() if qt else pd.DataFrame(columns=quarantine.SCHEMA.names)
    per_split: dict[str, Any] = {}
    for split, g in meta.groupby("split"):
        present = np.stack([np.asarray(v) > 0 for v in g.voxel_counts]) if len(g) else None
        abn = np.stack([np.asarray(v) for v in g.abnormal]) if len(g) else None
        per_split[split] = {
            "num_samples": int(len(g)),
            "anatomy_prevalence": {a: float(present[:, j].mean()) for j, a in enumerate(anatomies)},
            # over known labels; unknown (-1) labels are counted apart
            "abnormal_rate": {a: float((abn[:, j] == 1).sum() / max(1, (abn[:, j] >= 0).sum()))
                              for j, a in enumerate(anatomies)},
            "unknown_rate": {a: float((abn[:, j] < 0).mean()) for j, a in enumerate(anatomies)},
        }
    shapes = np.stack([np.asarray(s) for s in meta["shape"]]) if len(meta) else np.zeros((0, 3))
    spacing = np.stack([np.asarray(s) for s in meta["spacing"]]) if len(meta) else np.zeros((0, 3))
    axes = ("D", "H", "W")
    return {
        "num_written": int(len(meta)),
        "num_unique_written": int(meta.study_id.nunique()),
        "num_quarantined": int(len(quar)),
        "anatomies": anatomies,
        "splits": per_split,
        "quarantine_reasons": {str(k): int(v) for k, v in quar.reason.value_counts().items()},
        "shape_histogram": {ax: _hist(shapes[:, i].tolist(), [0, 64, 96, 128, 192, 256, 384, 512, 1024, 4096])
                            for i, ax in enumerate(axes)},
        "spacing_histogram": {ax: _hist(spacing[:, i].tolist(), [0, 0.5, 0.8, 1.0, 1.5, 2, 3, 5, 8, 20])
                              for i, ax in enumerate(axes)},
        "oblique": _oblique(meta),
        "num_shards": len(files),
        "shards": shard_table(files, tables, [n for _, n in sized]),
    }, quar


def index_uri(root: str) -> str:
    return join(root, "index.json")


def read_index(storage: Storage, root: str) -> dict[str, Any]:
    """The committed dataset's ``index.json`` (one GET). Raises ValueError when there is none."""
    uri = index_uri(root)
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise ValueError(f"no {uri}: ingest writes it when every group is committed and the counts "
                         "add up; run (or finish) the ingest job for this data.shards_uri") from None


def commit_index(storage: Storage, root: str, anatomies: list[str]) -> dict[str, Any]:
    """Build the index of what is under ``root`` and write it as ``index.json`` (tests, benchmarks;
    the ingest job's :func:`ingest.pipeline.finalize` adds its count checks first)."""
    index, _ = build_index(storage, root, anatomies)
    storage.write_bytes(index_uri(root), json.dumps(index, indent=1).encode())
    return index


def _oblique(meta: pd.DataFrame) -> dict[str, Any]:
    """Obliquity of the written studies (``meta.oblique_deg``, snapped to the axes at ingest):
    the largest angle and every study tilted by more than 0.1 degree."""
    angles = {sid: float(json.loads(m or "{}").get("oblique_deg", 0.0))
              for sid, m in zip(meta.study_id, meta.get("meta", []))}
    tilted = {sid: a for sid, a in sorted(angles.items()) if a > 0.1}
    return {"max_deg": max(angles.values(), default=0.0), "num_tilted": len(tilted), "studies_deg": tilted}


def summary_markdown(index: dict[str, Any], stats: dict[str, Any]) -> str:
    """Readable summary: counts, per-anatomy tables, quarantine reasons, throughput. Ids only."""
    lines = ["# Ingest summary", "",
             f"- written: **{index['num_written']}**, quarantined: **{index['num_quarantined']}**, "
             f"manifest: **{stats.get('manifest_size', '?')}**, shards: {index['num_shards']}", ""]
    for split, s in sorted(index["splits"].items()):
        lines += [f"## {split}: {s['num_samples']} samples", "",
                  "| anatomy | present | abnormal |", "|---|---|---|"]
        lines += [f"| {a} | {s['anatomy_prevalence'][a]:.2f} | {s['abnormal_rate'][a]:.2f} |"
                  for a in index["anatomies"]]
        lines.append("")
    obl = index.get("oblique", {})
    if obl:
        lines += [f"Oblique scans snapped to the axes: {obl['num_tilted']} (largest angle "
                  f"{obl['max_deg']:.1f} deg; per study in index.json, `oblique`).", ""]
    lines += ["## Quarantine", "", "| reason | count | meaning |", "|---|---|---|"]
    lines += [f"| {r} | {c} | {quarantine.REASONS.get(r, '')} |"
              for r, c in sorted(index["quarantine_reasons"].items())]
    if stats.get("segmentation"):
        from ingest.segment import summary_lines

        lines += [""] + summary_lines(stats["segmentation"])
    lines += ["", "## Throughput (this run)", "", "| stage | seconds (sum over studies) | studies/s per core |",
              "|---|---|---|"]
    for stage, sec in stats.get("stage_seconds", {}).items():
        rate = stats.get("num_decoded", 0) / sec if sec > 0 else float("nan")
        lines.append(f"| {stage} | {sec:.1f} | {rate:.2f} |")
    lines += ["", f"Wall time {stats.get('wall_s', 0):.1f} s; decoded this run: "
              f"{stats.get('num_decoded', 0)}; skipped (already written): {stats.get('num_skipped', 0)}."]
    return "\n".join(lines) + "\n"
