"""ingest.segmentation=totalsegmentator, live: the real actor and segmenter on tiny random nnU-Nets.

Weights in TotalSegmentator's layout (two `total` parts merged as `total` merges its five,
``tiny_totalseg``) and a corpus without masks go through ``run_ingest``: each actor loads the
networks once over many more studies than actors, the stored masks lie on the image grid in
`total` ids (equal to an in-process segmenter's), and a study that fails segmentation is
quarantined with its reason.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctvlp.segment import SegmenterSettings, TotalSegmentatorSegmenter
from ctvlp.transforms.io import nifti_bytes, read_nifti
from ingest.pipeline import IngestConfig, run_ingest
from ingest.segment import SegmentConfig, mask_uri
from tests.ingest.corpus import REPORT, phantom, tiny_stage

AFF = np.diag([0.9, 0.9, 2.5, 1.0])
pytestmark = pytest.mark.slow  # an end-to-end Ray Data run (~40 s on 2 cores); tests/ctvlp/segment is the fast tier

NUM_STUDIES, NUM_ACTORS, MAX_VOXELS = 12, 2, 30_000  # a phantom is ~14k voxels at 1.5 mm; "big" ~55k


def _corpus(root) -> None:
    rows = []
    for i in range(NUM_STUDIES + 1):
        sid = "big" if i == NUM_STUDIES else f"s{i}"
        img = phantom(i)[0] if sid != "big" else np.tile(phantom(i)[0], (2, 2, 1))
        (root / f"{sid}.nii.gz").write_bytes(nifti_bytes(img, AFF))
        rows.append({"study_id": sid, "patient_id": f"p{i}", "split": "train", "image_uri": f"{sid}.nii.gz",
                     "mask_uri": "", "findings": REPORT[0], "impression": REPORT[1]})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def segmented(ray_session, tiny_totalseg, tmp_path_factory):
    weights, two = tiny_totalseg
    root = tmp_path_factory.mktemp("seg_corpus")
    _corpus(root)
    settings = SegmenterSettings(two, weights_path=str(weights), max_voxels=MAX_VOXELS)
    cfg = IngestConfig(source_uri=str(root / "manifest.csv"), shards_uri=str(root / "shards"),
                       stage=tiny_stage(), manifest_format="csv", batch_size=4, studies_per_shard=4,
                       segmentation="totalsegmentator",
                       segment=SegmentConfig(settings, num_actors=NUM_ACTORS, cpus_per_actor=0.5))
    return cfg, run_ingest(cfg, log=print), settings, root


def test_one_network_load_per_actor_over_many_studies(segmented):
    _, stats, _, _ = segmented
    seg = stats["segmentation"]
    assert seg["device"] == "cpu" and len(seg["actors"]) == NUM_ACTORS
    assert list(seg["actors"].values()) == [1] * NUM_ACTORS  # loads per actor
    assert sum(seg["studies_per_actor"].values()) == NUM_STUDIES + 1
    assert seg["num_segmented"] == NUM_STUDIES and seg["num_failed"] == 1 and seg["s_per_volume"] > 0


def test_masks_on_the_image_grid_in_total_ids_equal_to_in_process(segmented, tiny_totalseg):
    cfg, _, settings, root = segmented
    _, two = tiny_totalseg
    allowed = {0} | {int(i) for p in two.parts for i in two.lut(p)[1:]}
    local = TotalSegmentatorSegmenter(dataclasses.replace(settings, device="cpu"))
    for sid in ("s0", "s7"):
        image, affine, _ = read_nifti((root / f"{sid}.nii.gz").read_bytes())
        mask, mask_affine, _ = read_nifti(cfg.stage.storage.read_bytes(mask_uri(cfg.shards_uri, sid)))
        assert mask.shape == image.shape and np.allclose(mask_affine, affine)
        assert set(np.unique(mask)) <= allowed
        assert (mask == local(image, affine)).all()


def test_written_and_the_failed_study_quarantined_with_its_reason(segmented):
    cfg, stats, _, root = segmented
    index = stats["index"]
    table = pq.read_table(io.BytesIO((root / "shards" / "quarantine.parquet").read_bytes())).to_pylist()
    by_id = {r["study_id"]: r for r in table}
    assert by_id["big"]["reason"] == "segmentation_failed" and "max_voxels" in by_id["big"]["detail"]
    assert index["num_written"] + index["num_quarantined"] == NUM_STUDIES + 1
    assert index["num_written"] >= NUM_STUDIES - 2  # random nets: a study may miss every chest class
    summary = (root / "shards" / "summary.md").read_text()
    assert "network loads per actor: [1, 1]" in summary
