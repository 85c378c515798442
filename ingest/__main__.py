"""``python -m ingest --spec PATH [key=value ...]``: run (or resume) the ingest job of a spec.

Reads ``data.source_uri`` (CT-RATE layout or a CSV/Parquet manifest), writes shards, the
quarantine table, ``index.json`` and ``summary.md`` under ``data.shards_uri`` together with the
resolved spec. Connects to ``$RAY_ADDRESS`` when set (``ray job submit``), else starts local Ray.
Exit status 2 for a bad spec, 1 when the job fails (e.g. the count check).
"""

from __future__ import annotations

import sys

from jobs.common import REPO_ROOT, parse_cli, preflight_cluster, preflight_spec, runtime_env


def main(argv: list[str] | None = None) -> int:
    import os

    import ray

    from ctvlp.config import to_yaml
    from ingest.pipeline import IngestConfig, run_ingest
    from ingest.storage import join

    spec, args = parse_cli("Ingest CT studies from object storage into training shards.", argv)
    preflight_spec(spec, dry_run=args.dry_run, ingest=True)  # before the output folder exists: nothing pinned
    try:
        cfg = IngestConfig.from_spec(spec)
    except ValueError as err:
        print(f"ingest: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(cfg)
        return 0
    if not ray.is_initialized():
        env = runtime_env()
        env["py_modules"] = [*env["py_modules"], str(REPO_ROOT / "ingest")]
        ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env=env)
    preflight_cluster(spec, ingest=True)
    cfg.stage.storage.write_bytes(join(cfg.shards_uri, "resolved_spec.yaml"), to_yaml(spec).encode())
    run_ingest(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
