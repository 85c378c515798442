"""Running one phase from a spec: resolve its references, plan it, feed it, fit it; and the CLI.

``jobs/phase1.py`` .. ``phase4.py`` and ``jobs/pipeline.py`` are thin wrappers around
:func:`main_phase` and :func:`run_phase`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from ctvlp.config import JobSpec, settable_dict
from jobs import common
from jobs.plan import card_data, plan_for, resolve_phase
from jobs.runner import PhaseResult, fit_phase, steps_per_epoch

TASK_FACTORY = "ctvlp.tasks:build_task"


def describe(resolved: JobSpec, phase: int) -> str:
    """Human-readable plan of one resolved phase (what ``--dry-run`` prints)."""
    plan = plan_for(resolved, phase, git_commit=common.git_commit())
    t = plan.train
    lines = [
        f"phase {phase}: run {plan.run_name}",
        f"  run dir      {plan.run_uri}",
        f"  export       {plan.export_uri}",
        f"  init         {resolved.phase(phase).init.refs() or 'fresh'}",
        f"  optimiser    AdamW lr {t.lr:g} (warm-up {t.warmup_epochs:g} epoch, cosine to {t.min_lr:g}), "
        f"wd {t.weight_decay:g}, clip {t.grad_clip:g}",
        f"  epochs       {t.epochs} x global batch {t.global_batch_size}; checkpoint every "
        f"{t.checkpoint_every_steps or '-'} steps and every {t.checkpoint_every_epochs} epoch(s)",
        f"  workers      {plan.num_workers} ({'GPU' if plan.use_gpu else 'CPU'}), DeepSpeed ZeRO-{t.zero_stage}, "
        f"bf16 {t.bf16}, max_failures {plan.max_failures}",
        f"  data         {resolved.data.shards_uri or '(data.shards_uri unset)'}",
    ]
    return "\n".join(lines)


def cached_token_dataset(resolved: JobSpec, run_uri: str) -> tuple[dict, int, str]:
    """Phase 3 on cached tokens: encode the train split once with the frozen encoder
    (:func:`jobs.tokens.build_token_cache` under ``<run_uri>/token_cache``, reused by a rerun or a
    restart) and read it back as ``(datasets, rows, collate_fn)``."""
    import ray.data

    from ingest.storage import join
    from jobs import tokens
    from jobs.data import storage_of

    export = tokens.frozen_encoder_uri(resolved)
    storage = storage_of(resolved)
    res = resolved.resources  # the Train workers have not started: their CPUs encode
    uris = tokens.build_token_cache(resolved, export, join(run_uri, "token_cache"), ("train",),
                                    num_cpus=res.cpus_per_worker, num_actors=res.num_workers)
    fs, (path,) = tokens.parquet_paths(storage, [uris["train"]])
    ds = ray.data.read_parquet(path, filesystem=fs).materialize()
    return {"train": ds}, ds.count(), tokens.COLLATE_FN


def run_phase(spec: JobSpec, phase: int, *, datasets: dict | None = None, num_train_rows: int | None = None,
              task_factory: str = TASK_FACTORY, task_kwargs: dict | None = None,
              collate_fn: str | None = None) -> PhaseResult:
    """Resolve ``phase``'s references, build its datasets from the shards (unless given), train it."""
    resolved = resolve_phase(spec, phase)
    plan = dataclasses.replace(plan_for(resolved, phase, git_commit=common.git_commit()),
                               card_data=card_data(resolved))  # the export's model card says what it saw
    if datasets is None and phase == 3 and resolved.phases.phase3_cached_tokens:
        datasets, num_train_rows, collate_fn = cached_token_dataset(resolved, plan.run_uri)
    elif datasets is None:
        from jobs.data import COLLATE_FN, build_train_dataset

        ds, num_train_rows = build_train_dataset(resolved)
        datasets, collate_fn = {"train": ds}, collate_fn or COLLATE_FN
        if resolved.phase(phase).validate_every_epochs:
            from jobs.data import build_valid_dataset

            datasets["valid"] = build_valid_dataset(resolved)[0]
    if num_train_rows is None:
        raise ValueError("num_train_rows is required with explicit datasets")
    steps_per_epoch(num_train_rows, plan.train)  # fail on the driver, before any worker starts
    return fit_phase(plan, resolved, datasets, num_train_rows=num_train_rows, task_factory=task_factory,
                     task_kwargs=task_kwargs, collate_fn=collate_fn)


def print_dry_run(spec: JobSpec, phases: tuple[int, ...]) -> None:
    for phase in phases:
        print(describe(resolve_phase(spec, phase), phase))
    print("--- resolved spec (last phase) ---")
    print(yaml.safe_dump(settable_dict(resolve_phase(spec, phases[-1])), sort_keys=False), end="")


def main_phase(phase: int, argv: list[str] | None = None, **run_kwargs: Any) -> int:
    """CLI of ``jobs/phase<phase>.py``: ``--spec PATH [--dry-run] [key=value ...]``."""
    spec, args = common.parse_cli(f"Train phase {phase} of ctvlp on Ray Train (DeepSpeed).", argv)
    if args.dry_run:
        print_dry_run(spec, (phase,))
        common.preflight_spec(spec, dry_run=True, phases=(phase,))
        return 0
    common.preflight_spec(spec, phases=(phase,))
    print(describe(resolve_phase(spec, phase), phase), flush=True)
    common.init_ray()
    common.preflight_cluster(spec, phases=(phase,))
    print(common.describe_ctvlp(), flush=True)
    result = run_phase(spec, phase, **run_kwargs)
    print(f"phase {phase} done: export {result.export_uri}\n  last checkpoint {result.checkpoint_uri}", flush=True)
    return 0
