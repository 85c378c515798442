"""The one Ray Train edge: every phase runs through :func:`fit_phase` and :func:`train_fn_per_worker`.

``fit_phase`` builds a Train V2 ``TorchTrainer`` (``ScalingConfig`` from ``spec.resources``,
``RunConfig(name, storage_path, FailureConfig, CheckpointConfig)``); each worker builds the
phase's task (``ctvlp.tasks.build_task``), a DeepSpeed engine (``ctvlp.loop``) and runs the
same loop whatever the phase.

Checkpoints and resume:
- every ``checkpoint_every_steps`` optimiser steps and at every ``checkpoint_every_epochs``-th epoch
  end (and the last), each rank writes its
  DeepSpeed shard and calls ``ray.train.report`` with it; Ray merges the shards into one
  checkpoint directory of the run, with rank 0's ``resolved_spec.yaml``, ``model_config.json``
  and ``meta.json`` (git commit, train state).
- the run name is ``<spec.name>-phase<N>-<spec hash>``, so rerunning the same spec finds the
  run's snapshot and ``ray.train.get_checkpoint()`` returns its latest checkpoint (Train V2's
  resume; the old ``restore`` APIs are deprecated). A worker loss restarts the worker group up to
  ``resources.max_failures`` times, from the same latest checkpoint. Train V2 registers a
  reported checkpoint when its controller next polls the workers (every 2 s), so a worker lost
  within ~2 s of a report resumes from the checkpoint before it.
- mid-epoch rule: a resumed rank skips the number of batches it had consumed in that epoch
  (``TrainState.step_in_epoch``) before training again, so the epoch ends at its planned step
  and the schedule stays aligned. Ray Data's streaming split hands blocks to ranks dynamically,
  so the skipped batches are the right *count*, not guaranteed the identical studies.
"""

from __future__ import annotations

import importlib
import json
import posixpath
import queue
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ctvlp.card import META, write_card
from ctvlp.loop import (
    TrainConfig, TrainState, average_batchnorm_stats, build_engine, load_checkpoint, save_checkpoint, train_step,
)
from ctvlp.tracking import MetricsTracker, Progress, StepTimer, memory_mb
from ingest.storage import Storage, is_s3


@dataclass(frozen=True)
class PhasePlan:
    """Everything the workers need besides the spec object (plain values; built by ``plan_for``).

    Attributes:
        phase: 1..4 (only used to build the task and label the run; the loop never branches on it).
        run_name: stable for the spec: reruns resume.
        storage_path: local directory or ``s3://bucket/prefix`` holding runs.
        s3_endpoint_url: S3-compatible endpoint (None = AWS).
        sse: server-side encryption asked for on S3 writes of exports/TensorBoard (``ingest.storage``).
        train: the optimisation settings.
        num_workers, use_gpu, cpus_per_worker, gpus_per_worker: Ray Train scaling.
        max_failures: worker-group restarts before the run fails.
        shuffle_buffer: rows in each worker's local shuffle buffer (0 = off).
        resolved_spec_yaml: the resolved spec, written into every checkpoint.
        model_config: ``spec.model`` as a dict, written into every checkpoint and the export.
        git_commit: the code's commit, written into every checkpoint.
        num_to_keep: checkpoints kept in storage (None = all).
        data_stall_timeout_s: fail a worker that waits this long for a batch (0 = never).
        storage_timeout_s, storage_max_attempts: S3 patience of :attr:`storage` (``storage.*``).
        card_data: the training data's facts for the exports' model cards (``ctvlp.card.data_facts``).
    """

    phase: int
    run_name: str
    storage_path: str
    train: TrainConfig
    s3_endpoint_url: str | None = None
    sse: str | None = "AES256"
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 1
    shuffle_buffer: int = 16
    resolved_spec_yaml: str = ""
    model_config: dict = field(default_factory=dict)
    git_commit: str = "unknown"
    num_to_keep: int | None = 3
    data_stall_timeout_s: float = 600.0
    storage_timeout_s: float = 60.0
    storage_max_attempts: int = 4
    card_data: dict = field(default_factory=dict)

    @property
    def storage(self) -> Storage:
        return Storage(endpoint_url=self.s3_endpoint_url, sse=self.sse, timeout_s=self.storage_timeout_s,
                       max_attempts=self.storage_max_attempts)

    @property
    def run_uri(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.run_name}"

    @property
    def export_uri(self) -> str:
        """Where the phase's final model goes (``task.export``): safetensors + JSON config."""
        return f"{self.run_uri}/export"

    @property
    def best_export_uri(self) -> str:
        """Where the weights of the best validation go (``train.select_best``), beside the last."""
        return f"{self.run_uri}/export_best"


def steps_per_epoch(num_rows: int, cfg: TrainConfig) -> int:
    """Optimiser steps per epoch: full global batches only (drop_last), capped by max_steps_per_epoch."""
    steps = num_rows // cfg.global_batch_size
    if steps < 1:
        raise ValueError(f"the training split has {num_rows} rows, fewer than one global batch "
                         f"({cfg.global_batch_size}); lower phases.phaseN.global_batch_size")
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


@dataclass(frozen=True)
class PhaseResult:
    run_name: str
    run_uri: str
    checkpoint_uri: str | None
    export_uri: str
    metrics: dict


def import_callable(path: str) -> Callable:
    """``"package.module:function"`` -> the function (task factories and collate functions)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"expected 'module:function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def copy_dir_to_uri(local_dir: str | Path, uri: str, storage: Storage) -> None:
    """Copy a local directory tree to ``uri`` (a local path or ``s3://``), overwriting files."""
    local_dir = Path(local_dir)
    fs, root = storage.fs(uri)
    for src in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dest = f"{root}/{src.relative_to(local_dir).as_posix()}"
        if not is_s3(uri):
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
        fs.put_file(str(src), dest)


def fetch_inits(spec: Any, plan: PhasePlan) -> dict[str, str]:
    """``phases.phaseN.init`` of a resolved spec as local directories (S3 exports downloaded)."""
    local = {}
    for part, uri in spec.phase(plan.phase).init.refs().items():
        if not is_s3(uri):
            local[part] = uri
            continue
        fs, path = plan.storage.fs(uri)
        dest = Path(tempfile.mkdtemp(prefix=f"ctvlp-init-{part}-"))
        for remote in fs.find(path):
            target = dest / posixpath.relpath(remote, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))
        local[part] = str(dest)
    return local


# ------------------------------------------------------------------------- data stall timeout
class DataStallError(RuntimeError):
    """The data pipeline delivered no batch within ``data.stall_timeout_s``."""


def with_stall_timeout(batches: Iterable, seconds: float, describe: Callable[[], str]) -> Iterator:
    """Yield ``batches``, raising :class:`DataStallError` when the next one takes over ``seconds``.

    The batches are pulled in a helper thread (at most two ahead) so that a pipeline blocked
    inside Ray Data, which no Python timeout can interrupt, still fails this worker. The clock
    runs only while the loop waits for a batch, not while it trains. ``seconds`` 0 = no limit.
    """
    if not seconds:
        yield from batches
        return
    box: queue.Queue = queue.Queue(maxsize=1)
    stop, end = threading.Event(), object()

    def offer(item) -> bool:
        """Put ``item`` for the consumer; False once the consumer has gone."""
        while not stop.is_set():
            try:
                box.put(item, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in batches:
                if not offer(item):
                    return
            offer(end)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            offer(err)

    threading.Thread(target=pump, name="ctvlp-batch-pump", daemon=True).start()
    try:
        while True:
            try:
                item = box.get(timeout=seconds)
            except queue.Empty:
                raise DataStallError(
                    f"no batch from the data pipeline for {seconds:g} s ({describe()}): it stalled or has no "
                    "CPU to run on. Check that the cluster has CPUs beyond the Train workers "
                    "(resources.num_workers x resources.cpus_per_worker) and that storage answers; "
                    "data.stall_timeout_s sets the limit (0 = wait forever)") from None
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --------------------------------------------------------------------------------- the worker
def train_fn_per_worker(config: dict) -> None:
    """Ray Train V2 worker function: build task + engine, restore, train all epochs, export."""
    import ray.train

    from jobs.common import describe_ctvlp

    plan: PhasePlan = config["plan"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if rank == 0:
        print(f"[phase{plan.phase}] {describe_ctvlp()}", flush=True)
    torch.manual_seed(plan.train.seed)  # same initial weights everywhere (DeepSpeed also broadcasts)
    np.random.seed(plan.train.seed + rank)
    kwargs = dict(config["task_kwargs"])
    if hasattr(config["spec"], "phase"):  # a JobSpec: its init URIs, fetched to local dirs
        kwargs.setdefault("init", fetch_inits(config["spec"], plan))
    task = import_callable(config["task_factory"])(config["spec"], plan.phase, **kwargs)
    engine = build_engine(task.module, plan.train, config["steps_per_epoch"])
    if hasattr(task, "train"):  # ctvlp.tasks: train mode, but frozen parts stay in eval mode
        task.train()
    state, resume = _restore(engine, plan)
    progress = Progress(f"phase{plan.phase}", plan.train.epochs, config["steps_per_epoch"],
                        plan.train.global_batch_size, start_step=state.step)
    tracker = MetricsTracker(_tensorboard_dir(plan), enabled=rank == 0, console_every=plan.train.log_every,
                             progress=progress)
    loop = _Loop(plan, config, task, engine, tracker, resume, rank)
    try:
        while state.epoch < plan.train.epochs:
            loop.run_epoch(state)
        average_batchnorm_stats(task.module)  # collective: the exported statistics are the workers' mean
        if rank == 0:
            _export(task, plan, selection={"kind": "last", "epoch": state.epoch, "step": state.step})
    finally:
        tracker.close()


def _restore(engine, plan: PhasePlan) -> tuple[TrainState, dict]:
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return TrainState(phase=plan.phase), {}
    with ckpt.as_directory() as directory:
        state = load_checkpoint(engine, directory, verify=True)  # raises on a digest mismatch
    print(f"[phase{plan.phase}] resumed from {ckpt.path} at step {state.step} (epoch {state.epoch}, "
          f"{state.step_in_epoch} steps into it); weights and optimiser match the saved digest", flush=True)
    return state, {"resumed_from_step": state.step}


class _Loop:
    """The epoch loop of one worker (a class only to keep the per-run objects together)."""

    def __init__(self, plan, config, task, engine, tracker, resume: dict, rank: int) -> None:
        self.plan, self.task, self.engine, self.tracker = plan, task, engine, tracker
        self.resume, self.rank = resume, rank
        self.steps_per_epoch = config["steps_per_epoch"]
        collate = import_callable(config["collate_fn"]) if config.get("collate_fn") else None
        self.collate = collate() if isinstance(collate, type) else collate  # Ray's CollateFn classes
        self.micro, self.accumulation = plan.train.batch_split(plan.num_workers)
        self.last_checkpoint = time.monotonic()
        self.spec = config["spec"]

    def _batches(self, epoch: int):
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        return shard.iter_torch_batches(
            batch_size=self.micro, drop_last=True, collate_fn=self.collate,
            local_shuffle_buffer_size=self.plan.shuffle_buffer or None,
            local_shuffle_seed=self.plan.train.seed + 1000 * epoch + self.rank if self.plan.shuffle_buffer else None,
        )

    def _steps(self, epoch: int, where: Callable[[], str]):
        """This rank's micro-batches grouped by optimiser step (``accumulation`` of them each),
        failing the run when the data pipeline delivers nothing for ``data_stall_timeout_s``."""
        group = []
        for batch in with_stall_timeout(self._batches(epoch), self.plan.data_stall_timeout_s, where):
            group.append(batch)
            if len(group) == self.accumulation:
                yield group
                group = []

    def run_epoch(self, state: TrainState) -> None:
        """Train from ``state`` to the end of its epoch; checkpoint on cadence and at the end."""
        cfg, to_skip = self.plan.train, state.step_in_epoch
        timer, out = StepTimer(), {}
        where = lambda: f"rank {self.rank}, epoch {state.epoch}, step {state.step}"  # noqa: E731
        for batch in self._steps(state.epoch, where):
            if to_skip:  # mid-epoch resume: drop what this rank consumed before the checkpoint
                to_skip -= 1
                timer.restart()
                continue
            if state.step_in_epoch >= self.steps_per_epoch:
                break
            timer.data_ready()
            out = train_step(self.engine, self.task, batch, channels_last=cfg.channels_last)
            state.advance(cfg.global_batch_size)
            seconds, wait = timer.step_done()
            out.update(samples_per_s=cfg.global_batch_size / seconds, data_wait_frac=wait,
                       epoch=state.epoch, **memory_mb(self.engine.device))
            self.tracker.log(state.step, out)
            if state.step_in_epoch < self.steps_per_epoch and self.checkpoint_due(state):
                self.checkpoint(state, out)
                timer.restart()
        if state.step_in_epoch < self.steps_per_epoch:
            raise RuntimeError(f"rank {self.rank}: the data shard ran out after {state.step_in_epoch} of "
                               f"{self.steps_per_epoch} steps in epoch {state.epoch}")
        state.end_epoch()
        if self.validation_due(state):
            out.update(self.validate(state))
            valid = {k: v for k, v in out.items() if k.startswith("valid_")}
            self.tracker.log(state.step, valid, console=False)
            self.tracker.console(f"[phase{self.plan.phase}] validation after epoch {state.epoch}/{cfg.epochs}: "
                                 + " ".join(f"{k}={v:.4g}" for k, v in valid.items()))
        if state.epoch % cfg.checkpoint_every_epochs == 0 or state.epoch >= cfg.epochs:
            self.checkpoint(state, out)

    def checkpoint_due(self, state: TrainState) -> bool:
        """Collective: a step checkpoint every ``checkpoint_every_steps`` steps, or once
        ``checkpoint_every_minutes`` have passed since the last checkpoint by rank 0's clock
        (broadcast, so that every rank checkpoints at the same step)."""
        cfg = self.plan.train
        if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
            return True
        if not cfg.checkpoint_every_minutes:
            return False
        import torch.distributed as dist

        late = time.monotonic() - self.last_checkpoint >= 60.0 * cfg.checkpoint_every_minutes
        flag = torch.tensor([float(late)], device=self.engine.device)
        if dist.is_initialized():
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def validation_due(self, state: TrainState) -> bool:
        every = self.plan.train.validate_every_epochs
        return bool(every) and (state.epoch % every == 0 or state.epoch >= self.plan.train.epochs)

    def validate(self, state: TrainState) -> dict[str, float]:
        """Collective: the mean of each loss term over the valid split (every rank its shard, summed
        with an all-reduce); on a new best (``select_best``) rank 0 writes ``export_best``."""
        import ray.train
        import torch.distributed as dist

        from ctvlp.loop import average_batchnorm_stats, validation_step

        average_batchnorm_stats(self.task.module)
        self.task.module.eval()
        zero_shot = _ZeroShotValidation(self) if self.plan.train.validate_zero_shot else None
        sums: dict[str, float] = {}
        count = 0
        shard = ray.train.get_dataset_shard("valid")
        for batch in shard.iter_torch_batches(batch_size=self.micro, collate_fn=self.collate):
            for key, value in validation_step(self.engine, self.task, batch,
                                              channels_last=self.plan.train.channels_last).items():
                sums[key] = sums.get(key, 0.0) + value
            if zero_shot is not None:
                zero_shot.add(batch)
            count += 1
        self._train_mode()
        keys = sorted(sums)
        if dist.is_initialized():
            keys_all = [None] * dist.get_world_size()
            dist.all_gather_object(keys_all, keys)  # ranks with no valid batch still agree on keys
            keys = sorted({k for ks in keys_all for k in ks})
        # on the engine's device: NCCL reduces CUDA tensors only
        packed = torch.tensor([sums.get(k, 0.0) for k in keys] + [float(count)], dtype=torch.float64,
                              device=self.engine.device)
        if dist.is_initialized():
            dist.all_reduce(packed)
        if packed[-1] == 0:
            raise RuntimeError("validation found no batch in the valid split: lower the micro-batch or "
                               "set phases.phaseN.validate_every_epochs=0")
        metrics = {f"valid_{k}": float(packed[i] / packed[-1]) for i, k in enumerate(keys)}
        if zero_shot is not None:
            metrics["valid_macro_auc"] = zero_shot.macro_auc()  # collective
        self._update_best(state, metrics)
        return metrics

    def _train_mode(self) -> None:
        if hasattr(self.task, "train"):  # ctvlp.tasks keep frozen parts in eval mode
            self.task.train()
        else:
            self.task.module.train()

    def _update_best(self, state: TrainState, metrics: dict[str, float]) -> None:
        cfg = self.plan.train
        if cfg.select_best == "none":
            return
        value = metrics[cfg.select_best]
        higher = cfg.select_best == "valid_macro_auc"
        if value != value:  # NaN (no disease with both classes in the valid split): never a best
            return
        if state.best_value is not None and (value <= state.best_value if higher else value >= state.best_value):
            return
        state.best_value, state.best_epoch, state.best_step = value, state.epoch, state.step
        if self.rank == 0:
            _export(self.task, self.plan, uri=self.plan.best_export_uri,
                    selection={"kind": "best", "metric": cfg.select_best, "value": value,
                               "epoch": state.epoch, "step": state.step})

    def checkpoint(self, state: TrainState, metrics: dict) -> None:
        """Collective: every rank saves its shard and reports it; Ray merges them into one dir."""
        import ray.train
        from ray.train import Checkpoint

        self.last_checkpoint = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ctvlp-ckpt-") as tmp:
            save_checkpoint(self.engine, tmp, state)
            if self.rank == 0:
                _write_checkpoint_meta(Path(tmp), self.plan, state)
            report = {**metrics, **asdict(state), **self.resume}
            ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{state.step:08d}_epoch{state.epoch:04d}")
        self.tracker.flush()
        if self.rank == 0 and is_s3(self.plan.storage_path):
            copy_dir_to_uri(self.tracker.log_dir, f"{self.plan.run_uri}/tensorboard", self.plan.storage)


class _ZeroShotValidation:
    """Zero-shot scores of the valid crops against spec.eval's prompt pairs, with the live text
    encoder and the task's image embeddings (phases 2 and 4), macro AUC over all ranks."""

    def __init__(self, loop: "_Loop") -> None:
        from ctvlp.eval.zeroshot import PromptBank
        from ctvlp.loop import autocast_enabled

        self.loop, spec = loop, loop.spec
        self.bf16 = autocast_enabled(loop.engine)
        diseases = spec.eval.disease_list(spec.data)
        self.bank = PromptBank.from_text_encoder(spec, loop.task.module["text"], diseases,
                                                 loop.engine.device, self.bf16)
        self.scores: list = []
        self.labels: list = []

    @torch.no_grad()
    def add(self, batch: dict) -> None:
        from types import SimpleNamespace

        from ctvlp.eval.zeroshot import label_matrix
        from ctvlp.loop import to_device
        from ctvlp.precision import bf16_autocast

        device = self.loop.engine.device
        on_device = to_device(batch, device, channels_last=self.loop.plan.train.channels_last)
        with bf16_autocast(device, self.bf16):
            out = self.loop.task.image_embeddings(on_device)
        emb = SimpleNamespace(embeds=out["embeds"].float().cpu().numpy(), present=out["valid"].cpu().numpy())
        self.scores.append(self.bank.score(emb))
        self.labels.append(label_matrix(batch["disease_labels"], self.bank.names))

    def macro_auc(self) -> float:
        import torch.distributed as dist

        from ctvlp.eval.zeroshot import macro_auc

        mine = (np.concatenate(self.scores) if self.scores else np.zeros((0, len(self.bank.names))),
                np.concatenate(self.labels) if self.labels else np.zeros((0, len(self.bank.names))))
        parts = [mine]
        if dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, mine)
        return macro_auc(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _write_checkpoint_meta(directory: Path, plan: PhasePlan, state: TrainState) -> None:
    (directory / "resolved_spec.yaml").write_text(plan.resolved_spec_yaml)
    (directory / "model_config.json").write_text(json.dumps(plan.model_config, indent=2, sort_keys=True))
    meta = {"git_commit": plan.git_commit, "run_name": plan.run_name, "phase": plan.phase,
            "train_state": asdict(state), "train_config": asdict(plan.train)}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _tensorboard_dir(plan: PhasePlan) -> Path:
    if not is_s3(plan.storage_path):
        return Path(plan.run_uri) / "tensorboard"
    return Path(tempfile.gettempdir()) / "ctvlp-tensorboard" / plan.run_name  # synced at checkpoints


def _export(task, plan: PhasePlan, uri: str | None = None, selection: dict | None = None) -> None:
    """Rank 0 writes ``task.export`` output (+ meta) and copies it to ``uri`` (default
    ``plan.export_uri``). ``selection`` (which weights these are: the last, or the best by which
    validation figure at which epoch) is recorded in ``export_meta.json``."""
    uri = uri or plan.export_uri
    with tempfile.TemporaryDirectory(prefix="ctvlp-export-") as tmp:
        task.export(tmp)
        meta = {"git_commit": plan.git_commit, "run_name": plan.run_name, "phase": plan.phase,
                "model_config": plan.model_config, "selection": selection or {"kind": "last"}}
        meta["data"] = plan.card_data
        (Path(tmp) / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        (Path(tmp) / "resolved_spec.yaml").write_text(plan.resolved_spec_yaml)
        write_card(tmp)  # README.md: what the model is, its data, spec, licences, commit
        copy_dir_to_uri(tmp, uri, plan.storage)
    print(f"[phase{plan.phase}] exported to {uri} ({(selection or {}).get('kind', 'last')})", flush=True)


# --------------------------------------------------------------------------------- the driver
# Train V2 replaces ``print`` in its workers by a function that logs each line through the root
# logger (whose console handler writes it to stderr) and, because Ray's worker has swapped
# ``sys.stdout`` for its log file, also prints it to stdout: every line of a worker reached the
# console twice (ray.train.v2._internal.logging.patch_print, Ray 2.60). Off for our workers: a
# print goes to stdout once, and Ray streams it to the driver as any worker output.
WORKER_RUNTIME_ENV = {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}


def fit_phase(plan: PhasePlan, spec: Any, datasets: dict, *, num_train_rows: int,
              task_factory: str = "ctvlp.tasks:build_task", task_kwargs: dict | None = None,
              collate_fn: str | None = None) -> PhaseResult:
    """Train one phase on Ray Train; resumes the run of the same name when it exists.

    Args:
        plan: from :func:`jobs.plan.plan_for` (or built directly in tests).
        spec: passed to ``task_factory(spec, phase, **task_kwargs)`` on every worker.
        datasets: ``{"train": ray.data.Dataset}``; split across workers by Ray Train.
        num_train_rows: rows in the train split (sets the steps per epoch and the schedule).
        collate_fn: ``"module:function"`` applied to each columnar batch, or None for Ray's default.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if "train" not in datasets:
        raise ValueError(f"datasets must contain 'train', got {sorted(datasets)}")
    if plan.train.validate_every_epochs and "valid" not in datasets:
        raise ValueError(f"phases.phase{plan.phase}.validate_every_epochs is {plan.train.validate_every_epochs} "
                         "but no 'valid' dataset was given (ingest writes one when data.valid_fraction > 0)")
    # Ray Train writes checkpoints through a pyarrow filesystem: s3fs wrapped (endpoint + SSE).
    fs, path = plan.storage.arrow_fs(plan.storage_path) if is_s3(plan.storage_path) else (None, plan.storage_path)
    resources = {"CPU": plan.cpus_per_worker}
    if plan.use_gpu:
        resources["GPU"] = plan.gpus_per_worker
    config = {"plan": plan, "spec": spec, "task_factory": task_factory, "task_kwargs": task_kwargs or {},
              "collate_fn": collate_fn, "steps_per_epoch": steps_per_epoch(num_train_rows, plan.train)}
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=plan.run_name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=plan.num_to_keep),
            worker_runtime_env=WORKER_RUNTIME_ENV,
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    ckpt = result.checkpoint
    ckpt_uri = None if ckpt is None else (f"s3://{ckpt.path}" if is_s3(plan.storage_path) else ckpt.path)
    return PhaseResult(plan.run_name, plan.run_uri, ckpt_uri, plan.export_uri, dict(result.metrics or {}))
