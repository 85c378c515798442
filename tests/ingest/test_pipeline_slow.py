"""Slow tier: a 50-study synthetic CT-RATE corpus from moto S3 to shards on S3, end to end."""

from __future__ import annotations

import pytest

from ctvlp import anatomy
from ctvlp.synthetic import generate_corpus
from ingest.pipeline import IngestConfig, run_ingest
from ingest.process import StageConfig
from ingest.storage import Storage
from tests.ingest.corpus import upload_dir


@pytest.mark.slow
def test_ctrate_corpus_s3_to_s3(ray_session, s3_server, s3_client, tmp_path):
    summary = generate_corpus(tmp_path / "ctrate", num_studies=50, seed=11, preset="tiny", ctrate_headers=True)
    s3_client.create_bucket(Bucket="ingest-slow")
    upload_dir(s3_client, tmp_path / "ctrate", "ingest-slow", "ctrate")
    stage = StageConfig(grouping=anatomy.CHEST_ABDOMEN, spacing=(8.0, 6.0, 6.0), hu_window=(-1000.0, 1000.0),
                        crop_margin=(2, 3, 3), min_size=(48, 64, 64), text_name_or_path="tiny", max_length=128,
                        storage=Storage(endpoint_url=s3_server))
    cfg = IngestConfig(source_uri="s3://ingest-slow/ctrate", shards_uri="s3://ingest-slow/shards", stage=stage,
                       manifest_format="ctrate", valid_fraction=0.1, seed=0, batch_size=4, studies_per_shard=8)
    stats = run_ingest(cfg, log=print)
    index = stats["index"]
    num_volumes = sum(s["volumes"] for s in summary["splits"].values())
    assert stats["manifest_size"] == num_volumes
    assert index["num_written"] + index["num_quarantined"] == num_volumes
    assert index["num_written"] >= 0.95 * num_volumes  # a clean corpus: nothing should be quarantined
    assert set(index["splits"]) == {"train", "valid", "test"}
    again = run_ingest(cfg, log=print)  # a rerun of a finished job decodes nothing
    assert again["num_decoded"] == 0 and again["index"]["num_written"] == index["num_written"]
