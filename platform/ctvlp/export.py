"""Phase exports: named model parts as ``model.safetensors`` + ``config.json`` (never pickles).

An export directory holds the tensors of one or more *parts* (top-level entries of a task's
``nn.ModuleDict``: ``vision``, ``text``, ``temperature``, ``vqvae``, ``perception``), each
tensor key prefixed with its part name, and a JSON config with the settable job spec, the phase,
the parts, the git commit and the package version. A later phase loads a part strictly: every
tensor the part needs must be there with the same shape, and nothing else of that part.
Loading reads only safetensors and JSON, so an untrusted export cannot run code.

:func:`resolve_export` finds an export by URI the way ``from_pretrained`` does: a local folder, an
``s3://`` prefix (downloaded) or a Hugging Face hub name ``owner/name`` (its snapshot in the hub
cache; downloaded unless ``HF_HUB_OFFLINE=1``). Only the export's files are fetched (JSON,
safetensors, Markdown, YAML), never code, and nothing is loaded with ``trust_remote_code``.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ctvlp

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EXPORT_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.yaml"]  # what a hub snapshot fetches
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


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


# ---------------------------------------------------------------------------------- locating
def download_tree(fs: Any, path: str, dest: str | Path) -> Path:
    """Copy every file under ``path`` of the fsspec filesystem ``fs`` to ``dest`` (kept relative)."""
    dest = Path(dest)
    root = path.rstrip("/")
    for remote in fs.find(root):
        target = dest / remote[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return dest


def resolve_export(uri: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                   s3_endpoint_url: str | None = None) -> Path:
    """A local directory holding the export named by ``uri`` (see the module doc).

    Args:
        uri: a local export folder, ``s3://bucket/prefix`` or a hub name ``owner/name``.
        revision / cache_dir: hub revision (default ``main``) and cache (default the hub's).
        s3_endpoint_url: an S3-compatible endpoint (MinIO, moto); credentials come from the
            environment or the instance role, as everywhere in ctvlp.
    Raises:
        FileNotFoundError naming the URI and what was looked for.
    """
    text = str(uri)
    if text.startswith("s3://"):
        import fsspec

        fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint_url) if s3_endpoint_url else fsspec.filesystem("s3")
        out = download_tree(fs, text[len("s3://"):], tempfile.mkdtemp(prefix="ctvlp-export-"))
    else:
        path = Path(text).expanduser()
        out = path if path.exists() or not HUB_NAME.match(text) else _from_hub(text, revision, cache_dir)
    if not (out / CONFIG).is_file():
        raise FileNotFoundError(f"{text} is not a ctvlp export: no {CONFIG} (expected {CONFIG} + {WEIGHTS}, "
                                "as written by a phase's export or the evaluation job)")
    return out


def _from_hub(name: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=EXPORT_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"hub model {name!r} (revision {revision or 'main'}) is not in the hub cache "
                                f"{cache_dir or '(default)'} and downloads are off (HF_HUB_OFFLINE=1): copy its "
                                "snapshot into the cache, or give a local folder") from exc
