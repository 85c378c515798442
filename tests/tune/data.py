"""Sweep inputs for the Tune tests and ``bench/tune_phase3.py``: a tiny synthetic CT-RATE corpus
ingested into shards (train / valid / test), and a phase-2 export whose frozen encoder makes
phase 3's cached tokens (random initial weights: the tests exercise the machinery, not a model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ctvlp.config import load_spec
from ctvlp.synthetic import generate_corpus
from ctvlp.tasks import build_task

SPEC = "jobs/specs/tune_debug.yaml"


def make_sweep_inputs(root: Path, num_studies: int = 40, seed: int = 3, valid_fraction: float = 0.3) -> list[str]:
    """Corpus -> shards -> phase-2 export under ``root`` (Ray must be running); returns the spec
    overrides that point ``jobs/specs/tune_debug.yaml`` at them (storage under ``root/runs``)."""
    from ingest.pipeline import IngestConfig, run_ingest

    root = Path(root)
    overrides = [f"data.source_uri={root / 'corpus'}", f"data.shards_uri={root / 'shards'}",
                 f"data.valid_fraction={valid_fraction}", f"storage.root={root / 'runs'}",
                 f"phases.phase3.init.vision_encoder={root / 'export2'}"]
    index = root / "shards" / "index.json"
    if not index.is_file() or "shards" not in json.loads(index.read_text()):  # none, or older than its shard table
        if not (root / "corpus" / "corpus.json").is_file():
            generate_corpus(root / "corpus", num_studies, seed, "tiny")
        run_ingest(IngestConfig.from_spec(load_spec(SPEC, overrides)), log=lambda *a: None)  # resumes
    if not (root / "export2" / "config.json").is_file():
        torch.manual_seed(seed)
        build_task(load_spec(SPEC, overrides), 2, init={}).export(root / "export2")
    return overrides
