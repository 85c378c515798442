"""Anatomy token flags (max-pool = block contains a voxel) and intactness on hand-built masks."""

from __future__ import annotations

import itertools

import pytest
import torch

from ctvlp.models.resnet3d import STAGE_STRIDES, MultiScaleTokenEncoder
from ctvlp.models.tokens import anatomy_token_flags, flag_grids, intact_anatomies


def _sparse_mask(b, size, m, density, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(1, m + 1, (b, *size), generator=g)
    keep = torch.rand((b, *size), generator=g) < density
    return labels * keep


def _naive_flags(mask, m, stride):
    """flag[b, j, cell] = any voxel == j+1 inside the cell's block [i*s, (i+1)*s) (clipped)."""
    b, *size = mask.shape
    grid = [-(-n // s) for n, s in zip(size, stride)]
    out = torch.zeros(b, m, *grid, dtype=torch.bool)
    for i, j, k in itertools.product(*(range(g) for g in grid)):
        block = mask[:, i * stride[0]:(i + 1) * stride[0], j * stride[1]:(j + 1) * stride[1],
                     k * stride[2]:(k + 1) * stride[2]]
        for a in range(m):
            out[:, a, i, j, k] = (block == a + 1).flatten(1).any(1)
    return out.flatten(2)


@pytest.mark.parametrize(
    "size, m, density, strides",
    [
        ((16, 32, 32), 3, 0.002, STAGE_STRIDES),
        ((20, 37, 45), 4, 0.001, STAGE_STRIDES),  # not divisible: last blocks are partial
        ((7, 9, 11), 2, 0.05, ((1, 2, 2), (2, 2, 4), (4, 4, 8))),
    ],
)
def test_flags_equal_naive_block_definition(size, m, density, strides):
    mask = _sparse_mask(2, size, m, density, seed=1)
    flags = anatomy_token_flags(mask, m, strides)
    assert len(flags) == len(strides)
    for f, s in zip(flags, strides):
        ref = _naive_flags(mask, m, s)
        assert f.dtype == torch.bool and f.shape == ref.shape
        assert torch.equal(f, ref), f"stride {s}"
    assert 0 < flags[0].sum() < flags[0].numel()  # the finest level is not all-False / all-True


def test_chunked_scatter_equals_unchunked():
    mask = _sparse_mask(3, (20, 37, 45), 5, 0.003, seed=2)
    whole = anatomy_token_flags(mask, 5)
    chunked = anatomy_token_flags(mask, 5, chunk_voxels=1)  # one sample per chunk
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


@pytest.mark.parametrize("size", [(32, 32, 32), (17, 33, 40), (9, 70, 37)])
def test_flag_grid_equals_token_grid(size):
    enc = MultiScaleTokenEncoder("debug", 4, 8).eval()
    with torch.no_grad():
        tokens, grids = enc(torch.rand(1, 1, *size))
    flag_g = flag_grids(torch.zeros(1, *size, dtype=torch.long), 2)
    assert [tuple(g.shape[2:]) for g in flag_g] == grids
    assert [f.shape[-1] for f in anatomy_token_flags(torch.zeros(1, *size, dtype=torch.long), 2)] \
        == [t.shape[1] for t in tokens]


def test_single_voxel_lands_in_its_block_at_every_level():
    mask = torch.zeros(1, 32, 64, 64, dtype=torch.long)
    mask[0, 9, 40, 13] = 2
    flags = flag_grids(mask, 2)
    for g, s in zip(flags, STAGE_STRIDES):
        assert g[0, 0].sum() == 0 and g[0, 1].sum() == 1
        assert g[0, 1, 9 // s[0], 40 // s[1], 13 // s[2]]


@pytest.mark.parametrize(
    "mask, error",
    [
        (torch.zeros(1, 4, 4, 4), TypeError),  # float
        (torch.full((1, 4, 4, 4), 3), ValueError),  # id > M
        (torch.full((1, 4, 4, 4), -1), ValueError),
        (torch.zeros(4, 4, 4, dtype=torch.long), ValueError),  # no batch dim
    ],
)
def test_bad_masks_raise(mask, error):
    with pytest.raises(error):
        anatomy_token_flags(mask, 2)
    with pytest.raises(error):
        intact_anatomies(mask, 2)


def test_strides_must_nest():
    with pytest.raises(ValueError, match="divide"):
        anatomy_token_flags(torch.zeros(1, 8, 8, 8, dtype=torch.long), 1, ((2, 2, 2), (3, 4, 4)))


def _box(mask, label, d, h, w):
    mask[d[0]:d[1], h[0]:h[1], w[0]:w[1]] = label


def _case(boxes, size=(10, 12, 14)):
    mask = torch.zeros(size, dtype=torch.long)
    for label, d, h, w in boxes:
        _box(mask, label, d, h, w)
    return mask


INTACT_CASES = [
    ("interior", [(1, (2, 5), (3, 6), (4, 7))], [True, False, False]),
    ("absent", [], [False, False, False]),
    ("touches d=0", [(1, (0, 3), (3, 6), (4, 7))], [False, False, False]),
    ("touches d=end", [(1, (8, 10), (3, 6), (4, 7))], [False, False, False]),
    ("touches h=0", [(2, (2, 5), (0, 6), (4, 7))], [False, False, False]),
    ("touches h=end", [(2, (2, 5), (3, 12), (4, 7))], [False, False, False]),
    ("touches w=0", [(3, (2, 5), (3, 6), (0, 7))], [False, False, False]),
    ("touches w=end", [(3, (2, 5), (3, 6), (4, 14))], [False, False, False]),
    ("one voxel from every face", [(2, (1, 9), (1, 11), (1, 13))], [False, True, False]),
    ("mixed", [(1, (1, 3), (1, 3), (1, 3)), (2, (0, 2), (5, 7), (5, 7)), (3, (5, 9), (5, 11), (8, 13))],
     [True, False, True]),
]


@pytest.mark.parametrize("name, boxes, expected", INTACT_CASES, ids=[c[0] for c in INTACT_CASES])
def test_intact_anatomies_hand_built(name, boxes, expected):
    mask = _case(boxes)
    got = intact_anatomies(mask[None], 3)
    assert got.dtype == torch.bool and got.tolist() == [expected]


def test_intact_is_per_sample():
    masks = torch.stack([_case(c[1]) for c in INTACT_CASES])
    got = intact_anatomies(masks, 3)
    assert got.tolist() == [c[2] for c in INTACT_CASES]
