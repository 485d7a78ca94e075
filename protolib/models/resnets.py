"""The CIFAR ResNets, registered in ``MODELS``: ``resnet18_cifar`` and
``preact_resnet18_cifar`` (the CIFAR stem of MATH.md §7: 3×3 convolution, stride 1, no
max-pool; a global average pool, no projection, no classifier) and ``resnet32_cifar``, the
long-tail papers' backbone (LDAM-DRW, BCL; the preset ``configs/long_tail.yaml``): He et
al. (2016) §4.2 with n = 5, 16/32/64 channels, the parameter-free shortcut ("option A")
and 64-d output. Costs per sample: see :mod:`protolib.models.backbones`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from protolib.models.backbones import check_in_shape, conv3x3, init_conv_bn
from protolib.registry import MODELS

#: training seconds per sample of a CIFAR ResNet-18 on one GPU and on one CPU core
RESNET18_GPU_COST = 2e-4
RESNET18_CPU_COST = 4e-2
#: the same for the CIFAR ResNet-32 (measured on the CPU, estimated for the GPU; see
#: :func:`resnet32_cifar`)
RESNET32_GPU_COST = 1e-4
RESNET32_CPU_COST = 1e-2


class ZeroPadShortcut(nn.Module):
    """He et al. (2016)'s parameter-free shortcut ("option A", the CIFAR ResNets of §4.2):
    ``(B, C, H, W)`` → ``(B, out_ch, ⌈H/s⌉, ⌈W/s⌉)``, keeping every ``stride``-th pixel
    (which a stride-``s`` 3×3 convolution with padding 1 centres on) and padding the
    channels with zeros, half before and half after (LDAM-DRW's ``planes // 4`` on each
    side when the width doubles)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"a zero-padding shortcut cannot narrow {in_ch} to {out_ch} channels")
        self.stride = stride
        self.before = (out_ch - in_ch) // 2
        self.after = out_ch - in_ch - self.before

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_ch, H, W)`` → ``(B, out_ch, ⌈H/stride⌉, ⌈W/stride⌉)``."""
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """Post-activation residual block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    Where the stride or the width changes, the shortcut is a 1×1 convolution and a batch
    norm ("option B"), or with ``zero_pad=True`` a :class:`ZeroPadShortcut` ("option A")."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, zero_pad: bool = False) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if (stride != 1 or in_ch != out_ch) and zero_pad:
            self.shortcut = ZeroPadShortcut(in_ch, out_ch, stride)
        elif stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, identity mappings):
    ``conv(relu(bn(conv(relu(bn(x)))))) + shortcut``, with no activation after the sum.

    A projection shortcut (stride or width change) reads the pre-activated input, as
    in the paper; an identity shortcut reads ``x`` itself."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


RESNET18_WIDTHS = (64, 128, 256, 512)
RESNET18_DEPTHS = (2, 2, 2, 2)


class CifarResNet(nn.Module):
    """ResNet with the CIFAR stem (3×3 conv, stride 1, no max-pool), four stages of
    ``block`` (strides 1, 2, 2, 2), global average pool; output ``(B, widths[-1])``.

    ``preact=True`` builds the pre-activation variant: the stem is a bare convolution
    (its BN and ReLU live in the first block) and the output is the pooled sum of the
    last block, *without* a final BN/ReLU, so it can be negative (MATH.md §7)."""

    def __init__(
        self,
        in_channels: int,
        *,
        preact: bool = False,
        widths: Sequence[int] = RESNET18_WIDTHS,
        depths: Sequence[int] = RESNET18_DEPTHS,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        stem: list[nn.Module] = [conv3x3(in_channels, widths[0])]
        if not preact:
            stem += [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_ch, width, stride))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_ch
        init_conv_bn(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
                elif isinstance(m, PreActBlock):
                    nn.init.zeros_(m.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim)``."""
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x).flatten(1)


@MODELS.register(
    "resnet18_cifar",
    gpu_seconds_per_sample=RESNET18_GPU_COST,
    cpu_seconds_per_sample=RESNET18_CPU_COST,
)
def resnet18_cifar(*, in_shape: Sequence[int], zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-18 (BasicBlocks [2, 2, 2, 2], widths 64–512) with the CIFAR stem; 512-d
    output after the final ReLU and the average pool (so every coordinate is ≥ 0)."""
    shape = check_in_shape(in_shape)
    return CifarResNet(shape[0], preact=False, zero_init_residual=zero_init_residual)


@MODELS.register(
    "preact_resnet18_cifar",
    gpu_seconds_per_sample=RESNET18_GPU_COST,
    cpu_seconds_per_sample=RESNET18_CPU_COST,
)
def preact_resnet18_cifar(
    *, in_shape: Sequence[int], zero_init_residual: bool = False
) -> CifarResNet:
    """Pre-activation ResNet-18 with the CIFAR stem; 512-d output. The last block ends
    without a ReLU, so outputs (and inner products of class means) can be negative
    (MATH.md §7)."""
    shape = check_in_shape(in_shape)
    return CifarResNet(shape[0], preact=True, zero_init_residual=zero_init_residual)


RESNET32_WIDTHS = (16, 32, 64)
RESNET32_BLOCKS = 5  # n of He et al. (2016) §4.2: depth 6n + 2 = 32


class HeCifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016) §4.2, depth ``6n + 2``: a 3×3 convolution to
    ``widths[0]`` channels with BN and ReLU, three stages of ``n`` :class:`BasicBlock`
    (widths 16, 32, 64; stride 2 at the start of stages 2 and 3) with zero-padding
    shortcuts (option A), global average pool; output ``(B, widths[-1])``, ≥ 0 (the last
    block ends in a ReLU). No classifier: the heads are protolib's.

    Initialisation as LDAM-DRW's ``resnet32``: He normal with fan-in (std
    ``sqrt(2 / fan_in)``) for every convolution, batch norms as the identity."""

    def __init__(
        self, in_channels: int, *, n: int = RESNET32_BLOCKS, widths: Sequence[int] = RESNET32_WIDTHS
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, width, stride, zero_pad=True))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_ch
        init_conv_bn(self, mode="fan_in")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim)``."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.pool(x).flatten(1)


@MODELS.register(
    "resnet32_cifar",
    gpu_seconds_per_sample=RESNET32_GPU_COST,
    cpu_seconds_per_sample=RESNET32_CPU_COST,
)
def resnet32_cifar(*, in_shape: Sequence[int]) -> HeCifarResNet:
    """ResNet-32 for CIFAR (He et al. 2016 §4.2, n = 5), the backbone of the long-tail
    papers (LDAM-DRW, BCL): 16/32/64 channels, option-A shortcuts, 0.46 M parameters,
    64-d output.

    Costs: on one core of a busy 2-core AMD EPYC VM, a training step at batch 128 (32×32,
    linear head, SGD) took 6–8 ms per image, a seventh to a tenth of a ResNet-18's
    measured alongside; ``cpu_seconds_per_sample`` = 1e-2 is on the slow side of both.
    The GPU figure is an estimate, not a measurement: half of ResNet-18's, since this
    net has an eighth of its multiply-adds but thin layers that leave a GPU idle."""
    shape = check_in_shape(in_shape)
    return HeCifarResNet(shape[0])
