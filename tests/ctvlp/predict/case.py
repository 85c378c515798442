"""One tiny synthetic study set, ingested in-process and scored the way the evaluation job does,
shared by the predictor, CLI and demo tests.

A 4-study ``ctvlp.synthetic`` corpus ("tiny" preset, CT-RATE layout, correct headers), ingested
with ``ingest.process.process_records`` (the CPU stage the Ray Data job maps; no Ray) under
``jobs/specs/debug.yaml``, written as one shard by ``ingest.shards.write_group``, and a phase-4
debug export with random weights (seeded). :func:`evaluate_like_the_job` reads the shard and calls
``jobs.evaluate.ZeroShotPredictor`` (the evaluation job's Ray Data callable) on it in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


@dataclass
class Case:
    """spec, export dir, corpus root, manifest records and the shard file of the ingested studies."""

    spec: object
    export: Path
    corpus: Path
    records: list[dict]
    shard: Path

    def files(self, study_id: str) -> tuple[Path, Path]:
        """(image, mask) NIfTI paths of a study in the corpus (the raw files ingest read)."""
        rec = next(r for r in self.records if r["study_id"] == study_id)
        return Path(rec["image_uri"]), Path(rec["mask_uri"])

    @property
    def study_ids(self) -> list[str]:
        return sorted(r["study_id"] for r in self.records)


def build_case(root: Path, num_studies: int = 4) -> Case:
    import torch

    from ctvlp.config import load_spec
    from ctvlp.synthetic.corpus import generate_corpus
    from ctvlp.tasks import build_task
    from ingest import manifest as mf
    from ingest.pipeline import IngestConfig
    from ingest.process import process_records
    from ingest.shards import data_uri, write_group
    from ingest.storage import Storage

    corpus = root / "corpus"
    generate_corpus(corpus, num_studies, seed=0, preset="tiny")
    spec = load_spec("jobs/specs/debug.yaml", [f"data.source_uri={corpus}", f"data.shards_uri={root / 'shards'}",
                                               f"storage.root={root / 'runs'}", "eval.batch_size=4"])
    records = mf.build_manifest(Storage(), str(corpus), "ctrate", valid_fraction=0.5, seed=0).to_dict("records")
    rows = process_records(records, IngestConfig.from_spec(spec).stage)
    bad = [(r["study_id"], r["reason"], r["detail"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    write_group(rows, "test-00000-of-00001", Storage(sse=None), str(root / "shards"))
    torch.manual_seed(0)
    export = build_task(spec, 4, init={}).export(root / "export4")
    return Case(spec, Path(export), corpus, records, Path(data_uri(str(root / "shards"), "test-00000-of-00001")))


def evaluate_like_the_job(case: Case, export: Path | None = None) -> dict[str, np.ndarray]:
    """The evaluation job's per-study outputs for every ingested study (``scores`` [S, D] in
    ``spec.eval.disease_list`` order, ``embeds`` [S, M, E], ``study_id`` [S])."""
    from ingest.storage import Storage
    from jobs.evaluate import READ_COLUMNS, ZeroShotPredictor

    spec = case.spec
    table = pq.read_table(case.shard, columns=READ_COLUMNS)
    batch = {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}  # Ray Data's numpy batch
    job = ZeroShotPredictor(str(export or case.export), [d.model_dump() for d in spec.eval.disease_list(spec.data)],
                            tuple(spec.data.eval_window), spec.eval.batch_size, 64, Storage(sse=None), bf16="auto")
    return job(batch)


class CorpusMaskSegmenter:
    """Not TotalSegmentator: a segmenter object that answers with the synthetic corpus's own
    TotalSegmentator-id mask of the scan (a real label map made with the volume), after checking
    that it was asked about that scan's grid. Stands in where the real model cannot run here."""

    def __init__(self, mask_path: Path) -> None:
        from ctvlp.transforms.io import read_nifti

        self.mask, self.affine, _ = read_nifti(mask_path)
        self.calls = 0

    def __call__(self, array_xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert array_xyz.shape == self.mask.shape and np.allclose(affine, self.affine, atol=1e-3)
        return self.mask
