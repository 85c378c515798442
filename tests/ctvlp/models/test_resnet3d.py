"""3D ResNet encoder: stage grids = ceil(size / stride), shortcut A, layouts, init, checkpointing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctvlp.models.resnet3d import (
    STAGE_STRIDES,
    MultiScaleTokenEncoder,
    ResNet3dBackbone,
    ShortcutA,
    stage_grid_shapes,
)


@pytest.mark.parametrize(
    "depth, width, size",
    [
        ("debug", 8, (32, 32, 32)),
        ("debug", 8, (17, 33, 40)),  # not divisible by any stride
        (18, 4, (16, 64, 32)),
        (18, 4, (9, 31, 45)),
    ],
)
def test_token_shapes_equal_ceil_grid(depth, width, size):
    enc = MultiScaleTokenEncoder(depth, width, token_dim=12).eval()
    with torch.no_grad():
        tokens, grids = enc(torch.rand(2, 1, *size))
    expected = [tuple(-(-n // s) for n, s in zip(size, st)) for st in STAGE_STRIDES]
    assert grids == expected == stage_grid_shapes(size)
    for t, g in zip(tokens, grids):
        assert t.shape == (2, g[0] * g[1] * g[2], 12)


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("size", [(17, 33, 40), (48, 64, 64)])
def test_stem_kernel_keeps_the_grids(kernel, size):
    enc = MultiScaleTokenEncoder("debug", 4, token_dim=8, in_channels=2, stem_kernel=kernel).eval()
    assert enc.backbone.conv1.kernel_size == (kernel,) * 3
    assert enc.backbone.conv1.weight.shape == (4, 2, kernel, kernel, kernel)
    with torch.no_grad():
        _, grids = enc(torch.rand(1, 2, *size))
    assert grids == stage_grid_shapes(size)


@pytest.mark.parametrize("kernel", [0, 4, -3])
def test_stem_kernel_must_be_odd_and_positive(kernel):
    with pytest.raises(ValueError, match="stem_kernel"):
        ResNet3dBackbone("debug", 4, stem_kernel=kernel)


@pytest.mark.parametrize(
    "depth, channels",
    [("debug", (8, 16, 32, 64)), (18, (8, 16, 32, 64)), (34, (8, 16, 32, 64)), (50, (32, 64, 128, 256))],
)
def test_stage_channels_and_blocks(depth, channels):
    net = ResNet3dBackbone(depth, width=8)
    assert net.stage_channels == channels
    with torch.no_grad():
        outs = net.eval()(torch.rand(1, 1, 16, 32, 32))
    assert [o.shape[1] for o in outs] == list(channels)


def test_resnet18_paper_width_parameter_count():
    # ~33 M parameters for the released ResNet-18 (shortcut A has none).
    n = sum(p.numel() for p in ResNet3dBackbone(18, 64).parameters())
    assert 32.5e6 < n < 33.5e6


def test_layer3_layer4_are_strided_and_dilated():
    net = ResNet3dBackbone(18, 8)
    first = [layer[0].conv1 for layer in net.layers]
    assert [c.stride for c in first] == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert [c.dilation for c in first] == [(1, 1, 1), (1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert [c.padding for c in first] == [(1, 1, 1), (1, 1, 1), (2, 2, 2), (4, 4, 4)]
    assert net.conv1.stride == (1, 2, 2) and net.conv1.kernel_size == (7, 7, 7)


def test_shortcut_a_matches_released_formula_and_keeps_gradient():
    x = torch.randn(2, 4, 5, 6, 7, requires_grad=True)
    out = ShortcutA(planes=8, stride=2)(x)
    # released: avg_pool3d(kernel 1, stride) then concat zero channels
    pooled = F.avg_pool3d(x, kernel_size=1, stride=2)
    ref = torch.cat([pooled, torch.zeros(2, 4, *pooled.shape[2:])], dim=1)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad[:, :, ::2, ::2, ::2].eq(1).all() and x.grad.sum() == pooled.numel()


def test_kaiming_fan_out_init():
    conv = ResNet3dBackbone(18, 16).layers[3][1].conv1  # [128, 128, 3, 3, 3]
    expected = (2.0 / (conv.out_channels * 27)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.05


def test_channels_last_3d_equal_and_tokens_free_view():
    torch.manual_seed(0)
    enc = MultiScaleTokenEncoder("debug", 8, 16).eval()
    x = torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        ref, _ = enc(x)
        enc_cl = enc.to(memory_format=torch.channels_last_3d)
        out, _ = enc_cl(x.contiguous(memory_format=torch.channels_last_3d))
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_channels_last_tokens_are_a_free_view_on_gpu():
    # On CPU, single-threaded oneDNN may return contiguous conv outputs; cuDNN keeps channels_last.
    enc = MultiScaleTokenEncoder("debug", 8, 16).cuda().eval().to(memory_format=torch.channels_last_3d)
    x = torch.rand(2, 1, 16, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        out, _ = enc(x)
    assert all(t.is_contiguous() for t in out)


def test_gradient_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    plain = MultiScaleTokenEncoder("debug", 8, 16)
    ckpt = MultiScaleTokenEncoder("debug", 8, 16, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 16, 32, 32)
    losses = []
    for enc in (plain, ckpt):
        tokens, _ = enc(x)
        loss = sum(t.square().mean() for t in tokens)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize(
    "kwargs, error",
    [({"depth": 101}, ValueError), ({"depth": 18, "width": 0}, ValueError),
     ({"depth": 18, "shortcut_type": "C"}, ValueError)],
)
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        ResNet3dBackbone(**kwargs)


def test_bad_input_rank_raises():
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        ResNet3dBackbone("debug", 4)(torch.rand(1, 16, 16, 16))
