"""``boosted_forward`` == a per-(sample, anatomy) reference: released-style MHA of anatomy m's query
over its own level 1-3 tokens plus *its own* boosted level-4 tokens, then Linear_m and L2 norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctvlp import golden
from ctvlp.models.boost import boosted_forward, encode_tokens
from ctvlp.tasks import build_task


def _reference(vision, out: dict, enc: dict) -> torch.Tensor:
    pool = vision.pooling
    b, m = out["valid"].shape
    emb = torch.zeros(b, m, pool.proj_weight.shape[-1])
    for i in range(b):
        for j in range(m):
            if not out["valid"][i, j]:
                continue
            own = [t[i, f[i, j]] for t, f in zip(enc["tokens"][:-1], enc["flags"][:-1])]
            own.append(out["boosted4"][i, j][out["flags4"][i, j]])  # anatomy j's boosted tokens only
            keys = torch.cat(own)[None]  # [1, n, C]
            att, _ = pool.attn(pool.query[j][None, None], keys, keys)
            emb[i, j] = F.normalize(att[0, 0] @ pool.proj_weight[j] + pool.proj_bias[j], dim=-1)
    return emb


def test_boosted_forward_equals_the_per_anatomy_reference():
    torch.manual_seed(0)
    spec = golden.golden_spec(4)
    task = build_task(spec, 4, init={})
    task.module.eval()
    vision = task.module["vision"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial queries (the zero init makes attention uniform)
        for p in (vision.pooling.query, vision.pooling.attn.in_proj_bias):
            p.copy_(torch.randn(p.shape, generator=g))
    batch = golden.golden_batches(spec, 1, 3)[0]
    with torch.no_grad():
        out = boosted_forward(vision, task.module["vqvae"], task.module["perception"], batch["image"], batch["mask"])
        enc = encode_tokens(vision, batch["image"], batch["mask"])
        ref = _reference(vision, out, enc)
    assert out["valid"].sum() >= 6
    torch.testing.assert_close(out["embeds"], ref, rtol=1e-5, atol=1e-5)
