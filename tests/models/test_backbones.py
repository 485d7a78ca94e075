"""Backbones: every registry entry, the CIFAR ResNets against independent references, timm."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protolib.cli import main
from protolib.models import build_backbone
from protolib.models.resnets import HeCifarResNet, ZeroPadShortcut
from protolib.registry import MODELS, RegistryError

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)
SMALL = (3, 16, 16)  # enough for value checks, cheaper than CIFAR on a busy CPU
ALL_MODELS = [*MODELS.names(), "timm:resnet18"]
CONV_MODELS = [
    "cnn_small",
    "resnet18_cifar",
    "preact_resnet18_cifar",
    "resnet32_cifar",
    "timm:resnet18",
]
BUILTIN_MODELS = ("mlp", "cnn_small", "resnet18_cifar", "preact_resnet18_cifar", "resnet32_cifar")


def first_weight(model: nn.Module) -> torch.Tensor:
    """The weight of the first layer (the first registered matrix/kernel parameter)."""
    return next(p for p in model.parameters() if p.ndim >= 2)


def test_registered_names():
    assert set(BUILTIN_MODELS) <= set(MODELS.names())


def test_each_model_declares_its_training_cost():
    """The costs per sample that resources.py turns into time limits (seconds per sample
    and view; a ResNet-18 trains at about 32 images/s on one CPU core, so 4e-2 is on the
    slow side; a ResNet-32 takes a seventh to a tenth of a ResNet-18's time per sample on
    this CPU, measured side by side)."""
    costs = {
        name: (
            MODELS.fact(name, "gpu_seconds_per_sample"),
            MODELS.fact(name, "cpu_seconds_per_sample"),
        )
        for name in BUILTIN_MODELS
    }
    assert costs == {
        "mlp": (2e-5, 2e-5),
        "cnn_small": (5e-5, 5e-4),
        "resnet18_cifar": (2e-4, 4e-2),
        "preact_resnet18_cifar": (2e-4, 4e-2),
        "resnet32_cifar": (1e-4, 1e-2),
    }


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_shape_finite_and_gradient(name):
    torch.manual_seed(0)
    model = build_backbone(name, in_shape=CIFAR)
    assert isinstance(model, nn.Module) and isinstance(model.out_dim, int)
    x = torch.randn(2, *CIFAR)
    y = model(x)
    assert y.shape == (2, model.out_dim)
    assert torch.isfinite(y).all()
    assert y.std() > 0  # not collapsed to a constant
    y.square().sum().backward()
    grad = first_weight(model).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mlp", "cnn_small"])
def test_small_models_on_digits(name):
    torch.manual_seed(0)
    model = build_backbone(name, in_shape=DIGITS)
    assert model.out_dim == 128  # the default
    y = model(torch.randn(5, *DIGITS))
    assert y.shape == (5, 128) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_deterministic_under_seed(name):
    torch.manual_seed(0)
    a = build_backbone(name, in_shape=CIFAR)
    torch.manual_seed(0)
    b = build_backbone(name, in_shape=CIFAR)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", CONV_MODELS)
def test_channels_last_gives_the_same_output(name):
    torch.manual_seed(0)
    model = build_backbone(name, in_shape=SMALL).eval()
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        y = model(x)
        y_cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(y_cl, y, atol=1e-5, rtol=1e-5)


def test_mlp_matches_explicit_layers():
    torch.manual_seed(0)
    model = build_backbone("mlp", in_shape=DIGITS, widths=(16, 12), out_dim=5)
    assert model.out_dim == 5
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 16), (16, 12), (12, 5)]
    x = torch.randn(3, *DIGITS)
    h = x.reshape(3, 64)
    for i, m in enumerate(linears):
        h = h @ m.weight.T + m.bias
        if i < len(linears) - 1:
            h = h.clamp_min(0)
    torch.testing.assert_close(model(x), h)
    # the last layer is linear: outputs take both signs
    assert (model(x) < 0).any() and (model(x) > 0).any()


def test_mlp_without_hidden_layers_is_linear():
    model = build_backbone("mlp", in_shape=DIGITS, widths=(), out_dim=3)
    assert [type(m) for m in model.modules() if not isinstance(m, nn.Sequential)][1:] == [
        nn.Flatten,
        nn.Linear,
    ]


def test_cnn_small_matches_explicit_ops():
    torch.manual_seed(0)
    model = build_backbone("cnn_small", in_shape=DIGITS, channels=(4, 6, 8), out_dim=7).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    # give the batch norms non-trivial statistics so the check means something
    for bn in bns:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(3, *DIGITS)
    h = x
    for i, (conv, bn) in enumerate(zip(convs, bns, strict=True)):
        h = F.conv2d(h, conv.weight, stride=1 if i == 0 else 2, padding=1)
        h = (h - bn.running_mean[:, None, None]) / torch.sqrt(
            bn.running_var[:, None, None] + bn.eps
        )
        h = (h * bn.weight[:, None, None] + bn.bias[:, None, None]).clamp_min(0)
    assert h.shape[-2:] == (2, 2)  # 8 → 8 → 4 → 2
    fc = model.fc
    expected = h.mean(dim=(2, 3)) @ fc.weight.T + fc.bias
    torch.testing.assert_close(model(x), expected)


# --------------------------------------------------------------------------- ResNet-18


def conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def resnet18_cifar_param_count(preact: bool, in_ch: int = 3) -> int:
    """Parameters of a CIFAR ResNet-18 without fc, counted from the architecture."""
    widths, total = (64, 128, 256, 512), conv_params(in_ch, 64, 3)
    if not preact:
        total += 2 * 64  # stem BN
    cin = 64
    for stage, cout in enumerate(widths):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            total += conv_params(cin, cout, 3) + conv_params(cout, cout, 3)
            # BNs: post-activation bn(cout) twice; pre-activation bn(cin) then bn(cout)
            total += 2 * cout + 2 * (cin if preact else cout)
            if stride != 1 or cin != cout:
                total += conv_params(cin, cout, 1) + (0 if preact else 2 * cout)
            cin = cout
    return total


def torchvision_cifar_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: 3×3 stride-1 conv, no max-pool, no fc."""
    import torchvision  # here, not at collection: it imports torch._dynamo (1.5 s)

    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_cifar_parameter_count():
    model = build_backbone("resnet18_cifar", in_shape=CIFAR)
    assert model.out_dim == 512
    reference = torchvision_cifar_resnet18()
    assert n_params(model) == n_params(reference) == resnet18_cifar_param_count(False)
    assert n_params(model) == 11_168_832  # the well-known figure (11.17 M without fc)


def test_preact_resnet18_cifar_parameter_count():
    model = build_backbone("preact_resnet18_cifar", in_shape=CIFAR)
    assert model.out_dim == 512
    assert n_params(model) == resnet18_cifar_param_count(True)


@pytest.mark.parametrize("name", ["resnet18_cifar", "preact_resnet18_cifar"])
def test_cifar_stem_keeps_resolution_and_has_no_maxpool(name):
    model = build_backbone(name, in_shape=CIFAR)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.kernel_size == (3, 3) and first_conv.stride == (1, 1)
    seen = {}
    stages = {"stem": model.stem, "layer1": model.layer1, "layer4": model.layer4}
    for key, module in stages.items():
        module.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o.shape))
    model(torch.randn(2, *CIFAR))
    assert seen["stem"] == (2, 64, 32, 32)
    assert seen["layer1"] == (2, 64, 32, 32)
    assert seen["layer4"] == (2, 512, 4, 4)


def test_resnet18_cifar_equals_torchvision_with_cifar_stem():
    """Same weights, same function: copy our state into torchvision's (same order)."""
    torch.manual_seed(0)
    model = build_backbone("resnet18_cifar", in_shape=CIFAR)
    reference = torchvision_cifar_resnet18()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
    # perturb the BN statistics so eval mode is not the identity
    for key, value in ours.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean"):
            value.uniform_(-0.3, 0.3)
    reference.load_state_dict(dict(zip(theirs, ours.values(), strict=True)))
    model.eval()
    reference.eval()
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_preact_can_be_negative_and_post_activation_cannot():
    torch.manual_seed(0)
    x = torch.randn(4, *SMALL)
    post = build_backbone("resnet18_cifar", in_shape=SMALL)
    pre = build_backbone("preact_resnet18_cifar", in_shape=SMALL)
    seen = {}
    pre.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("layer4", o))
    with torch.no_grad():
        assert (post(x) >= 0).all()
        out = pre(x)
    assert (out < 0).any() and (out > 0).any()
    # nothing after the last block's sum but the average pool (no final BN/ReLU)
    assert (seen["layer4"] < 0).any()
    torch.testing.assert_close(out, seen["layer4"].mean(dim=(2, 3)))


def test_preact_block_structure():
    """Pre-activation block, identity shortcut: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""
    torch.manual_seed(0)
    model = build_backbone("preact_resnet18_cifar", in_shape=CIFAR).eval()
    block = model.layer2[1]
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 128, 8, 8)

    def bn(h, m):
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.conv2d(F.relu(bn(x, block.bn1)), block.conv1.weight, padding=1)
    h = F.conv2d(F.relu(bn(h, block.bn2)), block.conv2.weight, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + h)


def test_zero_init_residual_makes_identity_blocks():
    model = build_backbone("preact_resnet18_cifar", in_shape=CIFAR, zero_init_residual=True)
    block = model.layer1[0]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_resnet_accepts_other_channel_counts():
    model = build_backbone("resnet18_cifar", in_shape=(1, 8, 8))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 512)


# --------------------------------------------------------------------------- ResNet-32

#: parameters of He et al.'s CIFAR ResNets *with* their 10-class linear layer, as printed
#: by the reference implementation the long-tail code (LDAM-DRW) uses: 0.27 M, 0.46 M, 0.85 M
KNOWN_WITH_FC = {3: 269_722, 5: 464_154, 9: 853_018}
FC10 = 64 * 10 + 10


def he_cifar_resnet_param_count(n: int, in_ch: int = 3) -> int:
    """Parameters of the 6n + 2 CIFAR ResNet without fc, counted from the architecture:
    stem conv + BN, then 3n blocks of two 3×3 convs and two BNs; option-A shortcuts
    have none."""
    total, cin = conv_params(in_ch, 16, 3) + 2 * 16, 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv_params(cin, width, 3) + conv_params(width, width, 3) + 2 * 2 * width
            cin = width
    return total


def reference_resnet32(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """He et al. (2016) §4.2, n = 5, written out with functional ops over ``state``:
    eval-mode batch norms; the option-A shortcut as every other pixel with ``width // 4``
    zero channels concatenated on each side."""

    def bn(h: torch.Tensor, key: str) -> torch.Tensor:
        return F.batch_norm(
            h,
            state[f"{key}.running_mean"],
            state[f"{key}.running_var"],
            state[f"{key}.weight"],
            state[f"{key}.bias"],
            False,
            0.0,
            1e-5,
        )

    h = F.relu(bn(F.conv2d(x, state["stem.0.weight"], padding=1), "stem.1"))
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range(5):
            key = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.conv2d(h, state[f"{key}.conv1.weight"], stride=stride, padding=1)
            out = F.relu(bn(out, f"{key}.bn1"))
            out = bn(F.conv2d(out, state[f"{key}.conv2.weight"], padding=1), f"{key}.bn2")
            shortcut = h
            if stride == 2:
                kept = h[:, :, ::2, ::2]
                zeros = kept.new_zeros(kept.shape[0], width // 4, *kept.shape[2:])
                shortcut = torch.cat([zeros, kept, zeros], dim=1)
            h = F.relu(out + shortcut)
    return h.mean(dim=(2, 3))


def test_resnet32_cifar_parameter_count():
    """0.46 M: the figure of the long-tail papers' ResNet-32 (10-class fc added back),
    and an independent count; the count also reproduces ResNet-20's and ResNet-56's."""
    model = build_backbone("resnet32_cifar", in_shape=CIFAR)
    assert model.out_dim == 64
    assert n_params(model) == he_cifar_resnet_param_count(5) == 463_504
    for n, known in KNOWN_WITH_FC.items():
        assert n_params(HeCifarResNet(3, n=n)) == he_cifar_resnet_param_count(n) == known - FC10


def test_resnet32_cifar_block_structure():
    """3×3 stem to 16 channels; three stages of five basic blocks at 32², 16², 8² with
    16/32/64 channels; 31 convolutions, all 3×3 (the 32nd layer is the head's);
    parameter-free zero-padding shortcuts exactly where the width doubles."""
    model = build_backbone("resnet32_cifar", in_shape=CIFAR)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(c.kernel_size == (3, 3) for c in convs)
    assert convs[0].in_channels == 3 and convs[0].out_channels == 16
    assert convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d | nn.Linear) for m in model.modules())
    pads = [name for name, m in model.named_modules() if isinstance(m, ZeroPadShortcut)]
    assert pads == ["layer2.0.shortcut", "layer3.0.shortcut"]
    for stage in (model.layer1, model.layer2, model.layer3):
        assert len(stage) == 5
        for block in list(stage)[1:]:
            assert isinstance(block.shortcut, nn.Identity)
    assert all(not list(m.parameters()) for m in model.modules() if isinstance(m, ZeroPadShortcut))
    seen = {}
    stages = {"stem": model.stem, "1": model.layer1, "2": model.layer2, "3": model.layer3}
    for key, module in stages.items():
        module.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o.shape))
    y = model(torch.randn(2, *CIFAR))
    assert seen == {
        "stem": (2, 16, 32, 32),
        "1": (2, 16, 32, 32),
        "2": (2, 32, 16, 16),
        "3": (2, 64, 8, 8),
    }
    assert y.shape == (2, 64) and (y >= 0).all()  # the last block ends in a ReLU


def test_resnet32_cifar_equals_the_functional_reference():
    torch.manual_seed(0)
    model = build_backbone("resnet32_cifar", in_shape=CIFAR)
    state = model.state_dict()
    # non-trivial batch norms, so that eval mode is not the identity
    for key, value in state.items():
        if key.endswith("running_var") or (key.endswith(".weight") and value.ndim == 1):
            value.uniform_(0.5, 1.5)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value.uniform_(-0.3, 0.3)
    model.eval()
    x = torch.randn(3, *SMALL)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(y, reference_resnet32(state, x), atol=1e-5, rtol=1e-5)
    assert y.shape == (3, 64)


def test_resnet32_cifar_initialisation_is_ldam_drw_s():
    """He normal with fan-in (std sqrt(2 / fan_in)), as LDAM-DRW's ``kaiming_normal_``
    defaults; the stem (fan-in 27, fan-out 144) and the first stride-2 block (fan-in 144,
    fan-out 288) tell fan-in from fan-out. Batch norms start as the identity."""
    torch.manual_seed(0)
    model = build_backbone("resnet32_cifar", in_shape=CIFAR)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * 9
            ratio = module.weight.std().item() / (2 / fan_in) ** 0.5
            assert abs(ratio - 1) < 0.15, (name, ratio)  # 432 weights at the least: ±3.4 %
            assert abs(module.weight.mean().item()) < 0.2 * (2 / fan_in) ** 0.5, name
        elif isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and (module.bias == 0).all(), name


def train_steps(steps: int) -> tuple[list[float], dict[str, torch.Tensor], nn.Module]:
    """``steps`` SGD steps of ResNet-32 + a linear head on one fixed batch, seed 0."""
    torch.manual_seed(0)
    model = build_backbone("resnet32_cifar", in_shape=SMALL)
    head = nn.Linear(model.out_dim, 4)
    params = [*model.parameters(), *head.parameters()]
    optimiser = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    x, y = torch.rand(16, *SMALL), torch.arange(16) % 4
    losses = []
    for step in range(steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(head(model(x)), y)
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name  # no dead stage
        optimiser.step()
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in model.state_dict().items()}, model


def test_resnet32_cifar_trains_and_is_deterministic():
    losses, state, model = train_steps(4)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]
    assert int(state["layer3.4.bn2.num_batches_tracked"]) == 4
    again, state_again, _ = train_steps(4)
    assert again == losses
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert model(torch.rand(2, *SMALL)).shape == (2, 64)


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (3, 7, 7)])
def test_resnet32_cifar_other_image_shapes(in_shape):
    """Any channel count and size: the option-A shortcut keeps ⌈H/2⌉ pixels, as the
    stride-2 convolution does, for odd sizes too."""
    model = build_backbone("resnet32_cifar", in_shape=in_shape)
    assert model(torch.randn(2, *in_shape)).shape == (2, 64)


def test_protolib_train_accepts_resnet32_cifar(tmp_path, capsys):
    """`protolib train` with `model: resnet32_cifar` on a tiny synthetic 32×32 dataset:
    exit 0, and the checkpoint holds a trained ResNet-32 (463 504 backbone parameters,
    batch-norm statistics updated once per iteration) under a 3-class linear head."""
    out = tmp_path / "run"
    overrides = {
        "model": "resnet32_cifar",
        "dataset": "synthetic",
        "dataset_options": {"train_size": 24, "test_size": 12, "num_classes": 3},
        "iterations": 2,
        "batch_size": 8,
        "eval_every": 2,
        "eval_batch_size": 64,
        "probe_iterations": 0,
    }
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    assert main(["train", "--no-progress", "--out", str(out), *sets]) == 0
    assert "run: completed" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model"] == "resnet32_cifar"
    network = torch.load(out / "checkpoint.pt", weights_only=True)["network"]
    backbone = {
        k.removeprefix("backbone."): v for k, v in network.items() if k.startswith("backbone.")
    }
    learned = [
        v for k, v in backbone.items() if not k.split(".")[-1].startswith(("running", "num"))
    ]
    assert sum(v.numel() for v in learned) == he_cifar_resnet_param_count(5)
    assert int(backbone["layer3.4.bn2.num_batches_tracked"]) == 2
    assert network["head.weight"].shape == (3, 64)
    metrics = pd.read_parquet(out / "metrics.parquet")
    loss = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    assert sorted(loss.step) == [2] and loss.value.map(float).notna().all()


# --------------------------------------------------------------------------- timm


def test_timm_backbone_out_dim_and_channels():
    model = build_backbone("timm:resnet18", in_shape=(1, 16, 16))
    assert model.out_dim == 512
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 512)
    assert not any(p.shape[0] == 1000 for p in model.parameters())  # no classifier


def test_timm_out_dim_is_the_pooled_width_when_the_head_has_a_hidden_layer():
    model = build_backbone("timm:mobilenetv3_small_050", in_shape=SMALL)
    y = model(torch.randn(2, *SMALL))
    assert y.shape == (2, model.out_dim)


def test_timm_options_are_passed_through():
    model = build_backbone("timm:resnet18", in_shape=CIFAR, drop_rate=0.25)
    assert model.model.drop_rate == 0.25


@pytest.mark.parametrize("name", ["timm:resnet_does_not_exist", "timm:"])
def test_unknown_timm_name(name):
    with pytest.raises(ValueError, match="unknown timm model") as info:
        build_backbone(name, in_shape=CIFAR)
    assert repr(name.removeprefix("timm:")) in str(info.value)


# --------------------------------------------------------------------------- errors


def test_unknown_model_lists_known_names_and_timm():
    with pytest.raises(RegistryError) as info:
        build_backbone("resnet18_cifr", in_shape=CIFAR)
    message = str(info.value)
    assert "'resnet18_cifr'" in message
    assert all(name in message for name in MODELS.names())
    assert "timm:<name>" in message
    assert "did you mean 'resnet18_cifar'" in message


def test_unknown_option_lists_accepted_options():
    with pytest.raises(RegistryError, match=r"accepted options: .*widths"):
        build_backbone("mlp", in_shape=DIGITS, width=(3,))


@pytest.mark.parametrize("in_shape", [(3, 32), (0, 8, 8), (3, 32.0, 32), "abc"])
def test_bad_in_shape(in_shape):
    with pytest.raises(ValueError, match="in_shape"):
        build_backbone("mlp", in_shape=in_shape)


@pytest.mark.parametrize(
    ("name", "options"),
    [("mlp", {"widths": (0,)}), ("mlp", {"out_dim": 0}), ("cnn_small", {"channels": ()})],
)
def test_bad_options(name, options):
    with pytest.raises(ValueError):
        build_backbone(name, in_shape=DIGITS, **options)


def test_plugin_model_without_out_dim_is_refused():
    MODELS.register("_test_no_out_dim", lambda *, in_shape: nn.Flatten())
    try:
        with pytest.raises(TypeError, match="out_dim"):
            build_backbone("_test_no_out_dim", in_shape=DIGITS)
    finally:
        MODELS.unregister("_test_no_out_dim")
