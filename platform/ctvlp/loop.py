"""The Ray-free training core: schedule, DeepSpeed engine, one train step, resumable state.

Used by the Ray Train runner (``jobs/runner.py``, one process per worker) and by the GPU
GPU acceptance script (``bench/gpu_acceptance.py``, one process, no Ray). Nothing here knows which phase
it trains: a phase is a ``Task`` (``ctvlp.tasks``) with ``module``, ``required_keys``,
``training_step(batch) -> (losses, metrics)``, ``after_step()`` and ``export(dir)``; the loss
that is optimised is the sum of the entries of ``losses`` whose key ends with ``_loss``.

DeepSpeed runs on GPU (NCCL) and CPU (gloo) alike; ZeRO stage 1 or 2. We pass a torch AdamW with
``zero_allow_untested_optimizer`` instead of DeepSpeed's own Adam so that no fused-Adam op has to
be compiled on CPU (``docs/`` and ``jobs/prebuild_ops.py``). The schedule is a torch
``LambdaLR`` handed to DeepSpeed, so its position is saved and restored with the checkpoint.

Tasks call ``task.module`` directly (the same object as ``engine.module``). That is exact for
ZeRO 1/2, where the engine's forward adds nothing but timers; ZeRO-3 would need ``engine(...)``
and is rejected by :class:`TrainConfig`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from ctvlp.data.collate import contract_volume
from ctvlp.precision import bf16_autocast

CKPT_TAG = "ds"  # DeepSpeed checkpoint tag inside every checkpoint directory
TRAIN_STATE_KEY = "train_state"


# ------------------------------------------------------------------------------- config/state
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one phase (plain values; see :func:`train_config_from_spec`).

    Attributes:
        epochs: passes over the training split.
        global_batch_size: samples per optimiser step summed over all workers and micro-batches.
        micro_batch_size: samples per worker per forward/backward (0 = derived, see :meth:`batch_split`).
        grad_accumulation_steps: micro-batches per optimiser step (0 = derived).
        lr: peak learning rate, reached at the end of the warm-up.
        min_lr: start of the warm-up and end of the cosine decay.
        warmup_epochs: length of the linear warm-up, in epochs (may be fractional).
        weight_decay: AdamW decoupled weight decay on >=2-D weights (not on norms or biases).
        grad_clip: global gradient-norm clip; 0 disables it.
        checkpoint_every_steps: checkpoint cadence in optimiser steps; 0 = epoch ends only.
        checkpoint_every_epochs: epoch-end checkpoints every this many epochs (and the last).
        checkpoint_every_minutes: also checkpoint when this much wall time has passed since the
            last checkpoint (0 = off): what a preemption can lose, in minutes.
        max_steps_per_epoch: cap on steps per epoch (debug, tuning); 0 = the whole split.
        zero_stage: DeepSpeed ZeRO stage (1 or 2).
        bf16: bf16 compute under autocast on float32 weights (DeepSpeed's ``torch_autocast`` mode;
            gradients reduced and accumulated in float32): ``ctvlp.precision``.
        sync_batchnorm: BatchNorm layers as ``nn.SyncBatchNorm`` (CUDA only).
        channels_last: 5-D conv weights and image batches in ``torch.channels_last_3d`` (GPU:
            ~1.35x on the 3D ResNet in bf16; on CPU it is ~3x slower, so the spec sets it on GPU only).
        seed: base seed; rank r seeds its data augmentation with ``seed + r``.
        log_every: console cadence in steps (TensorBoard gets every step).
        validate_every_epochs: the valid split's loss every N epochs and after the last (0 = off).
        select_best: the figure that picks the best export ("valid_loss": lowest;
            "valid_macro_auc": highest; "none").
        validate_zero_shot: validation also scores zero-shot macro AUC (tasks with a text side).
    """

    epochs: int
    global_batch_size: int
    lr: float
    micro_batch_size: int = 0
    grad_accumulation_steps: int = 0
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    checkpoint_every_steps: int = 0
    checkpoint_every_epochs: int = 1
    checkpoint_every_minutes: float = 0.0
    max_steps_per_epoch: int = 0
    zero_stage: int = 1
    bf16: bool = False
    sync_batchnorm: bool = False
    channels_last: bool = False
    seed: int = 0
    log_every: int = 10
    validate_every_epochs: int = 0
    select_best: str = "valid_loss"
    validate_zero_shot: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.global_batch_size < 1:
            raise ValueError(f"epochs and global_batch_size must be >= 1, got {self.epochs}, {self.global_batch_size}")
        if self.checkpoint_every_epochs < 1:
            raise ValueError(f"checkpoint_every_epochs must be >= 1, got {self.checkpoint_every_epochs}")
        if self.zero_stage not in (1, 2):
            raise ValueError(f"zero_stage must be 1 or 2 (ZeRO-3 needs engine-driven forwards), got {self.zero_stage}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")

    def batch_split(self, world_size: int) -> tuple[int, int]:
        """(micro-batch per worker, accumulation steps) with micro x steps x workers = global batch.

        Given neither, one micro-batch per step; given one, the other is derived; given both, they
        must multiply out. So a run resumed on another number of workers keeps its global batch.
        Raises ValueError naming the spec keys when the global batch does not split.
        """
        g, micro, steps = self.global_batch_size, self.micro_batch_size, self.grad_accumulation_steps
        if micro and not steps:
            steps = g // (micro * world_size) if g % (micro * world_size) == 0 else 0
        elif steps and not micro:
            micro = g // (steps * world_size) if g % (steps * world_size) == 0 else 0
        elif not micro and not steps:
            steps, micro = 1, (g // world_size if g % world_size == 0 else 0)
        if micro < 1 or steps < 1 or micro * steps * world_size != g:
            raise ValueError(
                f"global_batch_size {g} does not split into micro_batch_size {self.micro_batch_size or '(derived)'} "
                f"x grad_accumulation_steps {self.grad_accumulation_steps or '(derived)'} x {world_size} workers; "
                "set phases.phaseN.global_batch_size to a multiple of resources.num_workers x the micro-batch, "
                "or phases.phaseN.micro_batch_size / grad_accumulation_steps")
        return micro, steps


def train_config_from_spec(spec: Any, phase: int, *, cuda: bool | None = None) -> TrainConfig:
    """Adapter from a ``ctvlp.config.JobSpec`` to :class:`TrainConfig` (bf16 "auto" = on with CUDA)."""
    p, res = spec.phase(phase), spec.resources
    cuda = torch.cuda.is_available() if cuda is None else cuda
    bf16 = (cuda and res.use_gpu) if res.bf16 == "auto" else bool(res.bf16)
    return TrainConfig(
        epochs=p.epochs, global_batch_size=p.global_batch_size, micro_batch_size=p.micro_batch_size,
        grad_accumulation_steps=p.grad_accumulation_steps, lr=p.lr, min_lr=p.min_lr,
        warmup_epochs=p.warmup_epochs, weight_decay=p.weight_decay, grad_clip=p.grad_clip,
        checkpoint_every_steps=p.checkpoint_every_steps, max_steps_per_epoch=p.max_steps_per_epoch,
        checkpoint_every_epochs=p.checkpoint_every_epochs, checkpoint_every_minutes=p.checkpoint_every_minutes,
        validate_every_epochs=p.validate_every_epochs, select_best=p.select_best,
        validate_zero_shot=p.validate_zero_shot,
        zero_stage=res.zero_stage, bf16=bf16, seed=spec.seed, sync_batchnorm=res.sync_batchnorm,
        channels_last=bool(cuda and res.use_gpu and res.channels_last),
    )


@dataclass
class TrainState:
    """Everything besides model/optimiser/scheduler that a resumed run needs (saved in each checkpoint).

    ``step`` counts optimiser steps over the whole phase, ``step_in_epoch`` those of the current
    epoch (a resumed run skips that many batches of the epoch's stream), ``samples_seen`` is
    global (all workers). ``best_*`` describe the best validation so far (``select_best``), so
    that a resumed run keeps comparing against it.
    """

    phase: int
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    samples_seen: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    best_step: int = 0

    def advance(self, global_batch_size: int) -> None:
        self.step += 1
        self.step_in_epoch += 1
        self.samples_seen += global_batch_size

    def end_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0


# ----------------------------------------------------------------------------------- schedule
def lr_at(step: int, *, peak: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear from ``min_lr`` to ``peak`` over
    ``warmup_steps`` (the last warm-up step uses ``peak``), then half-cosine to ``min_lr`` at
    step ``total_steps - 1``; ``min_lr`` beyond. Paper: warm-up = first epoch, min 1e-6."""
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1, got {step}, {total_steps}")
    if step < warmup_steps:
        return min_lr + (peak - min_lr) * (step + 1) / warmup_steps
    span = total_steps - 1 - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """``LambdaLR`` factor for :func:`lr_at` (a callable object, so LambdaLR saves its fields)."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.peak, self.min_lr = cfg.lr, cfg.min_lr
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        self.total_steps = cfg.epochs * steps_per_epoch

    def __call__(self, step: int) -> float:
        lr = lr_at(step, peak=self.peak, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                   total_steps=self.total_steps)
        return lr / self.peak


# ------------------------------------------------------------------------------------- engine
def ensure_process_group() -> None:
    """Start a 1-process group when none exists (bench, unit tests); Ray Train starts its own."""
    if dist.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config dict for ``cfg`` on ``world_size`` data-parallel workers."""
    micro, steps = cfg.batch_split(world_size)
    return {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": steps,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        # Precision contract (ctvlp.precision): float32 weights, bf16 autocast for the forward,
        # no DeepSpeed-lowered module (so gradients are all-reduced and accumulated in float32;
        # gloo and NCCL alike), float32 communication.
        "bf16": {"enabled": False},
        "torch_autocast": {"enabled": cfg.bf16, "dtype": "bfloat16", "lower_precision_safe_modules": []},
        "communication_data_type": "fp32",
        "zero_allow_untested_optimizer": True,  # torch AdamW: no fused-Adam JIT build on CPU
        "steps_per_print": 10**9,  # our tracker logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on >=2-D weights, none on biases/norm scales/temperatures (nanoGPT rule)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("task.module has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _broadcast_scalar_params(module: torch.nn.Module) -> None:
    """Sync 0-dim parameters (e.g. a learnable temperature) from rank 0 ourselves.

    DeepSpeed 0.19.8's ``_broadcast_model`` sends every parameter as ``p.data.view(torch.uint8)``,
    which raises "self.dim() cannot be 0 to view Float as Byte" for 0-dim tensors once there are
    2+ ranks. We broadcast those here and set ``ds_optim_param``, the attribute with which that
    loop skips parameters (it is otherwise read only by OptimizedLinear CPU offload, unused here).
    """
    for p in module.parameters():
        if p.dim() == 0:
            if dist.get_world_size() > 1:
                dist.broadcast(p.data, src=0)
            p.ds_optim_param = True


def convert_sync_batchnorm(module: torch.nn.Module) -> None:
    """Replace every BatchNorm of ``module``'s children by ``nn.SyncBatchNorm`` in place (weights
    and statistics kept). torch implements SyncBatchNorm for CUDA only, so CPU runs are refused."""
    if not torch.cuda.is_available():
        raise ValueError("resources.sync_batchnorm needs CUDA (torch has no CPU SyncBatchNorm); set it to false")
    for name, child in module.named_children():
        setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


@torch.no_grad()
def average_batchnorm_stats(module: torch.nn.Module) -> int:
    """Collective: replace every BatchNorm's running mean and variance by their mean over ranks.

    Without SyncBatchNorm each rank's statistics follow its own micro-batches, and DeepSpeed
    broadcasts parameters, not buffers; averaging before validation and export makes the exported
    statistics the workers' consensus (the mean of the running means; the mean of the running
    variances omits the spread of the rank means, which shrinks as the EMA averages many batches).
    Returns the number of BatchNorm layers (0 changes nothing).
    """
    layers = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    if not layers or not dist.is_initialized() or dist.get_world_size() == 1:
        return len(layers)
    flat = torch.cat([torch.cat([m.running_mean, m.running_var]) for m in layers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for m in layers:
        n = m.running_mean.numel()
        m.running_mean.copy_(flat[offset : offset + n])
        m.running_var.copy_(flat[offset + n : offset + 2 * n])
        offset += 2 * n
    return len(layers)


def build_engine(module: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """Wrap ``module`` in a DeepSpeed engine with AdamW and the warm-up/cosine schedule.

    Needs a process group (Ray Train's, or :func:`ensure_process_group`). Returns the engine;
    its ``lr_scheduler`` steps once per ``engine.step()``.
    """
    # DeepSpeed's CPU comm op is JIT-compiled once into the environment (jobs/prebuild_ops.py).
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
    import deepspeed  # heavy import; only where an engine is built

    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}: is the split smaller than one batch?")
    ensure_process_group()
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
    _broadcast_scalar_params(module)
    if cfg.sync_batchnorm:
        convert_sync_batchnorm(module)
    if cfg.channels_last:
        module.to(memory_format=torch.channels_last_3d)  # 5-D weights only; the rest is unchanged
    optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg, steps_per_epoch))
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(cfg, dist.get_world_size()),
    )
    return engine


# ----------------------------------------------------------------------------------- stepping
def to_device(batch: Mapping[str, Any], device: torch.device, *, channels_last: bool = False) -> dict:
    """Move tensors to ``device`` (floating ones stay float32: bf16 comes from autocast, see
    ``ctvlp.precision``); with ``channels_last``, lay 5-D floating tensors (images
    [B, C, D, H, W]) out as channels_last_3d.

    A uint8 ``image``/``mask`` (the loader's host format, ``collate(volumes="uint8")``) is copied
    as uint8 and converted to the batch contract's float32 [0, 1] / int64 on the device
    (``ctvlp.data.collate.contract_volume``): 5x fewer bytes over PCIe, no host CPU spent."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
        out[key] = value
    for key in ("image", "mask"):
        if isinstance(out.get(key), torch.Tensor) and out[key].dtype == torch.uint8:
            out[key] = contract_volume(key, out[key])
    for key, value in out.items():
        if channels_last and isinstance(value, torch.Tensor) and value.ndim == 5 and value.is_floating_point():
            out[key] = value.contiguous(memory_format=torch.channels_last_3d)
    return out


def autocast_enabled(engine) -> bool:
    """Whether the engine was configured for bf16 autocast (``deepspeed_config``'s torch_autocast)."""
    return bool(engine.torch_autocast_enabled())


def train_step(engine, task, batch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
               channels_last: bool = False) -> dict[str, float]:
    """One optimiser step over ``engine.gradient_accumulation_steps()`` micro-batches.

    Each micro-batch: forward through the task (under bf16 autocast when the engine says so) and
    backward of the summed ``*_loss`` terms (DeepSpeed divides it by the accumulation steps and
    accumulates float32 gradients); then clip + AdamW + schedule at the boundary (DeepSpeed) and
    ``task.after_step()`` once. ``batch`` is one micro-batch (no accumulation) or a sequence.

    Returns floats: every loss term, ``loss`` (their sum), the task's metrics (each the mean over
    the micro-batches), ``lr`` (of this step) and ``grad_norm``.
    """
    micro = [batch] if isinstance(batch, Mapping) else list(batch)
    if len(micro) != engine.gradient_accumulation_steps():
        raise ValueError(f"got {len(micro)} micro-batches for an engine that accumulates "
                         f"{engine.gradient_accumulation_steps()} per optimiser step")
    lr = engine.get_lr()[0]
    sums: dict[str, float] = {}
    for mb in micro:
        for key, value in _forward_backward(engine, task, mb, channels_last).items():
            sums[key] = sums.get(key, 0.0) + value
    task.after_step()
    out = {k: v / len(micro) for k, v in sums.items()}
    out["lr"] = float(lr)
    norm = engine.get_global_grad_norm()
    if norm is not None:
        out["grad_norm"] = float(norm)
    return out


def _forward_backward(engine, task, batch: Mapping[str, Any], channels_last: bool) -> dict[str, float]:
    """Forward, backward and ``engine.step()`` (an optimiser step only at the accumulation boundary)."""
    missing = [k for k in task.required_keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks keys {missing} that {type(task).__name__} requires; has {sorted(batch)}")
    batch = to_device(batch, engine.device, channels_last=channels_last)
    with bf16_autocast(engine.device, enabled=autocast_enabled(engine)):
        losses, metrics = task.training_step(batch)
    terms = {k: v for k, v in losses.items() if k.endswith("_loss")}
    if not terms:
        raise ValueError(f"training_step returned no '*_loss' entries (got {sorted(losses)})")
    total = sum(terms.values())
    engine.backward(total)
    engine.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["loss"] = float(total.detach())
    out.update({k: float(v) for k, v in metrics.items()})
    return out


@torch.no_grad()
def validation_step(engine, task, batch: Mapping[str, Any], *, channels_last: bool = False) -> dict[str, float]:
    """The task's loss terms on one batch, in eval mode, without gradients (the caller sets the
    mode); ``task.validation_step(batch)`` replaces ``training_step`` where a task defines it.
    Returns floats: every ``*_loss`` term and ``loss`` (their sum)."""
    batch = to_device(batch, engine.device, channels_last=channels_last)
    step = getattr(task, "validation_step", None) or task.training_step
    with bf16_autocast(engine.device, enabled=autocast_enabled(engine)):
        losses, _ = step(batch)
    out = {k: float(v) for k, v in losses.items() if k.endswith("_loss")}
    out["loss"] = sum(out.values())
    return out


# -------------------------------------------------------------------------------- checkpoints
def _digest_tree(h, prefix: str, node: Any) -> None:
    if isinstance(node, torch.Tensor):
        t = node.detach().cpu().contiguous().reshape(-1)
        h.update(f"{prefix}:{t.dtype}:{t.numel()};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(node, Mapping):
        for key in sorted(node, key=str):
            _digest_tree(h, f"{prefix}/{key}", node[key])
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _digest_tree(h, f"{prefix}/{i}", item)


def state_digest(engine) -> dict[str, str]:
    """sha256 of this rank's model tensors and optimiser-state tensors (ZeRO: its partition)."""
    model, optim = hashlib.sha256(), hashlib.sha256()
    _digest_tree(model, "", engine.module.state_dict())
    _digest_tree(optim, "", engine.optimizer.state_dict())
    return {"model_sha256": model.hexdigest(), "optimizer_sha256": optim.hexdigest()}


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory/<CKPT_TAG>`` (paths relative to ``directory``)."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((directory / CKPT_TAG).rglob("*")) if p.is_file()}


def verify_files(directory: Path) -> None:
    """Refuse a checkpoint whose pickled files differ from the sha256 their writers recorded
    (``digest_rank<r>.json``, key ``files``), before anything unpickles them: a file changed,
    added or not covered by a digest raises RuntimeError."""
    recorded: dict[str, str] = {}
    for digest in sorted(directory.glob("digest_rank*.json")):
        files = json.loads(digest.read_text()).get("files")
        if files is None:
            raise RuntimeError(f"{digest} records no file digests (a checkpoint from an older ctvlp): "
                               "it cannot be verified before unpickling; start the run afresh")
        recorded.update(files)
    found = file_digests(directory)
    bad = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
    if bad:
        raise RuntimeError(f"checkpoint {directory}: {bad[:5]} differ from the recorded sha256 (changed, added "
                           "or missing); refusing to unpickle it. Only the run's own jobs may write its storage")


def save_checkpoint(engine, directory: str | Path, state: TrainState) -> None:
    """Collective: every rank writes its DeepSpeed shard of ``directory`` (plus its digest).

    ``mp_rank_00_model_states.pt`` (weights, scheduler, ``state``) comes from rank 0,
    ``zero_pp_rank_<r>_...optim_states.pt`` from rank r; ``digest_rank<r>.json`` holds the sha256
    of the files rank r wrote (checked before ``torch.load``) and of its tensors (checked after).
    """
    directory = Path(directory)
    engine.save_checkpoint(str(directory), tag=CKPT_TAG, client_state={TRAIN_STATE_KEY: asdict(state)},
                           save_latest=False)
    rank = dist.get_rank() if dist.is_initialized() else 0
    # each rank's directory holds only its own files here; Ray merges the ranks' directories
    digest = {**state_digest(engine), "files": file_digests(directory)}
    (directory / f"digest_rank{rank}.json").write_text(json.dumps(digest))


def load_checkpoint(engine, directory: str | Path, *, verify: bool = True) -> TrainState:
    """Collective: restore weights, optimiser, schedule and :class:`TrainState` from ``directory``.

    Raises FileNotFoundError when it holds no checkpoint, RuntimeError when ``verify`` and the
    restored tensors differ from those digested at save time. With ``verify`` the files' sha256
    are checked first (:func:`verify_files`), because DeepSpeed reads them with ``torch.load``
    (pickle): a changed file is refused before it is unpickled. The digests live beside the files,
    so this stops tampering with the weights alone, not a writer who rewrites both: only the run's
    own jobs may write its storage (docs/training.md). Shared weights travel as safetensors.
    """
    directory = Path(directory)
    if not (directory / CKPT_TAG).is_dir():  # DeepSpeed would fail with a bare assert
        raise FileNotFoundError(f"no ctvlp DeepSpeed checkpoint (tag {CKPT_TAG!r}) in {directory}")
    if verify:
        verify_files(directory)  # before DeepSpeed's torch.load(weights_only=False) unpickles anything
    path, client = engine.load_checkpoint(str(directory), tag=CKPT_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None or not client or TRAIN_STATE_KEY not in client:
        raise FileNotFoundError(f"no ctvlp DeepSpeed checkpoint (tag {CKPT_TAG!r}) in {directory}")
    rank = dist.get_rank() if dist.is_initialized() else 0
    own, first = directory / f"digest_rank{rank}.json", directory / "digest_rank0.json"
    if verify and own.is_file() and first.is_file():
        got = state_digest(engine)
        # Every rank restores the model from rank 0's file (mp_rank_00): compare with rank 0's
        # digest. Buffers such as BatchNorm statistics are per-rank (DeepSpeed does not sync them),
        # so rank r's own model digest at save time need not equal what it restores.
        want = {"model_sha256": json.loads(first.read_text())["model_sha256"],
                "optimizer_sha256": json.loads(own.read_text())["optimizer_sha256"]}
        if want != got:
            raise RuntimeError(f"rank {rank}: restored state differs from the checkpoint's digest ({want} != {got})")
    return TrainState(**client[TRAIN_STATE_KEY])


# ------------------------------------------------------------------------------------- export
def export_safetensors(module: torch.nn.Module, out_dir: str | Path, config: Mapping[str, Any],
                       name: str = "model") -> Path:
    """Write ``<name>.safetensors`` (weights as float32 CPU tensors) and ``<name>.json`` (config).

    Tied tensors are handled by ``safetensors.torch.save_model``. Returns the weights path.
    Under ZeRO 1/2 every rank holds the full module, so rank 0 alone can call this.
    """
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.safetensors"
    # A float32 CPU copy: bf16/GPU engines export in fp32, and the live module stays where it is.
    save_model(copy.deepcopy(module).float().cpu(), str(path))
    (out / f"{name}.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
    return path


def load_safetensors(module: torch.nn.Module, path: str | Path, *, strict: bool = True) -> torch.nn.Module:
    """Load weights written by :func:`export_safetensors` (no pickle involved). Returns ``module``."""
    from safetensors.torch import load_model

    missing, unexpected = load_model(module, str(path), strict=strict)
    if strict and (missing or unexpected):  # load_model raises already; keep the contract explicit
        raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")
    return module
