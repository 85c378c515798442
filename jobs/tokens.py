"""Cached level-4 tokens for phase 3 (the VQ-VAE trains on tokens, not images).

Phase 3's vision encoder is frozen, so every epoch (and every trial of a K/beta sweep) would
recompute the same tokens. With ``phases.phase3_cached_tokens`` we compute them once per run
(:func:`jobs.launch.run_phase`) or once per sweep (``tune/sweep.py``) with Ray Data
(``map_batches`` over the committed shards with :class:`TokenEncoder`, a callable class that loads
the phase-2 export once per actor) and write one Parquet row per (study, present anatomy):

| column | type | meaning |
|---|---|---|
| study_id, split | string | from the shard |
| anatomy | int64 | j (0-based; mask value j + 1) |
| abnormal | int64 | the report parser's label of anatomy j in that study |
| num_tokens | int64 | L_j, level-4 tokens of anatomy j in its window |
| tokens | binary | float32 ``[L_j, C]`` C-order |

One deterministic window per (study, anatomy): the evaluation window of
:func:`ctvlp.eval.embed.study_windows` (around the anatomy's box, ``data.eval_window``; anatomies
sharing a window share its encoder pass), so
every present anatomy yields an instance (a random train crop would cut many). Only the
anatomy's own tokens are stored: the VQ-VAE is a set model (no positional embedding) whose
attention and loss already ignore the other, masked tokens, so dropping them changes nothing.
Batches pad the token sets back to the longest one (:func:`pad_instances`).

Shape legend: N instances, L tokens, C token dim, B windows in a forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from ctvlp.models.boost import encode_tokens

TOKEN_COLUMNS = ("study_id", "split", "anatomy", "abnormal", "num_tokens", "tokens")
COLLATE_FN = "jobs.tokens:TokenCollate"


@torch.no_grad()
def window_instances(vision, samples: Sequence[dict], roi: Sequence[int], batch_size: int = 8) -> dict[str, list]:
    """Level-4 token sets of every present anatomy of decoded samples (frozen ``vision``).

    Args:
        vision: a :class:`ctvlp.models.visd.VisionModel` in eval mode.
        samples: ``ctvlp.data.decode_sample`` dicts; roi: ``data.eval_window`` (D, H, W).
    Returns:
        columns of :data:`TOKEN_COLUMNS` (lists of N entries; ``tokens`` as float32 bytes).
    """
    from ctvlp.eval.embed import study_windows

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple, list] = defaultdict(list)  # window shape -> [(sample index, [j, ...], image, mask)]
    for i, sample in enumerate(samples):
        for js, img, msk in study_windows(sample, roi):  # anatomies sharing a window share its pass
            groups[img.shape].append((i, js, img, msk))
    out: dict[str, list] = {k: [] for k in TOKEN_COLUMNS}
    device = next(vision.parameters()).device
    for windows in groups.values():
        for b0 in range(0, len(windows), batch_size):
            chunk = windows[b0 : b0 + batch_size]
            image = torch.from_numpy(np.stack([c[2] for c in chunk]))[:, None].to(device)  # [B, 1, D, H, W]
            mask = torch.from_numpy(np.stack([c[3] for c in chunk])).to(device)  # [B, D, H, W]
            enc = encode_tokens(vision, image, mask)
            tok4, flags4 = enc["tokens"][-1].float().cpu(), enc["flags"][-1].cpu()  # [B, L4, C], [B, M, L4]
            for b, (i, js, _, _) in enumerate(chunk):
                for j in js:
                    own = tok4[b][flags4[b, j]]  # [L_j, C]: anatomy j's tokens only
                    if own.shape[0] == 0:
                        raise RuntimeError(f"study {samples[i]['study_id']}: anatomy {j} has no level-4 token "
                                           "in its own window")
                    out["study_id"].append(str(samples[i]["study_id"]))
                    out["split"].append(str(samples[i]["split"]))
                    out["anatomy"].append(j)
                    out["abnormal"].append(int(samples[i]["abnormal"][j]))
                    out["num_tokens"].append(int(own.shape[0]))
                    out["tokens"].append(own.numpy().astype(np.float32).tobytes())
    return out


def pad_instances(tokens: Sequence[bytes], num_tokens: Sequence[int], token_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored token sets -> ``tokens`` [N, L, C] float32 zero-padded to the longest, ``token_mask`` [N, L] bool."""
    n = len(tokens)
    if n != len(num_tokens):
        raise ValueError(f"{n} token sets but {len(num_tokens)} lengths")
    longest = max((int(x) for x in num_tokens), default=1)
    out = torch.zeros(n, longest, token_dim)
    mask = torch.zeros(n, longest, dtype=torch.bool)
    for r, (blob, length) in enumerate(zip(tokens, num_tokens)):
        arr = np.frombuffer(blob, dtype=np.float32)
        if arr.size != int(length) * token_dim:
            raise ValueError(f"row {r}: {arr.size} floats stored, expected {int(length)} x {token_dim}")
        out[r, : int(length)] = torch.from_numpy(arr.reshape(int(length), token_dim).copy())
        mask[r, : int(length)] = True
    return out, mask


def instance_batch(columns: dict[str, Any], token_dim: int) -> dict[str, torch.Tensor]:
    """Columns of cached rows -> phase 3's batch contract (``tokens``, ``token_mask``, ``anatomy``, ``abnormal``)."""
    tokens, mask = pad_instances(list(columns["tokens"]), list(columns["num_tokens"]), token_dim)
    return {"tokens": tokens, "token_mask": mask,
            "anatomy": torch.tensor(np.asarray(columns["anatomy"]), dtype=torch.int64),  # a copy: Ray's
            "abnormal": torch.tensor(np.asarray(columns["abnormal"]), dtype=torch.int64)}  # arrays are read-only


class TokenCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate for cached-token rows (the token dim is read from the bytes)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        lengths = np.asarray(batch["num_tokens"], dtype=np.int64)
        token_dim = len(batch["tokens"][0]) // (4 * int(lengths[0]))
        return instance_batch(batch, token_dim)


class TokenEncoder:
    """Ray Data ``map_batches`` callable class: shard rows -> cached-token rows.

    Args:
        export_dir: local phase-2 (or phase-1) export holding a ``vision`` part; the encoder is
            rebuilt from the export's embedded spec and loaded strictly.
        roi: ``data.eval_window``; batch_size: windows per forward pass; num_threads: torch threads.
    """

    def __init__(self, export_dir: str, roi: Sequence[int], batch_size: int = 8, num_threads: int = 1) -> None:
        from ctvlp.config import spec_from_dict
        from ctvlp.export import load_part, read_config
        from ctvlp.models.visd import build_vision_model

        torch.set_num_threads(max(1, num_threads))
        export_spec = spec_from_dict(read_config(export_dir)["spec"])
        self.vision = build_vision_model(export_spec.model, export_spec.data.num_anatomies,
                                         hu_window=export_spec.data.hu_window)
        load_part(self.vision, "vision", export_dir)
        self.vision.eval().requires_grad_(False)
        self.roi, self.batch_size = tuple(roi), batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ctvlp.data import decode_sample

        samples = [decode_sample({k: batch[k][i] for k in batch}) for i in range(len(batch["study_id"]))]
        cols = window_instances(self.vision, samples, self.roi, self.batch_size)
        return {k: np.asarray(v, dtype=object if k in ("study_id", "split", "tokens") else np.int64)
                for k, v in cols.items()}


def frozen_encoder_uri(resolved: Any) -> str:
    """The export whose ``vision`` part is phase 3's frozen encoder: ``init.vision_encoder``, else
    ``init.aligned_model`` (a phase-2 export holds both), as the spec validator allows."""
    init = resolved.phase(3).init
    uri = init.vision_encoder or init.aligned_model
    if not uri:
        raise ValueError("phase 3 on cached tokens needs phases.phase3.init.vision_encoder (or aligned_model): "
                         "a phase-2 export or 'phase2' after phase 2 has run; its frozen encoder makes the tokens")
    return uri


# ---------------------------------------------------------------------------- the Ray Data side
def parquet_paths(storage, uris: list[str]):
    """(pyarrow filesystem or None, paths) as Ray Data's readers and writers take them."""
    from ingest.storage import is_s3

    if uris and is_s3(uris[0]):
        fs, _ = storage.arrow_fs(uris[0])
        return fs, [storage.fs(u)[1] for u in uris]
    return None, uris


def build_token_cache(spec: Any, export_uri: str, out_uri: str, splits: Sequence[str] = ("train", "valid"),
                      num_cpus: float = 1.0, num_actors: int = 1) -> dict[str, str]:
    """Encode the committed shards of ``splits`` once into cached-token Parquet under ``out_uri``.

    One Ray Data execution (read shards -> :class:`TokenEncoder` actors -> Parquet partitioned by
    split), so each encoder actor starts once.

    Args:
        spec: the (resolved) job spec: shards, storage and ``data.eval_window``.
        export_uri: the export holding the frozen vision encoder (phase 3's ``init.vision_encoder``).
        out_uri: cache root; ``<out_uri>/split=<split>/`` gets the Parquet files and
            ``<out_uri>/_done`` marks a finished cache, which a rerun reuses.
        num_cpus: CPUs of each encoder actor; num_actors: encoder actors (the phase's workers,
            idle until the cache exists).
    Returns ``{split: uri of its Parquet directory}``. Raises ValueError when a split has no shards.
    """
    import ray.data

    from ingest.storage import join
    from jobs.data import read_shards, shard_files, storage_of
    from jobs.evaluate import READ_COLUMNS, fetch_export

    storage = storage_of(spec)
    out = {split: join(out_uri, f"split={split}") for split in splits}
    marker = join(out_uri, "_done")
    if storage.exists(marker) and storage.read_bytes(marker).decode().split() == sorted(splits):
        return out
    files = [f for split in splits for f in shard_files(spec, split, storage)]
    ds = read_shards(files, storage, READ_COLUMNS, shuffle=False)
    ds = ds.map_batches(TokenEncoder, batch_size=4, batch_format="numpy", num_cpus=num_cpus,
                        compute=ray.data.ActorPoolStrategy(size=num_actors),
                        fn_constructor_kwargs={"export_dir": fetch_export(export_uri, storage),
                                               "roi": tuple(spec.data.eval_window),
                                               "num_threads": max(1, int(num_cpus))})
    dest_fs, (dest_path,) = parquet_paths(storage, [out_uri])
    ds.write_parquet(dest_path, filesystem=dest_fs, partition_cols=["split"])
    missing = [s for s, uri in out.items() if not storage.list_files(uri, ".parquet")]
    if missing:
        raise ValueError(f"splits {missing} yielded no anatomy instance (no present anatomy in their studies)")
    storage.write_bytes(marker, " ".join(sorted(splits)).encode())
    return out


def read_token_table(uri: str, storage) -> "Any":
    """A cached split as one ``pyarrow.Table`` (the validation set a trial scores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = storage.fs(uri)
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        raise ValueError(f"no cached-token Parquet files under {uri}")
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables)
