"""Sweep hyper-parameters of one phase with Ray Tune: ASHA over Train V2 trials, ranked results.

Usage: ``python tune/sweep.py --spec jobs/specs/<run>.yaml [--dry-run] [key=value ...]``.

The spec's ``tune`` section chooses the phase (3 for the codebook size K and beta, 2 or 4 for
the temperature), the space over dotted spec keys, the searcher (random or Optuna TPE), ASHA
(grace period and budget in optimiser steps, reduction factor), the objective, the trials and
each trial's workers/GPUs. Each trial (:mod:`tune.trial`) trains ``tune.max_steps`` steps of the
phase on Ray Train with DeepSpeed and reports the validation objective (:mod:`tune.objectives`)
every ``tune.grace_period_steps`` steps, so ASHA can stop it at any rung.

Phase-3 sweeps with ``phases.phase3_cached_tokens: true`` train on cached level-4 tokens
(:mod:`jobs.tokens`, computed once per sweep from the phase-2 export in
``phases.phase3.init.vision_encoder`` or ``aligned_model``, materialised in the object store); otherwise on image
batches through the frozen encoder. The validation split's tokens are cached either way and
score every trial. Outputs go to ``<storage.root>/<name>-tune-phase<N>-<hash>/``:
Tune's experiment, the trials' Train runs and ``results/`` (:mod:`tune.results`).

Needs the Ray dashboard (``ray[default]``): without it, a trial stopped by ASHA leaks its Train
placement group and later trials hang (research/stack.md section 5).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "platform")]

from ctvlp.config import JobSpec, settable_dict  # noqa: E402
from ingest.storage import is_s3, join  # noqa: E402
from jobs import common  # noqa: E402
from jobs.plan import resolve_phase, storage_root  # noqa: E402
from tune import space as tspace  # noqa: E402
from tune.trial import SweepContext, StepSchedule, max_concurrent_trials, run_trial, step_schedule  # noqa: E402


def sweep_name(spec: JobSpec) -> str:
    """``<name>-tune-phase<N>-<hash of the settable spec>``: a rerun of the same spec reuses its caches."""
    blob = json.dumps(settable_dict(spec), sort_keys=True).encode()
    return f"{spec.name}-tune-phase{spec.tune.phase}-{hashlib.sha256(blob).hexdigest()[:10]}"


def trial_base(resolved: JobSpec, sched: StepSchedule) -> dict:
    """The resolved spec with the trials' schedule and resources set (``tune.*`` -> phases/resources)."""
    t, tree = resolved.tune, settable_dict(resolved)
    phase = tree["phases"][f"phase{t.phase}"]
    phase.update(epochs=sched.epochs, max_steps_per_epoch=sched.steps_per_epoch,
                 checkpoint_every_steps=sched.report_every)
    use_gpu = t.gpus_per_trial > 0
    tree["resources"].update(num_workers=t.workers_per_trial, use_gpu=use_gpu, max_failures=0,
                             gpus_per_worker=t.gpus_per_trial / t.workers_per_trial if use_gpu else 0.0)
    tspace.apply_params(tree, {})  # validate now, not in every trial
    return tree


def prepare_data(resolved: JobSpec, sweep_uri: str) -> tuple[dict, int, str | None, dict, float]:
    """``(datasets, num_train_rows, collate_fn, objective kwargs, CPUs the data pipeline needs)``."""
    import ray.data

    from jobs.data import COLLATE_FN, build_train_dataset, storage_of
    from jobs import tokens

    phase, storage = resolved.tune.phase, storage_of(resolved)
    if phase != 3:
        ds, rows = build_train_dataset(resolved)
        return {"train": ds}, rows, COLLATE_FN, {"kind": "zero_shot", "split": "valid"}, 1.0
    export = tokens.frozen_encoder_uri(resolved)
    cached = resolved.phases.phase3_cached_tokens
    uris = tokens.build_token_cache(resolved, export, join(sweep_uri, "token_cache"),
                                    ("train", "valid") if cached else ("valid",))
    objective = {"kind": "normality", "val_uri": uris["valid"], "storage": storage}
    if not cached:
        ds, rows = build_train_dataset(resolved)
        return {"train": ds}, rows, COLLATE_FN, objective, 1.0
    fs, (path,) = tokens.parquet_paths(storage, [uris["train"]])
    # Materialised once: the trials read blocks from the object store and need no CPU for data.
    ds = ray.data.read_parquet(path, filesystem=fs).materialize()
    return {"train": ds}, ds.count(), tokens.COLLATE_FN, objective, 0.0


def build_tuner(spec: JobSpec, ctx: SweepContext, sched: StepSchedule, max_concurrent: int, storage_uri: str):
    """The ``ray.tune.Tuner`` of the sweep (not fitted)."""
    from ray import tune

    t = spec.tune
    objective = tspace.resolve_objective(t.phase, t.objective)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": 0.01})
    fs, path = _arrow(spec, storage_uri) if is_s3(storage_uri) else (None, storage_uri)
    searcher = tspace.make_searcher(t.searcher, spec.seed, max_concurrent)
    return tune.Tuner(
        trainable,
        param_space=tspace.build_space(t.space),
        tune_config=tune.TuneConfig(
            metric=objective.metric, mode=objective.mode, num_samples=t.num_trials, search_alg=searcher,
            # the random generator carries its own limit; Tune wraps Optuna in a ConcurrencyLimiter
            max_concurrent_trials=None if t.searcher == "random" else max_concurrent,
            scheduler=tspace.make_scheduler(t.grace_period_steps, sched.total_steps, t.reduction_factor),
        ),
        run_config=tune.RunConfig(name=sweep_name(spec), storage_path=path, storage_filesystem=fs,
                                  failure_config=tune.FailureConfig(max_failures=t.max_trial_retries)),
    )


def _arrow(spec: JobSpec, uri: str):
    from jobs.data import storage_of

    return storage_of(spec).arrow_fs(uri)


def best_spec(spec: JobSpec, best_params: dict[str, Any]) -> JobSpec:
    """The user's spec (its own schedule and resources) with the swept phase resolved and the best values."""
    return tspace.apply_params(resolve_phase(spec, spec.tune.phase), best_params)


def run_sweep(spec: JobSpec, max_concurrent: int | None = None) -> dict[str, Any]:
    """Run the sweep of ``spec.tune`` on the connected Ray cluster; returns the table and file paths.

    ``max_concurrent`` caps the trials running at once (default ``tune.max_concurrent_trials``
    when the spec has it, else what the cluster fits: :func:`tune.trial.max_concurrent_trials`).
    """
    import ray

    from jobs.data import storage_of
    from jobs.runner import copy_dir_to_uri
    from tune import results

    t = spec.tune
    objective = tspace.resolve_objective(t.phase, t.objective)
    resolved = resolve_phase(spec, t.phase)
    root = storage_root(resolved)
    sweep_uri = join(root, sweep_name(spec))
    datasets, rows, collate, obj_kwargs, data_cpus = prepare_data(resolved, sweep_uri)
    sched = step_schedule(rows, resolved.phase(t.phase).global_batch_size, t.max_steps, t.grace_period_steps)
    base = trial_base(resolved, sched)
    res = resolved.resources
    concurrent = max_concurrent_trials(
        ray.cluster_resources(), workers=t.workers_per_trial, cpus_per_worker=res.cpus_per_worker,
        gpus_per_worker=base["resources"]["gpus_per_worker"], data_cpus=data_cpus, num_trials=t.num_trials)
    cap = max_concurrent or getattr(t, "max_concurrent_trials", 0)  # not (yet) a TuneSpec field
    concurrent = min(concurrent, cap) if cap else concurrent
    print(f"[tune] phase {t.phase}: {t.num_trials} trials, {concurrent} at once, {sched.total_steps} steps each "
          f"({sched.epochs} epoch(s) x {sched.steps_per_epoch}), reports every {sched.report_every}; "
          f"objective {objective.metric} ({objective.mode})", flush=True)
    ctx = SweepContext(base=base, phase=t.phase, trials_root=join(sweep_uri, "trials"), datasets=datasets,
                       num_train_rows=rows, collate_fn=collate, objective=obj_kwargs, git_commit=common.git_commit())
    grid = build_tuner(spec, ctx, sched, concurrent, root).fit()
    keys = list(t.space)
    df = results.trials_frame(results.from_result_grid(grid), keys, objective.metric, objective.mode,
                              sched.total_steps)
    ok = df[df[objective.metric].notna()]
    best = best_spec(spec, {k: ok.iloc[0][results.PARAM_PREFIX + k] for k in keys}) if len(ok) else None
    log_keys = tuple(k for k, p in t.space.items() if p.kind == "loguniform")
    title = f"{spec.name}: phase {t.phase} sweep, {len(df)} trials, objective {objective.metric} ({objective.mode})"
    with tempfile.TemporaryDirectory(prefix="ctvlp-tune-") as tmp:
        local = Path(tmp) if is_s3(sweep_uri) else Path(sweep_uri) / "results"
        paths = results.write_results(df, local, param_keys=keys, metric=objective.metric, title=title,
                                      best_spec=best, log_keys=log_keys)
        if is_s3(sweep_uri):
            copy_dir_to_uri(local, join(sweep_uri, "results"), storage_of(spec))
            paths = {k: join(sweep_uri, "results", p.name) for k, p in paths.items()}
    return {"table": df, "paths": {k: str(v) for k, v in paths.items()}, "sweep_uri": sweep_uri,
            "schedule": sched, "max_concurrent": concurrent, "objective": objective}


def describe(spec: JobSpec) -> str:
    """What ``--dry-run`` prints: the sweep's plan without starting Ray."""
    t = spec.tune
    objective = tspace.resolve_objective(t.phase, t.objective)
    tspace.build_space(t.space)  # fails on a bad space here, not in a trial
    resolved = resolve_phase(spec, t.phase)
    rungs, r = [], t.grace_period_steps
    while r <= t.max_steps:
        rungs.append(r)
        r *= t.reduction_factor
    lines = [f"sweep {sweep_name(spec)} under {storage_root(resolved)}",
             f"  phase        {t.phase} (init {resolved.phase(t.phase).init.refs() or 'fresh'})",
             f"  objective    {objective.metric} ({objective.mode})",
             f"  searcher     {t.searcher}, {t.num_trials} trials, retries {t.max_trial_retries}",
             f"  ASHA         max {t.max_steps} steps, rungs at steps {rungs}, reduction factor {t.reduction_factor}",
             f"  per trial    {t.workers_per_trial} worker(s) x {resolved.resources.cpus_per_worker:g} CPU, "
             f"{t.gpus_per_trial:g} GPU, driver 0.01 CPU",
             "  space"]
    lines += [f"    {k}: {p.model_dump(exclude_none=True)}" for k, p in t.space.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    spec, args = common.parse_cli("Sweep hyper-parameters of one ctvlp phase with Ray Tune (ASHA).", argv)
    # URIs and paths here; the trials' workers are sized by tune.trial.concurrent_trials
    common.preflight_spec(spec, dry_run=args.dry_run)
    try:
        print(describe(spec), flush=True)
    except ValueError as err:
        print(f"tune: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    common.init_ray()
    out = run_sweep(spec)
    print(Path(out["paths"]["markdown"]).read_text() if not is_s3(out["sweep_uri"]) else out["table"].to_string())
    for name, path in out["paths"].items():
        print(f"{name:10s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
