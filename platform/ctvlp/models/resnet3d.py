"""MedicalNet-style 3D ResNet with multi-scale token outputs (ViSD-Boost vision encoder).

Follows the released ViSD-Boost backbone (``lavis/utils/resnet.py`` + ``vit.py``, see
docs/method.md section 1): a k7 stem with stride (1, 2, 2), a k3/s2 max-pool, then four stages
with strides 1, 2, 2, 2 where layer3 and layer4 are *both* strided and dilated (2 and 4), unlike the
original MedicalNet. Each stage output is projected to ``token_dim`` by a 1x1x1 conv and flattened
to tokens ``[B, L_s, C]``. Stage strides relative to the input (D, H, W) are
(2,4,4), (4,8,8), (8,16,16), (16,32,32), and each stage grid is ``ceil(size / stride)`` per axis.

Why not ``monai.networks.nets.ResNet``: MONAI 1.6's ``ResNetBlock``/``ResNetBottleneck`` have no
dilation argument (their 3x3x3 convs are fixed at padding 1, dilation 1), and ``ResNet.forward``
returns only the pooled classifier output, not the four stage maps. Both are essential here, so
the ~100 lines below are written by hand (mirroring MONAI's/MedicalNet's structure and init). It
also keeps the GPU bench free of a MONAI dependency.

Differences from the released code (documented, deliberate):
- Shortcut type A (parameter-free: strided subsampling + zero channel padding) keeps the gradient.
  The released ``downsample_basic_block`` wraps ``out.data`` in ``Variable``, which silently
  detaches the identity path at every stage transition; that looks like a legacy-PyTorch artefact,
  not a design choice, so we do not copy it.
- Optional activation checkpointing per stage (``torch.utils.checkpoint``, non-reentrant). Note
  that BatchNorm running statistics are updated again during recomputation (a known, minor effect).

Shape legend: B batch, C channels, D/H/W spatial, L tokens.

Precision (docs/DESIGN.md): float32 weights and BatchNorm statistics; under bf16 autocast the
convolutions compute in bf16 and the tokens come out bf16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# depth -> (block type, blocks per stage); "debug" is a tiny 1-1-1-1 BasicBlock net for CPU tests.
_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "debug": ("basic", (1, 1, 1, 1)),
    "10": ("basic", (1, 1, 1, 1)),
    "18": ("basic", (2, 2, 2, 2)),
    "34": ("basic", (3, 4, 6, 3)),
    "50": ("bottleneck", (3, 4, 6, 3)),
}
STAGE_STRIDES: tuple[tuple[int, int, int], ...] = ((2, 4, 4), (4, 8, 8), (8, 16, 16), (16, 32, 32))
_STAGE_DILATIONS = (1, 1, 2, 4)
_STAGE_STEPS = (1, 2, 2, 2)  # stride of each stage's first block (relative to its input)


def stage_grid_shapes(spatial: Sequence[int]) -> list[tuple[int, int, int]]:
    """Token grid (D, H, W) of each stage for an input of size ``spatial`` = (D, H, W).

    Every conv/pool in the net maps n -> ceil(n / step), so the grid is ceil(size / stride).
    """
    if len(spatial) != 3:
        raise ValueError(f"spatial must be (D, H, W), got {tuple(spatial)}")
    return [tuple(-(-n // s) for n, s in zip(spatial, st)) for st in STAGE_STRIDES]  # type: ignore[misc]


def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by ``stride`` and zero-pad channels to ``planes``.

    Equals the released ``avg_pool3d(kernel_size=1, stride)`` + zero concat, but differentiable.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        out = x[:, :, ::s, ::s, ::s]  # [B, Cin, ceil(D/s), ceil(H/s), ceil(W/s)]
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.planes - x.shape[1]))  # pad channel dim


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, shortcut: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv3(cin, planes, stride, dilation), nn.BatchNorm3d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, 1, dilation), nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, shortcut: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv3d(cin, planes, 1, bias=False), nn.BatchNorm3d(planes)
        self.conv2, self.bn2 = _conv3(planes, planes, stride, dilation), nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet3dBackbone(nn.Module):
    """The bare 3D ResNet: ``forward(x [B,1,D,H,W]) -> 4 stage maps [B, C_s, *grid_s]``.

    Args:
        depth: "debug" | 10 | 18 | 34 | 50 (paper Table 6 uses 18/34/50; released code 18).
        width: base channels (64 in the paper); stage channels are width * (1, 2, 4, 8) * expansion.
        shortcut_type: "A" (parameter-free, released default for 18/34) or "B" (1x1x1 conv + BN);
            None picks "A" for BasicBlock nets and "B" for Bottleneck nets (MedicalNet's ResNet-50).
        in_channels: input channels (1 for CT).
        stem_kernel: odd cubic kernel of the stem conv (7 in the paper and MedicalNet). The stem
            runs at the largest grid and its cost grows with kernel^3 * in_channels, so a CPU-size
            model may take 3 (27 vs 343 taps: the debug demo's step ~1.8x faster).
    """

    def __init__(self, depth: str | int = 18, width: int = 64, shortcut_type: str | None = None,
                 in_channels: int = 1, stem_kernel: int = 7) -> None:
        super().__init__()
        key = str(depth)
        if key not in _LAYOUTS:
            raise ValueError(f"encoder depth must be one of {sorted(_LAYOUTS)}, got {depth!r}")
        if width < 1:
            raise ValueError(f"encoder width must be >= 1, got {width}")
        kind, blocks = _LAYOUTS[key]
        block = BasicBlock if kind == "basic" else Bottleneck
        shortcut_type = shortcut_type or ("A" if kind == "basic" else "B")
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be an odd int >= 1, got {stem_kernel}")
        # padding k // 2 keeps every grid at ceil(size / stride) (stage_grid_shapes) for any odd k
        self.conv1 = nn.Conv3d(in_channels, width, stem_kernel, stride=(1, 2, 2), padding=stem_kernel // 2,
                               bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self._cin = width
        self.layers = nn.ModuleList(
            self._make_layer(block, width * 2**i, n, _STAGE_STEPS[i], _STAGE_DILATIONS[i], shortcut_type)
            for i, n in enumerate(blocks)
        )
        self.stage_channels = tuple(width * 2**i * block.expansion for i in range(4))
        self.gradient_checkpointing = False
        self._init_weights()

    def _make_layer(self, block, planes, n, stride, dilation, shortcut_type) -> nn.Sequential:
        cout = planes * block.expansion
        shortcut = None
        if stride != 1 or self._cin != cout:
            if shortcut_type == "A":
                shortcut = ShortcutA(cout, stride)
            else:
                shortcut = nn.Sequential(nn.Conv3d(self._cin, cout, 1, stride=stride, bias=False),
                                         nn.BatchNorm3d(cout))
        layers = [block(self._cin, planes, stride, dilation, shortcut)]
        self._cin = cout
        layers += [block(cout, planes, 1, dilation, None) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # Kaiming-normal fan_out as the released resnet.py (and MONAI's ResNet); BN to identity.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, C_in, D, H, W] -> [x1, x2, x3, x4], x_s: [B, stage_channels[s], *grid_s]."""
        if x.ndim != 5:
            raise ValueError(f"expected image [B, C, D, H, W], got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            outs.append(x)
        return outs


class MultiScaleTokenEncoder(nn.Module):
    """Backbone + per-stage 1x1x1 projection to ``token_dim`` + flatten to tokens.

    ``forward(image [B,C_in,D,H,W]) -> (tokens, grids)`` (C_in = ``in_channels``, 1 for CT) with
    ``tokens[s]: [B, L_s, token_dim]``
    (L_s = prod(grids[s]), row-major over (D, H, W) like ``flatten(2)``) and ``grids[s]`` the
    stage's (D, H, W) grid. Under ``channels_last_3d`` the flatten is a free view.
    """

    def __init__(self, depth: str | int = 18, width: int = 64, token_dim: int = 256,
                 shortcut_type: str | None = None, gradient_checkpointing: bool = False,
                 in_channels: int = 1, stem_kernel: int = 7) -> None:
        super().__init__()
        if token_dim < 1:
            raise ValueError(f"token_dim must be >= 1, got {token_dim}")
        self.backbone = ResNet3dBackbone(depth, width, shortcut_type, in_channels, stem_kernel)
        self.backbone.gradient_checkpointing = gradient_checkpointing
        self.proj = nn.ModuleList(nn.Conv3d(c, token_dim, 1) for c in self.backbone.stage_channels)
        self.token_dim = token_dim

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
        tokens, grids = [], []
        for fmap, proj in zip(self.backbone(image), self.proj):
            f = proj(fmap)  # [B, C, d, h, w]
            grids.append(tuple(f.shape[2:]))
            # [B, C, d, h, w] -> [B, d*h*w, C]: a view for channels_last_3d, a copy otherwise.
            tokens.append(f.permute(0, 2, 3, 4, 1).reshape(f.shape[0], -1, f.shape[1]))
        return tokens, grids
