"""One sweep trial: a Tune function trainable that builds and fits a Train V2 ``TorchTrainer``.

The trial's driver function holds almost no resources (``{"cpu": 0.01}``; Tune refuses zero):
on a 2-core machine a driver holding a whole CPU leaves none for its Train workers, and every
worker group times out after 60 s. The trial's workers run the runner's
``jobs.runner.train_fn_per_worker`` (DeepSpeed, the same loop as every phase) with the task
wrapped by :mod:`tune.objectives`, and their reports reach Tune through
``ray.tune.integration.ray_train.TuneReportCallback``. :func:`max_concurrent_trials` derives how
many trials fit at once from the cluster and each trial's workers (plus the drivers' 0.01 CPU and
what the data pipeline needs), so a sweep cannot deadlock on any cluster size.

Retries: a trial's Train run gets ``max_failures=0`` and a fresh run name per attempt; Tune's
``FailureConfig(max_failures=tune.max_trial_retries)`` reruns a failed trial from scratch (no
half-resumed run, so the objective's report steps stay aligned), and a trial that still fails is
recorded as an error in the results, never the end of the sweep.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass
from typing import Any

DRIVER_CPU = 0.01  # the trial driver's share: Tune refuses {"cpu": 0}


@dataclass(frozen=True)
class StepSchedule:
    """How a trial spends ``tune.max_steps`` optimiser steps over the training split.

    Attributes:
        epochs, steps_per_epoch: the trial's phase schedule (``max_steps_per_epoch`` = steps_per_epoch).
        total_steps: epochs * steps_per_epoch (>= max_steps; equal when max_steps splits evenly).
        report_every: ``checkpoint_every_steps``: reports (checkpoints) every this many steps.
    """

    epochs: int
    steps_per_epoch: int
    total_steps: int
    report_every: int


def step_schedule(num_rows: int, batch_size: int, max_steps: int, report_every: int) -> StepSchedule:
    """Epochs and per-epoch cap that give about ``max_steps`` full global batches of ``num_rows`` rows."""
    full = num_rows // batch_size
    if full < 1:
        raise ValueError(f"the training split has {num_rows} rows, fewer than one global batch ({batch_size}); "
                         "lower phases.phaseN.global_batch_size")
    if max_steps < 1 or report_every < 1:
        raise ValueError(f"max_steps and report_every must be >= 1, got {max_steps}, {report_every}")
    epochs = math.ceil(max_steps / full)
    per_epoch = math.ceil(max_steps / epochs)
    return StepSchedule(epochs, per_epoch, epochs * per_epoch, report_every)


def max_concurrent_trials(cluster: dict[str, float], *, workers: int, cpus_per_worker: float,
                          gpus_per_worker: float = 0.0, data_cpus: float = 0.0, num_trials: int | None = None) -> int:
    """Trials that can run at once without starving each other's Train workers.

    Args:
        cluster: ``ray.cluster_resources()`` (keys "CPU", "GPU").
        workers, cpus_per_worker, gpus_per_worker: each trial's Train worker group.
        data_cpus: CPUs kept free for Ray Data tasks feeding the trials (0 when the input is
            already materialised in the object store).
        num_trials: cap (no more concurrent trials than trials).
    Raises ValueError (with the fix) when not even one trial fits.
    """
    per_trial_cpu = workers * cpus_per_worker + DRIVER_CPU
    # small epsilon: 2 x (0.99 + 0.01) must fit in 2.0 despite float rounding
    n = math.floor((cluster.get("CPU", 0.0) - data_cpus) / per_trial_cpu + 1e-9)
    if gpus_per_worker > 0:
        n = min(n, math.floor(cluster.get("GPU", 0.0) / (workers * gpus_per_worker) + 1e-9))
    if n < 1:
        raise ValueError(
            f"one trial needs {per_trial_cpu:g} CPU ({workers} worker(s) x {cpus_per_worker:g} + {DRIVER_CPU} driver)"
            f"{f' and {workers * gpus_per_worker:g} GPU' if gpus_per_worker else ''} plus {data_cpus:g} CPU for its "
            f"data, but the cluster has {cluster.get('CPU', 0)} CPU / {cluster.get('GPU', 0)} GPU: lower "
            "tune.workers_per_trial or resources.cpus_per_worker, or add nodes")
    return min(n, num_trials) if num_trials else n


@dataclass
class SweepContext:
    """Everything a trial needs besides its sampled hyper-parameters (passed with ``tune.with_parameters``).

    Attributes:
        base: settable dict of the sweep's base spec: the phase's init references resolved to
            URIs and the trial schedule/resources already set; a trial sets its sampled keys on it.
        phase: the phase trained. trials_root: storage path of the trials' Train runs.
        datasets: ``{"train": ray.data.Dataset}``; num_train_rows: rows of that split.
        collate_fn: ``"module:function"`` for ``iter_torch_batches`` (None = Ray's default).
        objective: ``build_objective_task``'s ``objective`` argument.
        git_commit: recorded in every checkpoint.
    """

    base: dict
    phase: int
    trials_root: str
    datasets: dict
    num_train_rows: int
    collate_fn: str | None
    objective: dict
    git_commit: str = "unknown"


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune function trainable: fit the phase with the trial's hyper-parameters on Ray Train."""
    from ray import tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.plan import plan_for
    from jobs.runner import steps_per_epoch, train_fn_per_worker
    from tune.objectives import OBJECTIVE_FACTORY
    from tune.space import apply_params

    spec = apply_params(ctx.base, config)
    trial_id = tune.get_context().get_trial_id() or "local"
    plan = dataclasses.replace(plan_for(spec, ctx.phase, git_commit=ctx.git_commit),
                               run_name=f"{trial_id}-{uuid.uuid4().hex[:6]}", storage_path=ctx.trials_root,
                               max_failures=0, num_to_keep=1)
    per_epoch = steps_per_epoch(ctx.num_train_rows, plan.train)
    objective = {**ctx.objective, "every": plan.train.checkpoint_every_steps, "steps_per_epoch": per_epoch}
    fs, path = (plan.storage.arrow_fs(plan.storage_path) if plan.storage_path.startswith("s3://")
                else (None, plan.storage_path))
    resources = {"CPU": plan.cpus_per_worker, **({"GPU": plan.gpus_per_worker} if plan.use_gpu else {})}
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"plan": plan, "spec": spec, "task_factory": OBJECTIVE_FACTORY,
                           "task_kwargs": {"objective": objective}, "collate_fn": ctx.collate_fn,
                           "steps_per_epoch": per_epoch},
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=plan.run_name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=plan.num_to_keep),
                             callbacks=[TuneReportCallback()]),
        datasets=ctx.datasets,
    )
    fit_with_cluster_address(trainer)


def _fit(trainer) -> None:
    trainer.fit()


def fit_with_cluster_address(trainer) -> None:
    """``trainer.fit()`` in a 0-CPU task whose runtime env names this cluster in ``RAY_ADDRESS``.

    Why: Train V2's detached ``PlacementGroupCleaner`` (inherits the env of the controller, which
    inherits ours) asks the State API about the controller with no address, and the State API then
    auto-detects the cluster from the machine's running GCS processes. On a machine running
    several Ray instances (a shared CI box) that raises "Found multiple active Ray instances", the
    cleaner's thread dies, and a trial stopped by ASHA leaks its placement group: later trials
    wait for CPUs that never come back. The task shares fate with this trial's actor, so ASHA
    stopping the trial still stops its Train run.
    """
    import ray

    address = ray.get_runtime_context().gcs_address
    task = ray.remote(num_cpus=0, max_retries=0)(_fit).options(runtime_env={"env_vars": {"RAY_ADDRESS": address}})
    ray.get(task.remote(trainer))
