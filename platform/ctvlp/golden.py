"""Golden loss curves: a short seeded debug run per phase, in one process, through the runner's code.

STYLE lesson 13 (torchtitan's rule): a pure refactor must reproduce the stored loss curve of every
phase's debug run. :func:`golden_run` trains phase N for a few optimiser steps exactly as a Ray
Train worker does (``ctvlp.tasks.build_task`` -> ``ctvlp.loop.build_engine``, DeepSpeed with the
torch AdamW and the warm-up/cosine schedule -> ``ctvlp.loop.train_step`` -> ``task.after_step``),
but on deterministic batches made here and without Ray. It returns the per-step losses and a
digest of the final weights; ``tests/golden/phaseN.json`` stores them and
``tests/ctvlp/test_golden.py`` compares.

Batches go through the same sample path as shard rows (``ctvlp.data.train_augment`` then
``ctvlp.data.collate``) from phantom studies drawn with a seeded numpy generator: M = 4 boxes
(chest grouping) of per-study intensity, a bright lesion in abnormal anatomies, report texts
tokenised by the spec's tokenizer, and the labels-table rows (``disease_labels``) that the
methods' tasks read (:func:`phantom_disease_labels`). Phase 3 reads image batches through its frozen encoder
(the spec default, ``phases.phase3_cached_tokens=false``).

Updating the golden files is a decision, not a chore: run ``python -m ctvlp.golden --update``
(or ``make golden``) only in a commit whose message says what changed in training and why
(docs/DESIGN.md, "Golden loss curves"). The command prints the old and new curves side by side.

Other tests reuse :func:`golden_run` for A/B comparisons of one change on identical batches
(``golden_run(2, overrides=[...])`` against ``golden_run(2)``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
SPEC_PATH = REPO_ROOT / "jobs" / "specs" / "debug.yaml"
# The debug spec on the chest grouping (M = 4): four phantom organs fit a 32^3 crop.
BASE_OVERRIDES: tuple[str, ...] = ("data.grouping=chest",)
PHASES = (1, 2, 3, 4)
STEPS = 8  # optimiser steps: 4 of warm-up (warmup_epochs 0.5), 4 of cosine decay
SEED = 0
STUDY_SHAPE = (40, 40, 40)  # stored crop; train_augment cuts the spec's 32^3 from it
# (h0, h1, w0, w1) per organ, over slices 9..30: inside every 32^3 crop of the 40^3 study, off its faces,
# so that every organ is intact in every crop (train_augment's intact flags)
BOXES = ((9, 19, 9, 19), (9, 19, 21, 31), (21, 31, 9, 19), (21, 31, 21, 31))
SLICES = (9, 31)
FINDINGS = ("a dense nodule is seen", "there is a small effusion", "wall thickening is noted",
            "calcified plaque is present")

# Relative tolerances of the loss comparison, on the platform that stored the run and on another
# (``platform_fingerprint``); the test's docstring gives the measurement behind them.
LOSS_RTOL = 1e-6
LOSS_RTOL_PORTABLE = 3e-5


@dataclass
class GoldenRun:
    """What one debug run produced.

    Attributes:
        phase: 1..4.
        steps: per optimiser step, every float ``train_step`` returned for the loss (``loss``,
            each ``*_loss`` term) and ``lr``.
        weights_sha256: sha256 of every tensor of ``task.module.state_dict()`` (exact bytes; equal
            on one platform, not across them).
        weights: per state-dict tensor ``[sum, sum of squares, projection]`` in float64: names
            the tensors that moved when the sha256 differs (the projection on a fixed
            pseudo-random +-1 vector catches permutations).
        meta: spec overrides, step count, seed, bf16, ZeRO stage, :func:`platform_fingerprint`.
    """

    phase: int
    steps: list[dict[str, float]]
    weights_sha256: str
    weights: dict[str, list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [s["loss"] for s in self.steps]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "GoldenRun":
        return cls(**json.loads(text))


# ----------------------------------------------------------------------------------- batches
def phantom_sample(study: int, num_anatomies: int, tokenizer: Any, max_length: int,
                   rng: np.random.Generator) -> dict[str, Any]:
    """One decoded study (the ``ctvlp.data.decode_sample`` contract) of ``STUDY_SHAPE``.

    Organ j is box ``BOXES[j]`` over ``SLICES``, of a per-study grey level; an abnormal organ
    carries a bright 6 x 5 x 5 lesion at a random place and a finding sentence in its text.
    """
    if num_anatomies != len(BOXES):
        raise ValueError(f"the golden phantom has {len(BOXES)} organs; the spec has M = {num_anatomies}")
    d, h, w = STUDY_SHAPE
    image = rng.normal(60.0, 6.0, STUDY_SHAPE)
    mask = np.zeros(STUDY_SHAPE, np.uint8)
    abnormal = rng.integers(0, 2, num_anatomies)
    texts = []
    for j, (h0, h1, w0, w1) in enumerate(BOXES):
        organ = (slice(*SLICES), slice(h0, h1), slice(w0, w1))
        mask[organ] = j + 1
        image[organ] += 50 + 30 * j + 40 * rng.random()
        if abnormal[j]:
            z, y, x = (int(v) for v in rng.integers(0, 6, 3))
            image[11 + 2 * z:17 + 2 * z, h0 + y:h0 + y + 5, w0 + x:w0 + x + 5] = 240
        texts.append(f"{FINDINGS[j]} in region {int(rng.integers(0, 9))}." if abnormal[j]
                     else "no significant abnormalities.")
    from ctvlp.models.text import tokenize_texts

    ids = tokenize_texts(tokenizer, texts, max_length)
    return {"study_id": f"golden_{study}", "split": "train",
            "image": np.clip(image, 0, 255).astype(np.uint8), "mask": mask,
            "abnormal": abnormal.astype(np.int64), "texts": texts,
            "input_ids": [np.asarray(x, np.int64) for x in ids]}


def golden_batches(spec: Any, steps: int, batch_size: int, seed: int = SEED) -> list[dict]:
    """``steps`` batches of ``batch_size`` studies in the collate contract, fixed by ``seed``."""
    from ctvlp.data import collate, train_augment
    from ctvlp.models.text import build_tokenizer

    rng = np.random.default_rng(seed)
    tokenizer = build_tokenizer(spec.model.text.name_or_path)
    batches = []
    for s in range(steps):
        samples = [train_augment(phantom_sample(s * batch_size + i, spec.data.num_anatomies, tokenizer,
                                                spec.model.text.max_length, rng),
                                 spec.data.crop_size, spec.data.flip_prob, rng)
                   for i in range(batch_size)]
        batch = collate(samples, pad_id=tokenizer.pad_token_id or 0)
        batch["disease_labels"] = phantom_disease_labels(spec, samples)
        batches.append(batch)
    return batches


def phantom_disease_labels(spec: Any, samples: Sequence[dict]) -> list[dict[str, int]]:
    """The labels-table row of each phantom study, as Ray batches carry it (``disease_labels``):
    each anatomy's first catalogue finding is present exactly when the anatomy is abnormal. Read
    by the methods' tasks (``methods.phase2_task``); the phases' tasks ignore it, and it draws no
    random number, so the stored curves do not move."""
    from ctvlp.tasks.methods import finding_catalogue

    first: dict[str, str] = {}
    for d in finding_catalogue(spec):
        first.setdefault(d.anatomy, d.name)
    index = {name: spec.data.anatomies.index(anatomy) for anatomy, name in first.items()}
    return [{name: int(s["abnormal"][j]) for name, j in index.items()} for s in samples]


# ----------------------------------------------------------------------------------- digests
def _projection(key: str, n: int) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).double() * 2 - 1


def weight_digest(module: torch.nn.Module) -> tuple[str, dict[str, list[float]]]:
    """(exact sha256, per-tensor ``[sum, sum of squares, projection]``) of ``module.state_dict()``.

    Floating tensors are digested as float32 whatever their training dtype, so that a bf16 run's
    fp32 master weights and its module weights are comparable in form.
    """
    h, stats = hashlib.sha256(), {}
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        if t.is_floating_point():
            t = t.float()
        h.update(f"{key}:{t.dtype}:{t.numel()};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
        x = t.double()
        stats[key] = [float(x.sum()), float((x * x).sum()), float(x @ _projection(key, x.numel()))]
    return h.hexdigest(), stats


# -------------------------------------------------------------------------------------- run
def golden_spec(phase: int, overrides: Sequence[str] = ()) -> Any:
    from ctvlp.config import load_spec

    return load_spec(str(SPEC_PATH), [*BASE_OVERRIDES, *overrides])


def golden_run(phase: int, overrides: Sequence[str] = (), *, steps: int = STEPS, seed: int = SEED,
               bf16: bool = False, zero_stage: int | None = None) -> GoldenRun:
    """Train ``phase`` for ``steps`` optimiser steps as a Ray Train worker would, in this process.

    Args:
        phase: 1..4; each phase starts from freshly initialised parts (no init exports), so a
            change shows in the phase it touches.
        overrides: dotted spec overrides on top of the debug spec (A/B comparisons).
        bf16: DeepSpeed's bf16 mode, as ``resources.bf16`` turns it on for GPU runs.
        zero_stage: ZeRO stage (default: the spec's ``resources.zero_stage``).
    Returns:
        A :class:`GoldenRun`. Runs on one intra-op thread with deterministic algorithms and
        restores both settings afterwards.
    """
    with _deterministic():
        return _golden_run(phase, overrides, steps=steps, seed=seed, bf16=bf16, zero_stage=zero_stage)


@contextlib.contextmanager
def _deterministic():
    """One thread, deterministic algorithms; the previous process-wide settings come back after."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also NaN-fills every torch.empty; DeepSpeed's ZeRO reduce buckets are
    # 5e8 elements, so that fill costs ~1 s per step and protects nothing (they are written first).
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def platform_fingerprint() -> str:
    """torch version, CPU architecture and the kernel ISA torch dispatches to (``AVX512``, ...):
    where these match the stored run's, the weights must match it bit for bit."""
    return f"torch {torch.__version__} | {platform.machine()} | {torch.backends.cpu.get_cpu_capability()}"


def _golden_run(phase: int, overrides: Sequence[str], *, steps: int, seed: int, bf16: bool,
                zero_stage: int | None) -> GoldenRun:
    import dataclasses

    from ctvlp.loop import build_engine, ensure_process_group, train_config_from_spec, train_step
    from ctvlp.tasks import build_task

    spec = golden_spec(phase, overrides)
    cfg = train_config_from_spec(spec, phase, cuda=False)
    cfg = dataclasses.replace(cfg, epochs=1, bf16=bf16, seed=seed, max_steps_per_epoch=steps,
                              zero_stage=cfg.zero_stage if zero_stage is None else zero_stage)
    batches = golden_batches(spec, steps, cfg.global_batch_size, seed)
    ensure_process_group()
    torch.manual_seed(cfg.seed)  # as the runner: the same initial weights on every rank
    np.random.seed(cfg.seed)
    task = build_task(spec, phase, init={})
    engine = build_engine(task.module, cfg, steps_per_epoch=steps)
    task.train()
    torch.manual_seed(cfg.seed + 1)  # the tasks' own draws (views, dropout) start from here
    records = []
    for batch in batches:
        out = train_step(engine, task, batch, channels_last=cfg.channels_last)
        records.append({k: v for k, v in out.items() if k == "loss" or k == "lr" or k.endswith("_loss")})
    sha, stats = weight_digest(task.module)
    meta = {"overrides": [*BASE_OVERRIDES, *overrides], "steps": steps, "seed": seed, "bf16": bf16,
            "zero_stage": cfg.zero_stage, "batch_size": cfg.global_batch_size,
            "platform": platform_fingerprint()}
    return GoldenRun(phase=phase, steps=records, weights_sha256=sha, weights=stats, meta=meta)


# -------------------------------------------------------------------------------- comparison
def _close(a: float, b: float, rtol: float, atol: float = 1e-12) -> bool:
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def same_platform(expected: GoldenRun, actual: GoldenRun) -> bool:
    return expected.meta.get("platform") == actual.meta.get("platform")


def compare(expected: GoldenRun, actual: GoldenRun, *, loss_rtol: float | None = None) -> list[str]:
    """Human-readable differences between two runs (empty = the same curve and weights).

    Losses and learning rates are compared step by step with ``loss_rtol`` (default
    :data:`LOSS_RTOL` where both runs share :func:`platform_fingerprint`, else
    :data:`LOSS_RTOL_PORTABLE`). Weights must match bit for bit (sha256) on the same platform;
    across platforms they are not compared (see ``tests/ctvlp/test_golden.py`` for why). A weight
    mismatch names the tensors whose digest moved.
    """
    same = same_platform(expected, actual)
    rtol = loss_rtol if loss_rtol is not None else (LOSS_RTOL if same else LOSS_RTOL_PORTABLE)
    diffs = []
    if len(expected.steps) != len(actual.steps):
        diffs.append(f"phase {expected.phase}: {len(expected.steps)} steps stored, {len(actual.steps)} run")
    for i, (e, a) in enumerate(zip(expected.steps, actual.steps)):
        if sorted(e) != sorted(a):
            diffs.append(f"step {i}: keys {sorted(e)} stored, {sorted(a)} run")
            continue
        for key in sorted(e):
            if not _close(e[key], a[key], rtol):
                diffs.append(f"step {i} {key}: stored {e[key]!r}, run {a[key]!r} "
                             f"(rel diff {abs(e[key] - a[key]) / max(abs(e[key]), 1e-30):.2e} > {rtol:g})")
    if same and expected.weights_sha256 != actual.weights_sha256:
        moved = sorted(k for k in set(expected.weights) | set(actual.weights)
                       if expected.weights.get(k) != actual.weights.get(k))
        diffs.append(f"weights: sha256 {expected.weights_sha256[:12]} stored, {actual.weights_sha256[:12]} run; "
                     f"{len(moved)} of {len(expected.weights)} tensors moved, e.g. {moved[:4]}")
    return diffs


def golden_path(phase: int, directory: Path = GOLDEN_DIR) -> Path:
    return Path(directory) / f"phase{phase}.json"


def load_golden(phase: int, directory: Path = GOLDEN_DIR) -> GoldenRun:
    path = golden_path(phase, directory)
    if not path.is_file():
        raise FileNotFoundError(f"no golden run at {path}: create it with `python -m ctvlp.golden --update`")
    return GoldenRun.from_json(path.read_text())


# ----------------------------------------------------------------------------------- the CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ctvlp.golden",
        description="Run the golden debug runs and compare them with tests/golden/ (or rewrite it).")
    parser.add_argument("--phases", type=int, nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--update", action="store_true",
                        help="rewrite the golden files (only in a commit that says what changed in training and why)")
    parser.add_argument("--dir", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args(argv)
    failed = 0
    for phase in args.phases:
        run = golden_run(phase)
        path = golden_path(phase, args.dir)
        old = GoldenRun.from_json(path.read_text()) if path.is_file() else None
        diffs = ["no stored run"] if old is None else compare(old, run)
        print(f"phase {phase}: {'unchanged' if not diffs else 'CHANGED'}")
        for i, s in enumerate(run.steps):
            before = f"{old.steps[i]['loss']:.9g}" if old is not None and i < len(old.steps) else "-"
            print(f"  step {i}: loss {before} -> {s['loss']:.9g}")
        for d in diffs[:12]:
            print(f"  {d}")
        if args.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(run.to_json())
            print(f"  wrote {path}")
        failed += bool(diffs)
    return 0 if args.update or not failed else 1


if __name__ == "__main__":
    sys.exit(main())
