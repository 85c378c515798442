"""Phase exports: named model parts as ``model.safetensors`` + ``config.json`` (never pickles).

An export directory holds the tensors of one or more *parts* (top-level entries of a task's
``nn.ModuleDict``: ``vision``, ``text``, ``temperature``, ``vqvae``, ``perception``), each
tensor key prefixed with its part name, and a JSON config with the settable job spec, the phase,
the parts, the git commit and the package version. A later phase loads a part strictly: every
tensor the part needs must be there with the same shape, and nothing else of that part.
Loading reads only safetensors and JSON, so an untrusted export cannot run code.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ctvlp

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def git_commit() -> str:
    """The commit of the checkout this package was imported from, or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def save_parts(
    modules: nn.ModuleDict, parts: tuple[str, ...], out_dir: str | Path, config: dict[str, Any]
) -> Path:
    """Write ``parts`` of ``modules`` to ``out_dir``; ``config`` is stored under ``"spec"``.
    Floating tensors are written as float32 whatever dtype the live module holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for part in parts:
        if part not in modules:
            raise ValueError(f"cannot export part {part!r}: the model has {sorted(modules.keys())}")
        for key, value in modules[part].state_dict().items():
            # clone: safetensors refuses tensors that share storage (tied weights, views)
            value = value.detach().to("cpu").contiguous().clone()
            # float32 whatever the training precision (docs/DESIGN.md, Precision)
            tensors[f"{part}.{key}"] = value.float() if value.is_floating_point() else value
    save_file(tensors, str(out / WEIGHTS))
    meta = {"parts": list(parts), "git_commit": git_commit(), "ctvlp_version": ctvlp.__version__}
    (out / CONFIG).write_text(json.dumps({**meta, **config}, indent=2, sort_keys=True))
    return out


def read_config(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir} is not a ctvlp export: {CONFIG} is missing")
    return json.loads(path.read_text())


def load_part(module: nn.Module, part: str, export_dir: str | Path, source_part: str | None = None) -> None:
    """Load ``source_part`` (default ``part``) of the export into ``module``, strictly.

    Raises ValueError naming the export, the part and the mismatching keys or shapes.
    """
    source_part = source_part or part
    config = read_config(export_dir)
    if source_part not in config.get("parts", []):
        raise ValueError(
            f"export {str(export_dir)!r} has no part {source_part!r}; it holds {config.get('parts')}"
        )
    prefix = source_part + "."
    state = {
        k[len(prefix):]: v for k, v in load_file(str(Path(export_dir) / WEIGHTS)).items() if k.startswith(prefix)
    }
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise ValueError(
            f"part {source_part!r} of export {str(export_dir)!r} does not fit {part!r}: "
            f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatch {sorted(shapes)[:5]} "
            "(was it trained with another model spec?)"
        )
    module.load_state_dict(state, strict=True)
