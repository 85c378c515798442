"""CT-RATE as published, on moto S3: the miniature download (tests/ingest/ctrate_tree.py) ingested
from its root with one known-bad volume excluded; headers repaired from the metadata table."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from ingest import shards
from ingest.pipeline import IngestConfig, run_ingest
from ingest.storage import Storage
from tests.ingest.corpus import tiny_stage, upload_dir
from tests.ingest.ctrate_tree import KNOWN_BAD, SPACING, VOLUMES, build_ctrate_tree

BUCKET = "ingest-ctrate"


@pytest.fixture(scope="module")
def ingested(ray_session, s3_server, s3_client, tmp_path_factory):
    root = build_ctrate_tree(tmp_path_factory.mktemp("ctrate_s3"))
    s3_client.create_bucket(Bucket=BUCKET)
    upload_dir(s3_client, root, BUCKET, "CT-RATE")
    cfg = IngestConfig(
        source_uri=f"s3://{BUCKET}/CT-RATE", shards_uri=f"s3://{BUCKET}/shards",
        stage=tiny_stage(Storage(endpoint_url=s3_server)), manifest_format="ctrate", valid_fraction=0.5,
        batch_size=3, studies_per_shard=3, groups_per_wave=64, exclude_volumes=(f"{KNOWN_BAD}.nii.gz",),
    )
    logs: list[str] = []
    return cfg, run_ingest(cfg, log=logs.append), logs


def test_every_volume_written_and_the_listed_one_quarantined_as_excluded(ingested):
    cfg, stats, logs = ingested
    index = stats["index"]
    assert stats["manifest_size"] == len(VOLUMES) + 1 and stats["num_excluded"] == 1
    assert index["num_written"] == len(VOLUMES) and index["quarantine_reasons"] == {"excluded": 1}
    quarantined = pq.read_table(io.BytesIO(cfg.stage.storage.read_bytes(f"{cfg.shards_uri}/quarantine.parquet")))
    assert quarantined.to_pylist() == [{"study_id": KNOWN_BAD, "split": quarantined["split"][0].as_py(),
                                        "reason": "excluded", "detail": "listed in data.exclude_volumes"}]
    assert any("excluded 1 rows listed in data.exclude_volumes; 0 listed names" in line for line in logs)


def test_shards_hold_repaired_geometry_and_the_18_labels(ingested):
    cfg, _, _ = ingested
    storage = cfg.stage.storage
    rows = [r for f in storage.list_files(f"{cfg.shards_uri}/data", ".parquet")
            for r in shards.read_table(storage, f).to_pylist()]
    assert sorted(r["study_id"] for r in rows) == sorted(VOLUMES)
    for r in rows:
        meta = json.loads(r["meta"])
        # CT-RATE's files say 1 mm: the spacing can only come from the metadata table
        assert meta["header_repaired"] and meta["orig_spacing"] == list(SPACING)
        assert len(json.loads(r["disease_labels"])) == 18
    assert {r["split"] for r in rows if r["study_id"].startswith("valid_")} == {"test"}
