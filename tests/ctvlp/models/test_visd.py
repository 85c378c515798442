"""VisionModel: encoder + flags + token_transform hook + pooling, built from spec.model."""

from __future__ import annotations

import pytest
import torch

from ctvlp.models.visd import VisionModel, build_vision_model


def _batch(b=2, size=(24, 40, 48), m=3):
    image = torch.rand(b, 1, *size)
    mask = torch.zeros(b, *size, dtype=torch.long)
    mask[:, 4:12, 8:20, 8:24] = 1  # interior: intact
    mask[:, 0:6, 20:30, 30:40] = 2  # touches d=0
    mask[0, 14:20, 10:30, 26:44] = 3  # anatomy 3 only in sample 0
    return image, mask


def test_forward_shapes_and_masks():
    torch.manual_seed(0)
    model = VisionModel(3, "debug", width=8, token_dim=16, embed_dim=12, pool_heads=4).eval()
    image, mask = _batch()
    with torch.no_grad():
        out = model(image, mask)
    assert [t.shape[1] for t in out["tokens"]] == [f.shape[-1] for f in out["flags"]]
    assert out["grids"] == [(12, 10, 12), (6, 5, 6), (3, 3, 3), (2, 2, 2)]
    assert out["embeds"].shape == (2, 3, 12)
    assert out["valid"].tolist() == [[True, True, True], [True, True, False]]
    assert out["intact"].tolist() == [[True, False, True], [True, False, False]]
    assert torch.equal(out["embeds"][1, 2], torch.zeros(12))


def test_token_transform_replaces_tokens_before_pooling():
    torch.manual_seed(0)
    model = VisionModel(3, "debug", 8, 16, 12, 4).eval()
    image, mask = _batch()
    seen = {}

    def boost_last_level(tokens, flags):
        seen["shapes"] = [t.shape for t in tokens], [f.shape for f in flags]
        return tokens[:-1] + [tokens[-1] * 0 + 1.0]

    with torch.no_grad():
        base = model(image, mask)
        boosted = model(image, mask, token_transform=boost_last_level)
    assert seen["shapes"] == ([t.shape for t in base["tokens"]], [f.shape for f in base["flags"]])
    assert torch.equal(boosted["tokens"][-1], torch.ones_like(base["tokens"][-1]))
    assert not torch.allclose(boosted["embeds"], base["embeds"])
    with pytest.raises(ValueError, match="unchanged shapes"):
        model(image, mask, token_transform=lambda t, f: t[:-1])


def test_gradients_reach_encoder_and_queries():
    torch.manual_seed(0)
    model = VisionModel(3, "debug", 8, 16, 12, 4).train()
    image, mask = _batch()
    out = model(image, mask)
    (out["embeds"] * torch.randn_like(out["embeds"])).sum().backward()
    assert model.encoder.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.pooling.query.grad.abs().sum() > 0


def test_shape_mismatch_raises():
    model = VisionModel(3, "debug", 8, 16, 12, 4)
    image, mask = _batch()
    with pytest.raises(ValueError, match="same B, D, H, W"):
        model(image, mask[:, :-1])


def test_build_from_model_spec():
    from ctvlp.config import ModelSpec

    spec = ModelSpec.model_validate({"encoder_depth": "debug", "encoder_width": 8, "token_dim": 32,
                                     "embed_dim": 24, "pool_heads": 4})
    model = build_vision_model(spec, num_anatomies=5, gradient_checkpointing=True)
    assert model.encoder.backbone.stage_channels == (8, 16, 32, 64)
    assert model.pooling.query.shape == (5, 32) and model.pooling.proj_weight.shape == (5, 32, 24)
    assert model.encoder.backbone.gradient_checkpointing
    assert model.encoder.backbone.conv1.kernel_size == (7, 7, 7)  # the paper's stem by default
    small = build_vision_model(spec.model_copy(update={"stem_kernel": 3}), num_anatomies=5)
    assert small.encoder.backbone.conv1.kernel_size == (3, 3, 3)


def test_window_channels_clip_each_window():
    from ctvlp.models.visd import WindowChannels, stored_windows

    # stored window [-1000, 1000] HU: 0 HU is 0.5, 240 HU is 0.62; soft-tissue window [-160, 240]
    (lo, hi), = stored_windows([(-160.0, 240.0)], (-1000.0, 1000.0))
    assert (lo, hi) == pytest.approx((0.42, 0.62))
    win = WindowChannels([(0.0, 1.0), (lo, hi)])
    hu = torch.tensor([-1000.0, -160.0, 0.0, 40.0, 240.0, 1000.0])
    out = win(((hu + 1000) / 2000).view(1, 1, 1, 1, -1))
    assert out.shape == (1, 2, 1, 1, 6)
    assert torch.allclose(out[0, 0].flatten(), (hu + 1000) / 2000)  # the full window is unchanged
    assert torch.allclose(out[0, 1].flatten(), torch.tensor([0.0, 0.0, 0.4, 0.5, 1.0, 1.0]), atol=1e-6)
    with pytest.raises(ValueError, match="lo < hi"):
        WindowChannels([(0.6, 0.4)])


def test_input_windows_feed_a_multichannel_stem_and_need_the_stored_window():
    from ctvlp.config import load_spec

    spec = load_spec(None, ["data.preset=demo", "model.encoder_depth=debug", "model.encoder_width=8",
                            "model.token_dim=16", "model.embed_dim=12",
                            "model.input_windows=[[-1000, 1000], [-160, 240]]"])
    with pytest.raises(ValueError, match="hu_window"):
        build_vision_model(spec.model, 3)
    model = build_vision_model(spec.model, 3, hu_window=spec.data.hu_window).eval()
    assert model.encoder.backbone.conv1.weight.shape[1] == 2
    image, mask = _batch()
    with torch.no_grad():
        out = model(image, mask)
    assert out["embeds"].shape == (2, 3, 12)
    # the window constants are derived from the spec, not weights: an export holds none of them
    assert not any("windows" in k for k in model.state_dict())


def test_token_encoding_outside_forward_applies_the_input_windows():
    """Phase 3/4 and the token cache encode tokens without pooling (models.boost.encode_tokens):
    with input_windows set they must see the same windowed channels as forward."""
    from ctvlp.models.boost import encode_tokens

    torch.manual_seed(0)
    model = VisionModel(3, "debug", 8, 16, 12, 4, input_windows=[(0.0, 1.0), (0.42, 0.62)]).eval()
    image, mask = _batch()
    with torch.no_grad():
        full = model(image, mask)
        enc = encode_tokens(model, image, mask)
    for a, b in zip(full["tokens"], enc["tokens"]):
        assert torch.equal(a, b)
