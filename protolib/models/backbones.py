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

The ResNets are in :mod:`protolib.models.resnets`; :mod:`protolib.models.builtin`
imports both modules, which registers every built-in model.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from protolib.registry import MODELS, RegistryError

TIMM_PREFIX = "timm:"

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


def init_conv_bn(module: nn.Module, mode: str = "fan_out") -> None:
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


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution, padding 1, no bias (a batch norm follows)."""
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
                conv3x3(in_ch, ch, stride=1 if i == 0 else 2),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, out_dim)
        self.out_dim = out_dim
        init_conv_bn(self.features)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, out_dim)``."""
        return self.fc(self.pool(self.features(x)).flatten(1))


@MODELS.register("cnn_small", gpu_seconds_per_sample=5e-5, cpu_seconds_per_sample=5e-4)
def cnn_small(
    *, in_shape: Sequence[int], channels: Sequence[int] = (32, 64), out_dim: int = 128
) -> SmallCNN:
    """A small convolutional net for tiny images."""
    return _checked(SmallCNN, in_shape, "channels", channels, out_dim, allow_empty=False)


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
