"""Anatomy token membership flags and intactness (ViSD-Boost sec. 3.1, released ``vit.py``).

A token of stage s belongs to anatomy j if *any* voxel of j lies in the token's receptive block
``[i * stride_s, (i + 1) * stride_s)`` per axis: the one-hot mask max-pooled with kernel = stride
(released code). Sizes not divisible by the stride are zero-padded at the far end, so the flag grid
is ``ceil(size / stride)``, equal to the conv grid of ``resnet3d`` (every layer there maps
n -> ceil(n / step)).

An anatomy counts for a sample only if it is present and intact: no voxel of it on any of the six
faces of the crop (fVLM ``blip_pretrain.py:123-143``; the paper: "only complete organs").

Memory: at the paper's size (B=12, 96x256x384, M=36) a full one-hot is 4 G booleans. We build
the finest flag grid by scattering each voxel's (anatomy, block) pair, in sample chunks bounded by
``chunk_voxels``, and derive each coarser stage from the previous one (block-any is composable because every stride divides
the next one and ceil(ceil(n/a)/b) = ceil(n/(ab))). No loop over samples or single anatomies.

Shape legend: B batch, M anatomies, L tokens, D/H/W voxels.

Precision (docs/DESIGN.md): integer and boolean flags only; no floating state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ctvlp.models.resnet3d import STAGE_STRIDES

Stride = tuple[int, int, int]


def _validate_mask(mask: torch.Tensor, num_anatomies: int) -> None:
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
        raise ValueError(f"mask must be a [B, D, H, W] tensor, got {getattr(mask, 'shape', type(mask))}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex or mask.dtype == torch.bool:
        raise TypeError(f"mask must hold integer anatomy ids, got dtype {mask.dtype}")
    if num_anatomies < 1:
        raise ValueError(f"num_anatomies must be >= 1, got {num_anatomies}")
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > num_anatomies:
        raise ValueError(f"mask values must lie in [0, {num_anatomies}] (0 = background), got [{lo}, {hi}]")


def _block_any(x: torch.Tensor, k: Sequence[int]) -> torch.Tensor:
    """Block-wise any: x [B, M, D, H, W] bool -> [B, M, ceil(D/k0), ceil(H/k1), ceil(W/k2)]."""
    b, m, d, h, w = x.shape
    pad = [(-n) % s for n, s in zip((d, h, w), k)]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))  # False = "no voxel of j" in the pad
    d, h, w = (n + p for n, p in zip((d, h, w), pad))
    x = x.view(b, m, d // k[0], k[0], h // k[1], k[1], w // k[2], k[2])
    return x.any(dim=(3, 5, 7))


def _finest_grid(mask: torch.Tensor, num_anatomies: int, stride: Stride, chunk_voxels: int) -> torch.Tensor:
    """Stage-1 flags [B, M, *ceil(DHW / stride)] by scattering each voxel's (anatomy, block) pair.

    Equal to the one-hot max-pool, but it reads each voxel once instead of M times (a one-hot over
    16 anatomies cost ~15% of a CPU demo step). The int64 scatter indices of at most
    ``chunk_voxels // 8`` voxels exist at a time (8 bytes each: the one-hot's byte bound).
    """
    bsz, d, h, w = mask.shape
    grid = [-(-n // k) for n, k in zip((d, h, w), stride)]
    cells = grid[0] * grid[1] * grid[2]
    dev = mask.device
    axes = [torch.arange(n, device=dev) // k for n, k in zip((d, h, w), stride)]
    block = (axes[0].view(-1, 1, 1) * (grid[1] * grid[2]) + axes[1].view(1, -1, 1) * grid[2]
             + axes[2].view(1, 1, -1)).reshape(1, -1)  # [1, DHW] cell of each voxel
    out = torch.zeros(bsz, (num_anatomies + 1) * cells, dtype=torch.bool, device=dev)
    per = max(1, chunk_voxels // (8 * d * h * w))  # samples per chunk
    for b0 in range(0, bsz, per):
        ids = mask[b0:b0 + per].reshape(-1, d * h * w).long()
        out[b0:b0 + per].scatter_(1, ids * cells + block, True)  # row j + 1 = anatomy j; 0 = background
    return out.view(bsz, num_anatomies + 1, *grid)[:, 1:]


def flag_grids(
    mask: torch.Tensor,
    num_anatomies: int,
    strides: Sequence[Stride] = STAGE_STRIDES,
    chunk_voxels: int = 2**28,
) -> list[torch.Tensor]:
    """Flag grids per stage: ``[B, M, *ceil(DHW / stride_s)]`` bool (see ``anatomy_token_flags``)."""
    _validate_mask(mask, num_anatomies)
    strides = [tuple(int(v) for v in s) for s in strides]
    for a, b in zip(strides, strides[1:]):
        if any(y % x for x, y in zip(a, b)):
            raise ValueError(f"each stride must divide the next one, got {a} then {b}")
    grids = [_finest_grid(mask, num_anatomies, strides[0], chunk_voxels)]
    for prev, cur in zip(strides, strides[1:]):
        grids.append(_block_any(grids[-1], [c // p for p, c in zip(prev, cur)]))
    return grids


@torch.no_grad()
def anatomy_token_flags(
    mask: torch.Tensor,
    num_anatomies: int,
    strides: Sequence[Stride] = STAGE_STRIDES,
    chunk_voxels: int = 2**28,
) -> list[torch.Tensor]:
    """Token membership per anatomy and stage.

    Args:
        mask: [B, D, H, W] integer grouped ids (0 background, j+1 = anatomy j).
        num_anatomies: M.
        strides: per-stage (D, H, W) stride relative to the input; default the encoder's.
        chunk_voxels: bounds peak memory: scatter indices of at most chunk_voxels // 8 voxels at a time.

    Returns:
        list over stages of bool [B, M, L_s], L_s = prod(ceil(DHW / stride_s)), flattened
        row-major over (D, H, W) exactly like the encoder's tokens.
    """
    return [g.flatten(2) for g in flag_grids(mask, num_anatomies, strides, chunk_voxels)]


@torch.no_grad()
def anatomy_presence(mask: torch.Tensor, num_anatomies: int) -> torch.Tensor:
    """bool [B, M]: anatomy j has >= 1 voxel in the crop (mask [B, D, H, W], j + 1 = anatomy j)."""
    _validate_mask(mask, num_anatomies)
    bsz = mask.shape[0]
    present = torch.zeros(bsz, num_anatomies + 1, dtype=torch.bool, device=mask.device)
    present.scatter_(1, mask.long().reshape(bsz, -1), True)
    return present[:, 1:]


def intact_anatomies(mask: torch.Tensor, num_anatomies: int) -> torch.Tensor:
    """Anatomies present in the crop and touching none of its six faces.

    Args:
        mask: [B, D, H, W] integer grouped ids (0 background, j+1 = anatomy j).
        num_anatomies: M.

    Returns:
        bool [B, M]: True where anatomy j has >= 1 voxel and none on a face of the crop.
    """
    present = anatomy_presence(mask, num_anatomies)
    bsz = mask.shape[0]
    ids = mask.long()
    faces = [ids[:, 0], ids[:, -1], ids[:, :, 0], ids[:, :, -1], ids[:, :, :, 0], ids[:, :, :, -1]]
    face_ids = torch.cat([f.reshape(bsz, -1) for f in faces], dim=1)  # [B, 2(HW + DW + DH)]
    touching = torch.zeros(bsz, num_anatomies + 1, dtype=torch.bool, device=mask.device)
    touching.scatter_(1, face_ids, True)
    return present & ~touching[:, 1:]
