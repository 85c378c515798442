"""The control plane at full size: ingest's planning, grouping, commit and indexing, and the
readers' discovery, on synthetic manifests of 1K .. 272K rows; time, peak memory and storage
requests (LIST/HEAD/GET/PUT/DELETE, counted by ``ingest.requests``).

What runs is the job's own driver code (``ingest.pipeline.prepare``, ``wave_rows``,
``ingest.shards.write_group``, ``ingest.pipeline.finalize``, ``jobs.data.shard_files``,
``jobs.data.ShardFiles.get_read_tasks``) on a real store. **Per-study processing is bypassed**:
each study becomes a stub shard row (a 2 x 2 x 2 volume, 0.2 % quarantined), and the grouping of
a wave's rows by shard is a pandas groupby on the driver where the job runs Ray Data's
``groupby(shard).map_groups`` (the shuffle of the volumes is data-plane work, proportional to a
wave, not to the dataset). The shard plan is the real one (``ctrate-chest`` sample size,
``ingest.shard_target_mb``), so the number of files is what a real run writes.

Phases timed (each with its requests): ``plan`` (manifest read, exclusions, duplicates, shard
plan, job fingerprint, committed listing), ``commit`` (waves of 128 groups: rows -> stub ->
``write_group``), ``index`` (``finalize``: index from metadata columns, count check, summary),
``resume_plan`` (``prepare`` again with every group committed), ``readers`` (train + valid
discovery and two epochs' planning, as the Train job does), and for comparison
``readers_before``: the discovery this issue replaced (list and GET every ``_done`` marker, open
every footer, size every file; Ray Data then listed and read footers again every epoch, not
counted here).

Storage: moto S3 (in-process server) up to ``--s3-max`` rows, local files at every size. Request
counts transfer to S3; moto's timings do not. Each size runs in a fresh process (peak RSS).

    python bench/control_plane.py [--sizes 1000 10000 100000 272124] [--s3-max 10000]

Writes bench/results/control_plane.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]
PHASES = ("plan", "commit", "index", "resume_plan", "readers", "readers_before")
GROUPS_PER_WAVE = 128  # 2 x 64 CPUs: the job's default on a 64-CPU ingest cluster


def synthetic_manifest(n: int):
    """``n`` rows in CT-RATE's naming: ~2 volumes per study, ~1.3 studies per patient; 90 % train,
    5 % valid, 5 % test by patient; 0.05 % duplicated ids (quarantined by the job)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    patients = rng.integers(0, max(1, int(n / 2.6)), n)
    ids = [f"train_{p}_a_{i}" for i, p in enumerate(patients)]
    split = np.where(patients % 20 == 0, "valid", np.where(patients % 20 == 1, "test", "train"))
    df = pd.DataFrame({"study_id": ids, "patient_id": [f"p{p}" for p in patients], "split": split,
                       "image_uri": [f"volumes/{i}.nii.gz" for i in ids], "mask_uri": [f"masks/{i}.nii.gz" for i in ids],
                       "findings": "Lungs are clear.", "impression": "No acute findings."})
    dups = df.sample(frac=0.0005, random_state=0)
    return pd.concat([df, dups], ignore_index=True)


def stub_rows(frame, num_anatomies: int) -> list[dict]:
    """Per-study processing bypassed: one tiny shard row per study (0.2 % quarantined)."""
    import numpy as np

    from ctvlp.data import encode_volume
    from ingest.shards import bucket_of

    vol = encode_volume(np.zeros((2, 2, 2), np.uint8))
    m = num_anatomies
    out = []
    for r in frame.itertuples():
        if bucket_of(r.study_id, 500) == 0:
            out.append({"study_id": r.study_id, "split": r.split, "status": "quarantined", "reason": "unreadable",
                        "detail": "stub", "shard": r.shard})
            continue
        out.append({"study_id": r.study_id, "split": r.split, "status": "ok", "shape": [2, 2, 2],
                    "spacing": [3.0, 1.0, 1.0], "image": vol, "mask": vol, "codec": "zstd",
                    "boxes": [[-1] * 6] * m, "voxel_counts": [0] * m, "texts": ["stub"] * m,
                    "abnormal": [0] * m, "input_ids": [[2, 3]] * m, "disease_labels": "{}",
                    "meta": json.dumps({"oblique_deg": 0.0}), "shard": r.shard})
    return out


def commit(cfg, pending) -> int:
    """The job's wave loop with the map stages replaced by :func:`stub_rows`."""
    from ingest.pipeline import _waves, wave_rows
    from ingest.shards import write_group

    pending = pending.sort_values("shard", kind="stable")
    groups = 0
    for wave in _waves(sorted(pending.shard.unique()), GROUPS_PER_WAVE):
        frame = wave_rows(pending, wave)
        for shard, rows in frame.groupby("shard", sort=True):
            write_group(stub_rows(rows, len(cfg.stage.anatomies)), shard, cfg.stage.storage, cfg.shards_uri)
            groups += 1
    return groups


def readers(storage, root: str) -> dict:
    """Train + valid discovery and two epochs' planning, as ``build_train_dataset`` does."""
    from jobs.data import _TRAIN_COLUMNS, ShardFiles, shard_files

    spec = SimpleNamespace(data=SimpleNamespace(shards_uri=root))
    files = shard_files(spec, "train", storage)
    valid = shard_files(spec, "valid", storage)
    source = ShardFiles(files, storage, _TRAIN_COLUMNS)
    tasks = [len(source.get_read_tasks(64)) for _ in range(2)]  # two epochs
    return {"train_files": len(files), "valid_files": len(valid), "read_tasks": tasks,
            "train_rows": sum(f.rows for f in files)}


def readers_before(storage, root: str) -> dict:
    """The discovery before issue 25 (jobs/data.py at the merge base), for comparison."""
    import pyarrow.parquet as pq

    from ingest.shards import completed, data_uri

    done = completed(storage, root)  # LIST _done/, GET every marker
    out = {}
    for split in ("train", "valid"):
        uris = sorted(data_uri(root, s) for s, rec in done.items() if s.startswith(f"{split}-") and rec["written"])
        rows = size = 0
        for uri in uris:
            fs, path = storage.fs(uri)
            with fs.open(path, "rb") as f:  # count_rows: one footer per file
                rows += pq.ParquetFile(f).metadata.num_rows
            size += int(fs.size(path))  # shard_bytes: one size per file
        out[split] = {"files": len(uris), "rows": rows, "bytes": size}
    return out


def one(n: int, backend: str, endpoint: str | None, work: str) -> dict:
    """One size on one store, in this process; returns per-phase seconds, requests and RSS."""
    import dataclasses

    import psutil

    import jobs.data  # noqa: F401 - imported before the clock starts (it imports Ray Data)
    from ctvlp.config import load_spec
    from ingest.pipeline import IngestConfig, finalize, prepare
    from ingest.requests import read_requests
    from ingest.storage import Storage

    log = os.path.join(work, f"requests-{backend}-{n}.log")
    base = f"s3://bench/cp-{n}" if backend == "s3" else os.path.join(work, f"cp-{n}")
    storage = Storage(endpoint_url=endpoint, sse=None, request_log=log)
    manifest_uri = f"{base}/manifest.parquet"
    buf = __import__("io").BytesIO()
    synthetic_manifest(n).to_parquet(buf, index=False)
    Storage(endpoint_url=endpoint, sse=None).write_bytes(manifest_uri, buf.getvalue())
    spec = load_spec(None, ["data.preset=ctrate-chest", f"data.source_uri={manifest_uri}", "data.manifest_format=parquet",
                            f"data.shards_uri={base}/shards", "model.text.name_or_path=tiny"])
    cfg = IngestConfig.from_spec(spec)
    cfg = dataclasses.replace(cfg, stage=dataclasses.replace(cfg.stage, storage=storage))
    rss0 = psutil.Process().memory_info().rss
    out: dict = {"rows": n, "backend": backend, "phases": {}}

    def timed(name, fn):
        before = len(read_requests(log))
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        reqs = read_requests(log)[before:]
        kinds: dict[str, int] = {}
        for kind, _ in reqs:
            kinds[kind] = kinds.get(kind, 0) + 1
        out["phases"][name] = {"seconds": seconds, "requests": kinds,
                               "rss_mb": psutil.Process().memory_info().rss / 2**20}
        return result

    plan = timed("plan", lambda: prepare(cfg, log=lambda s: None))
    out["shard_groups"] = int(plan["planned"].shard.nunique())
    timed("commit", lambda: commit(cfg, plan["pending"]))
    index = timed("index", lambda: finalize(cfg, plan["manifest_size"], {"manifest_size": plan["manifest_size"]}))
    again = timed("resume_plan", lambda: prepare(cfg, log=lambda s: None))
    assert len(again["pending"]) == 0, "every group was committed"
    out["readers"] = timed("readers", lambda: readers(storage, cfg.shards_uri))
    out["readers_before"] = timed("readers_before", lambda: readers_before(storage, cfg.shards_uri))
    assert out["readers"]["train_rows"] == out["readers_before"]["train"]["rows"]
    out.update(written=index["num_written"], quarantined=index["num_quarantined"], files=index["num_shards"],
               index_kb=len(storage.read_bytes(f"{cfg.shards_uri}/index.json")) / 1024,
               rss_after_imports_mb=rss0 / 2**20,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _moto():
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 272124])
    ap.add_argument("--s3-max", type=int, default=10000)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="local", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one is not None:  # child: one size on one store
        print("RESULT " + json.dumps(one(args.one, args.backend, args.endpoint, args.work)))
        return 0
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    server, endpoint = _moto()
    work = tempfile.mkdtemp(prefix="ctvlp-cp-")
    results = []
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        for n in args.sizes:
            for backend in (["s3"] if n <= args.s3_max else []) + ["local"]:
                cmd = [sys.executable, __file__, "--one", str(n), "--backend", backend, "--work", work,
                       *(["--endpoint", endpoint] if backend == "s3" else [])]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    raise RuntimeError(f"{backend} {n} failed:\n{proc.stderr[-3000:]}")
                results.append(json.loads(line[0][len("RESULT "):]))
                r = results[-1]
                print(f"{backend:5s} {n:7d} rows, {r['files']} files: " + ", ".join(
                    f"{p} {r['phases'][p]['seconds']:.1f}s" for p in PHASES) + f"; peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    record = {"command": "python bench/control_plane.py --sizes " + " ".join(map(str, args.sizes))
              + f" --s3-max {args.s3_max}", "load_avg_1m_after": os.getloadavg()[0],
              "cpu_cores": os.cpu_count(), "results": results}
    write_results(record)
    return 0


def _req(phase: dict) -> str:
    r = phase["requests"]
    return " / ".join(str(r.get(k, 0)) for k in ("LIST", "HEAD", "GET", "PUT", "DELETE"))


def write_results(record: dict) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "control_plane.json").write_text(json.dumps(record, indent=1))
    lines = ["# The control plane at 1K .. 272K studies (bench/control_plane.py)", "",
             f"`{record['command']}` (1-min load average after: {record['load_avg_1m_after']:.1f}, "
             f"{record['cpu_cores']} cores)", "",
             "Per-study processing bypassed (stub rows; module docstring). Requests as "
             "LIST / HEAD / GET / PUT / DELETE (`ingest.requests`: an open for reading is a HEAD, "
             "each read of it a GET). moto timings are not S3's; its request counts are.", ""]
    lines += ["| store | rows | files | " + " | ".join(f"{p} s" for p in PHASES) + " | peak RSS MB (after imports) |",
              "|---|---|---|" + "---|" * len(PHASES) + "---|"]
    for r in record["results"]:
        lines.append(f"| {r['backend']} | {r['rows']:,} | {r['files']:,} | "
                     + " | ".join(f"{r['phases'][p]['seconds']:.2f}" for p in PHASES)
                     + f" | {r['peak_rss_mb']:.0f} ({r['rss_after_imports_mb']:.0f}) |")
    lines += ["", "Requests (LIST / HEAD / GET / PUT / DELETE):", "",
              "| store | rows | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
    for r in record["results"]:
        lines.append(f"| {r['backend']} | {r['rows']:,} | " + " | ".join(_req(r["phases"][p]) for p in PHASES) + " |")
    lines += ["", "`readers` is what a training job does now: one GET of `index.json` "
              "(size in the json, `index_kb`), no listing, and no request at all to plan an epoch; "
              "`readers_before` is the discovery it replaced, and Ray Data's `read_parquet` then "
              "listed the files and read their footers again in every epoch.", ""]
    (out / "control_plane.md").write_text("\n".join(lines) + "\n")
    plot(record, out / "control_plane.png")


def plot(record: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    local = [r for r in record["results"] if r["backend"] == "local"]
    s3 = [r for r in record["results"] if r["backend"] == "s3"]
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for p in PHASES:
        ax_t.plot([r["rows"] for r in local], [r["phases"][p]["seconds"] for r in local], "o-", label=p)
        total = [sum(r["phases"][p]["requests"].values()) for r in local]
        ax_r.plot([r["rows"] for r in local], [max(t, 0.5) for t in total], "o-", label=p)
    for r in s3:
        ax_r.plot([r["rows"]], [max(0.5, sum(r["phases"]["readers_before"]["requests"].values()))], "kx")
    ax_t.set(xscale="log", yscale="log", xlabel="manifest rows", ylabel="seconds (local files)",
             title="time per phase")
    ax_r.set(xscale="log", yscale="log", xlabel="manifest rows", ylabel="storage requests (0 drawn at 0.5)",
             title="requests per phase (x: moto S3, readers_before)")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
