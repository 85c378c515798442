"""Fixtures of the ingest tests: the fault corpus (built by tests/ingest/corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ingest.corpus import build_fault_corpus


@pytest.fixture(scope="session")
def fault_corpus(tmp_path_factory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("fault_corpus")
    return root, build_fault_corpus(root)
