"""Shard plan determinism, group writer + markers, index and summary (local storage, no Ray)."""

from __future__ import annotations

import json
import os

import pandas as pd

from ingest import shards
from ingest.process import process_records
from ingest.storage import Storage
from tests.ingest.corpus import build_fault_corpus, tiny_stage
from ingest import manifest as mf


def test_plan_is_deterministic_and_sized():
    df = pd.DataFrame({"study_id": [f"s{i}" for i in range(100)], "split": ["train"] * 90 + ["test"] * 10})
    a = shards.plan_shards(df, target_mb=100, sample_mb=10, studies_per_shard=0)
    b = shards.plan_shards(df.sample(frac=1, random_state=1), target_mb=100, sample_mb=10)
    assert a.set_index("study_id").shard.to_dict() == b.set_index("study_id").shard.to_dict()
    assert a[a.split == "train"].shard.str.endswith("-of-00009").all()  # 90 * 10 MB / 100 MB
    assert a[a.split == "test"].shard.nunique() == 1
    fixed = shards.plan_shards(df, target_mb=1, sample_mb=1, studies_per_shard=30)
    assert fixed[fixed.split == "train"].shard.str.endswith("-of-00003").all()


def test_write_group_marker_index_summary(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    build_fault_corpus(corpus)
    df, _ = mf.split_duplicates(mf.build_manifest(Storage(), str(corpus / "manifest.csv"), "csv"))
    recs = df[df.study_id.isin(["g0", "g1", "f_nan"])].to_dict("records")
    rows = process_records(recs, tiny_stage())
    root = str(tmp_path / "out")
    marker = shards.write_group(rows, "train-00000-of-00001", Storage(), root)
    assert sorted(marker["written"]) == ["g0", "g1"] and marker["quarantined"] == ["f_nan"]
    assert shards.completed(Storage(), root)["train-00000-of-00001"]["written"] == marker["written"]
    index, quar = shards.build_index(Storage(), root, tiny_stage().anatomies)
    assert index["num_written"] == 2 and quar.reason.tolist() == ["nonfinite"]
    assert index["splits"]["train"]["anatomy_prevalence"]["lung"] == 1.0
    assert index["splits"]["train"]["abnormal_rate"]["heart"] == 1.0
    md = shards.summary_markdown(index, {"manifest_size": 3, "stage_seconds": {"read": 1.0}, "num_decoded": 3})
    assert "written: **2**" in md and "| nonfinite | 1 |" in md
    json.dumps(index)  # serialisable as index.json
    assert shards.committed(Storage(), root) == {"train-00000-of-00001"}  # from the listing alone
    size = os.path.getsize(shards.data_uri(root, "train-00000-of-00001"))
    assert index["shards"] == {"train": [{"name": "train-00000-of-00001", "rows": 2, "bytes": size}]}


def test_wave_rows_are_the_rows_of_the_waves_groups():
    from ingest.pipeline import _waves, wave_rows

    df = pd.DataFrame({"study_id": [f"s{i}" for i in range(500)], "split": ["train"] * 400 + ["valid"] * 100})
    planned = shards.plan_shards(df, target_mb=10, sample_mb=1).sort_values("shard", kind="stable")
    waves = _waves(sorted(planned.shard.unique()), 3)
    got = [wave_rows(planned, w) for w in waves]
    for wave, rows in zip(waves, got):
        assert rows.equals(planned[planned.shard.isin(wave)])
    assert sum(len(r) for r in got) == len(planned)
