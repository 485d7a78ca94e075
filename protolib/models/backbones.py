"""Backbones: ``(B, C, H, W)`` images → ``(B, out_dim)`` embeddings, registered in ``MODELS``.

Every registered factory takes the keyword-only ``in_shape`` ``(C, H, W)`` plus its own
options and returns an ``nn.Module`` with an integer attribute ``out_dim``. Registered
names: ``mlp``, ``cnn_small``, ``resnet18_cifar``, ``preact_resnet18_cifar``,
``resnet32_cifar``;
:func:`build_backbone` also accepts ``timm:<name>`` for any timm model (random weights).

Each registered model declares its training cost per sample and view (forward and
backward), on the slow side, as the facts ``gpu_seconds_per_sample`` (one GPU) and
``cpu_seconds_per_sample`` (one CPU core), which :mod:`protolib.resources` turns into a
job's time limit; the margin covers slower devices and shared nodes (a CIFAR ResNet-18
trains at about 32 images/s on one core of a 2-core VM, ``benchmarks/README.md``).

The two ResNet-18s use the CIFAR stem of MATH.md §7 (3×3 convolution, stride 1, no
max-pool) and end in a global average pool with no projection and no classifier.
``resnet32_cifar`` is the long-tail papers' backbone (LDAM-DRW, BCL; the preset
``configs/long_tail.yaml``): He et al. (2016) §4.2 with n = 5, 16/32/64 channels, the
parameter-free shortcut ("option A") and 64-d output.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from protolib.registry import MODELS, RegistryError

TIMM_PREFIX = "timm:"

#: training seconds per sample of a CIFAR ResNet-18 on one GPU and on one CPU core
RESNET18_GPU_COST = 2e-4
RESNET18_CPU_COST = 4e-2
#: the same for the CIFAR ResNet-32 (measured on the CPU, estimated for the GPU; see
#: :func:`resnet32_cifar`)
RESNET32_GPU_COST = 1e-4
RESNET32_CPU_COST = 1e-2

InShape = tuple[int, int, int]


def check_in_shape(in_shape: Sequence[int]) -> InShape:
    """``in_shape`` as a ``(C, H, W)`` tuple of positive ints, or a ``ValueError``."""
    try:
        shape = tuple(in_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(f"in_shape must be (C, H, W), three positive ints; got {in_shape!r}")
    return shape  # type: ignore[return-value]


def _check_widths(name: str, widths: Sequence[int], *, allow_empty: bool) -> tuple[int, ...]:
    values = tuple(widths)
    if (not values and not allow_empty) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in values
    ):
        raise ValueError(f"{name} must be a sequence of positive ints; got {widths!r}")
    return values


def _check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _checked(
    cls: type[nn.Module],
    in_shape: Sequence[int],
    name: str,
    sizes: Sequence[int],
    out_dim: int,
    *,
    allow_empty: bool,
) -> nn.Module:
    """``cls(in_shape, sizes, out_dim)`` after checking each (``name`` names ``sizes``)."""
    return cls(
        check_in_shape(in_shape),
        _check_widths(name, sizes, allow_empty=allow_empty),
        _check_positive("out_dim", out_dim),
    )


def _init_conv_bn(module: nn.Module, mode: str = "fan_out") -> None:
    """He initialisation of convolutions (normal, std ``sqrt(2 / fan)``, ``fan`` the
    kernel's fan-out or fan-in by ``mode``); batch norms start as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


# --------------------------------------------------------------------------- small nets


class MLP(nn.Module):
    """Flatten → ``[Linear, ReLU] × len(widths)`` → ``Linear(out_dim)`` (no final activation)."""

    def __init__(self, in_shape: InShape, widths: Sequence[int], out_dim: int) -> None:
        super().__init__()
        in_features = in_shape[0] * in_shape[1] * in_shape[2]
        layers: list[nn.Module] = [nn.Flatten(1)]
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers.append(nn.Linear(in_features, out_dim))
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim)``."""
        return self.layers(x)


@MODELS.register("mlp", gpu_seconds_per_sample=2e-5, cpu_seconds_per_sample=2e-5)
def mlp(*, in_shape: Sequence[int], widths: Sequence[int] = (512, 512), out_dim: int = 128) -> MLP:
    """A multilayer perceptron on the flattened image (the default for 1×8×8 digits)."""
    return _checked(MLP, in_shape, "widths", widths, out_dim, allow_empty=True)


class SmallCNN(nn.Module):
    """``[Conv3×3, BN, ReLU]`` per entry of ``channels`` (stride 1 for the first, 2 after),
    global average pool, ``Linear(out_dim)``. Works for any image size (8×8 digits,
    32×32 CIFAR): a stride-2 3×3 convolution with padding 1 maps 1×1 to 1×1."""

    def __init__(self, in_shape: InShape, channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = in_shape[0]
        for i, ch in enumerate(channels):
            blocks += [
                _conv3x3(in_ch, ch, stride=1 if i == 0 else 2),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, out_dim)
        self.out_dim = out_dim
        _init_conv_bn(self.features)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim)``."""
        return self.fc(self.pool(self.features(x)).flatten(1))


@MODELS.register("cnn_small", gpu_seconds_per_sample=5e-5, cpu_seconds_per_sample=5e-4)
def cnn_small(
    *, in_shape: Sequence[int], channels: Sequence[int] = (32, 64), out_dim: int = 128
) -> SmallCNN:
    """A small convolutional net for tiny images."""
    return _checked(SmallCNN, in_shape, "channels", channels, out_dim, allow_empty=False)


# --------------------------------------------------------------------------- ResNets


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
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
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
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
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
        stem: list[nn.Module] = [_conv3x3(in_channels, widths[0])]
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
        _init_conv_bn(self)
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
            _conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
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
        _init_conv_bn(self, mode="fan_in")

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


# --------------------------------------------------------------------------- timm


class TimmBackbone(nn.Module):
    """A timm model built with ``num_classes=0`` (pooled features, no classifier)."""

    def __init__(self, name: str, model: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.model = model
        # ``head_hidden_size`` differs from ``num_features`` for models whose head has a
        # hidden layer (e.g. MobileNetV3's conv_head); it is what num_classes=0 outputs.
        width = getattr(model, "head_hidden_size", None) or model.num_features
        self.out_dim = int(width)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim)``."""
        return self.model(x)


def _build_timm(name: str, in_shape: InShape, options: dict[str, Any]) -> TimmBackbone:
    import timm

    if not name or not timm.is_model(name):
        message = f"unknown timm model {name!r} (from '{TIMM_PREFIX}{name}')"
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        if close:
            message += f"; did you mean {', '.join(repr(c) for c in close)}?"
        message += "; timm.list_models() lists the known names"
        raise ValueError(message)
    model = timm.create_model(
        name, pretrained=False, num_classes=0, in_chans=in_shape[0], **options
    )
    return TimmBackbone(name, model)


def build_backbone(name: str, *, in_shape: Sequence[int], **options: Any) -> nn.Module:
    """The backbone called ``name`` for images of shape ``in_shape`` ``(C, H, W)``.

    ``name`` is a name registered in ``MODELS`` or ``timm:<model>`` for any timm model
    (random weights, ``num_classes=0``, ``in_chans=C``; ``options`` go to
    ``timm.create_model``). The result maps ``(B, C, H, W)`` → ``(B, out_dim)`` and has an
    integer ``out_dim``.

    Raises:
        RegistryError: unknown registered name or options the factory does not accept
            (the message lists the known names / accepted options).
        ValueError: an unknown timm model, or a bad ``in_shape``.
    """
    shape = check_in_shape(in_shape)
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        backbone = _build_timm(name[len(TIMM_PREFIX) :], shape, options)
    else:
        try:
            MODELS.get(name)
        except RegistryError as error:
            raise RegistryError(
                f"{error}; or '{TIMM_PREFIX}<name>' for any timm model "
                f"(e.g. '{TIMM_PREFIX}resnet18')"
            ) from None
        backbone = MODELS.create(name, in_shape=shape, **options)
    out_dim = getattr(backbone, "out_dim", None)
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim <= 0:
        raise TypeError(
            f"model {name!r} must build an nn.Module with a positive int attribute out_dim; "
            f"got out_dim={out_dim!r}"
        )
    return backbone
