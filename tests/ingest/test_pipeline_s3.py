"""End to end on moto S3: one fault corpus, one Ray Data run, then a simulated kill and rerun.

The corpus mixes clean scans, every bad-input kind (tests/ingest/corpus.py, ``FAULTS``) and
unreadable reports: written + quarantined = manifest rows, each quarantined row with its reason.
A second, small run puts the LLM report parser (a tiny causal LM by path) in its actor pool.

The module fixture uploads the fault corpus (tests/ingest/conftest.py) to ``s3://``, ingests it to
``s3://`` once, and every test below reads that run's outputs; the rerun test then deletes the
commit markers (and for one group the data file) of a killed run and checks what gets redone.
"""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from ctvlp.data import collate, decode_sample, train_augment
from ingest import shards
from ingest.pipeline import IngestConfig, run_ingest
from ingest.storage import Storage

from tests.ingest.corpus import FAULTS, NUM_GOOD, OBLIQUE_SMALL_DEG, REPORT, UNREADABLE_REPORTS, tiny_stage, upload_dir

BUCKET = "ingest-tests"


def _config(endpoint: str, out: str) -> IngestConfig:
    return IngestConfig(
        source_uri=f"s3://{BUCKET}/corpus/manifest.csv", shards_uri=f"s3://{BUCKET}/{out}",
        stage=tiny_stage(Storage(endpoint_url=endpoint)), manifest_format="csv",
        batch_size=2, studies_per_shard=3, groups_per_wave=64,
    )


@pytest.fixture(scope="module")
def ingested(ray_session, s3_server, s3_client, fault_corpus):
    root, rows = fault_corpus
    s3_client.create_bucket(Bucket=BUCKET)
    upload_dir(s3_client, root, BUCKET, "corpus")
    cfg = _config(s3_server, "shards")
    logs: list[str] = []
    stats = run_ingest(cfg, log=logs.append)
    return cfg, stats, rows, logs


def _quarantine(cfg: IngestConfig):
    storage = cfg.stage.storage
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{cfg.shards_uri}/quarantine.parquet")))
    return {r["study_id"]: r for r in table.to_pylist() if r["reason"] != "duplicate_study_id"}, table


def test_counts_add_up(ingested):
    cfg, stats, rows, _ = ingested
    index = stats["index"]
    assert index["num_written"] == NUM_GOOD + 2  # + the DICOM series study and the 3-degree oblique one
    assert index["num_written"] + index["num_quarantined"] == len(rows) == stats["manifest_size"]
    assert index["num_unique_written"] == index["num_written"]
    by_id, table = _quarantine(cfg)
    assert len(table) == len(FAULTS) + 1 and set(by_id) == set(FAULTS)  # + the duplicate g_dicom
    assert index["oblique"]["studies_deg"] == {"g_oblique": pytest.approx(OBLIQUE_SMALL_DEG, abs=0.01)}


def test_no_unreadable_report_written(ingested):
    cfg = ingested[0]
    by_id, _ = _quarantine(cfg)
    assert {s: by_id[s]["reason"] for s in UNREADABLE_REPORTS} == dict.fromkeys(UNREADABLE_REPORTS, "report_unparsed")
    assert by_id["f_bad_split"]["detail"] == "split 'training-set' is not one of ['train', 'valid', 'test']"


@pytest.mark.parametrize("study_id,reason", sorted(FAULTS.items()))
def test_each_fault_quarantined_with_reason(ingested, study_id, reason):
    cfg = ingested[0]
    by_id, _ = _quarantine(cfg)
    assert by_id[study_id]["reason"] == reason


def test_duplicate_id_quarantined_once(ingested):
    _, table = _quarantine(ingested[0])
    dups = [r for r in table.to_pylist() if r["reason"] == "duplicate_study_id"]
    assert [d["study_id"] for d in dups] == ["g_dicom"]


def test_shards_decode_to_batch_contract(ingested):
    cfg, stats, _, _ = ingested
    storage = cfg.stage.storage
    files = storage.list_files(f"{cfg.shards_uri}/data", ".parquet")
    rows = [r for f in files for r in shards.read_table(storage, f).to_pylist()]
    assert {r["study_id"] for r in rows} == {f"g{i}" for i in range(NUM_GOOD)} | {"g_dicom", "g_oblique"}
    samples = [decode_sample(r) for r in rows]
    m = len(cfg.stage.anatomies)
    for s in samples:
        assert s["image"].shape == s["mask"].shape and s["mask"].max() <= m
        assert (s["voxel_counts"] > 0).all()  # every phantom holds all 4 chest anatomies
        assert s["abnormal"].tolist() == [0, 1, 0, 0]  # "Heart size is enlarged", "Cardiomegaly."
    import numpy as np

    rng = np.random.default_rng(0)
    batch = collate([train_augment(s, (8, 16, 16), 0.5, rng) for s in samples[:3]])
    assert batch["image"].shape == (3, 1, 8, 16, 16) and batch["text_ids"].shape[:2] == (3, m)


def test_outputs_encrypted_and_private(ingested, s3_client):
    cfg, _, rows, _ = ingested
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix="shards/")["Contents"]]
    assert any(k.endswith("index.json") for k in keys) and any("/data/" in k for k in keys)
    for key in keys:
        assert s3_client.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") == "AES256"
    text = "".join(
        s3_client.get_object(Bucket=BUCKET, Key=f"shards/{name}")["Body"].read().decode()
        for name in ("index.json", "summary.md")
    )
    _, qtable = _quarantine(cfg)
    text += json.dumps(qtable.to_pylist())
    for r in rows:
        assert r["patient_id"] not in text
    assert REPORT[0][:20] not in text and "Cardiomegaly" not in text


def test_no_dicom_identifier_reaches_shards_indexes_or_logs(ingested, s3_client):
    """The DICOM studies carry PS3.15 identifying tags (corpus.PHI): none of their values is in
    any object ingest wrote (Parquet decoded, not grepped compressed) or in its log."""
    from tests.ingest.corpus import PHI

    cfg, _, _, logs = ingested
    texts = list(logs)
    for obj in s3_client.list_objects_v2(Bucket=BUCKET, Prefix="shards/")["Contents"]:
        body = s3_client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        texts.append(str(pq.read_table(io.BytesIO(body)).to_pylist()) if obj["Key"].endswith(".parquet")
                     else body.decode("utf-8", "replace"))
    blob = "\n".join(texts)
    assert "g_dicom" in blob and '"source_format": "dicom"' in blob  # the DICOM study was written
    leaked = [v for v in PHI.values() if v.lower() in blob.lower()]
    assert not leaked


def test_killed_and_rerun_resumes_exactly_once(ingested, ray_session):
    cfg, first, rows, _ = ingested
    storage = cfg.stage.storage
    done = shards.completed(storage, cfg.shards_uri)
    with_data = sorted(s for s, rec in done.items() if rec["written"])
    killed = with_data[:2]  # group 0: killed after its data file; group 1: before anything
    storage.delete(shards.done_uri(cfg.shards_uri, killed[0]))
    storage.delete(shards.done_uri(cfg.shards_uri, killed[1]))
    storage.delete(shards.data_uri(cfg.shards_uri, killed[1]))
    storage.delete(shards.quarantine_uri(cfg.shards_uri, killed[1]))
    redo = sum(len(done[s]["written"]) + len(done[s]["quarantined"]) for s in killed)
    logs: list[str] = []
    second = run_ingest(cfg, log=logs.append)
    assert second["num_decoded"] == redo
    assert second["num_skipped"] == len(rows) - first["num_dups"] - first["num_invalid_split"] - redo
    assert any(f"to decode now: {redo} studies" in line for line in logs)
    index = second["index"]
    assert index["num_written"] == index["num_unique_written"] == first["index"]["num_written"]
    assert index["num_written"] + index["num_quarantined"] == len(rows)


def test_segmentation_without_weights_stops_before_work(ingested, s3_client, tmp_path):
    import dataclasses

    from ctvlp.segment import SegmenterSettings, total_task
    from ingest.segment import SegmentConfig

    settings = SegmenterSettings(total_task("total_fast"), weights_path=str(tmp_path))  # empty folder
    cfg = dataclasses.replace(_config(ingested[0].stage.storage.endpoint_url, "seg"),
                              segmentation="totalsegmentator", segment=SegmentConfig(settings, device="gpu"))
    from jobs.preflight import PreflightError

    with pytest.raises(PreflightError, match="Dataset297") as err:
        run_ingest(cfg)
    assert "cluster has 0" in str(err.value)  # device=gpu on a cluster without GPUs
    assert "Contents" not in s3_client.list_objects_v2(Bucket=BUCKET, Prefix="seg/")


def test_llm_parser_actor_pool(ingested, s3_client, tmp_path):
    """ingest.report_parser=llm: the actor pool loads a tiny causal LM by path; its invalid
    replies are quarantined under llm_fallback=quarantine, and unreadable reports never reach it."""
    import dataclasses

    from ctvlp.reports.llm import save_tiny_causal_lm
    from ingest.reports import ReportConfig

    model = save_tiny_causal_lm(str(tmp_path / "tiny_lm"))
    base = _config(ingested[0].stage.storage.endpoint_url, "llm")
    reports = ReportConfig(parser="llm", llm_path=model, llm_fallback="quarantine", llm_batch_size=2,
                           llm_max_new_tokens=4)
    cfg = dataclasses.replace(base, max_studies=3, stage=dataclasses.replace(base.stage, reports=reports))
    stats = run_ingest(cfg, log=print)
    by_id, _ = _quarantine(cfg)
    assert stats["index"]["num_written"] == 0 and set(by_id) == {"g0", "g1", "g2"}
    assert {r["reason"] for r in by_id.values()} == {"report_unparsed"}
    assert all("invalid LLM reply" in r["detail"] for r in by_id.values())
