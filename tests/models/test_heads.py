"""Heads and the full network: fixed classifier, projector, views, heads chosen by LossNeeds."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from protolib.geometry import make_prototypes
from protolib.losses import LossNeeds
from protolib.models import (
    FixedLinear,
    Network,
    NetworkOutput,
    Projector,
    build_backbone,
    build_network,
)
from protolib.registry import LOSSES, MODELS, RegistryError

DIGITS = (1, 8, 8)
K = 4
#: the options a loss cannot be built without (a composite's parts)
LOSS_OPTIONS = {"composite": {"parts": {"bcl": {}, "ce_la": {"weight": 0.5}}}}


def small_network(**kwargs) -> Network:
    options = {"widths": (16,), "out_dim": 8}
    return Network(build_backbone("mlp", in_shape=DIGITS, **options), num_classes=K, **kwargs)


# --------------------------------------------------------------------------- FixedLinear


def test_fixed_linear_is_a_buffer_not_a_parameter():
    weight = torch.randn(K, 6)
    head = FixedLinear(weight)
    assert list(head.parameters()) == []
    assert set(head.state_dict()) == {"weight"}
    assert torch.equal(head.state_dict()["weight"], weight)
    assert not head.weight.requires_grad
    weight.add_(1.0)  # the head holds its own copy
    assert not torch.equal(head.weight, weight)


def test_fixed_linear_logits_are_exactly_features_times_weight():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(K, 6, generator=g)
    features = torch.randn(5, 6, generator=g, requires_grad=True)
    head = FixedLinear(weight)
    logits = head(features)
    assert torch.equal(logits, features @ weight.T)
    # also for views (B, V, d)
    views = torch.randn(5, 2, 6, generator=g)
    assert torch.equal(head(views), views @ weight.T)
    logits.sum().backward()
    torch.testing.assert_close(features.grad, weight.sum(0).expand(5, 6))
    assert head.weight.grad is None


def test_fixed_linear_moves_with_to_and_round_trips():
    head = FixedLinear(torch.randn(K, 6)).to(torch.float64)
    assert head.weight.dtype == torch.float64
    features = torch.randn(3, 6, dtype=torch.float64)
    assert torch.equal(head(features), features @ head.weight.T)
    other = FixedLinear(torch.zeros(K, 6)).to(torch.float64)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    assert torch.equal(other.weight, head.weight)


def test_fixed_linear_stores_default_dtype_and_casts_to_input():
    head = FixedLinear(torch.randn(K, 6, dtype=torch.float64))
    assert head.weight.dtype == torch.float32
    assert head(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("weight", [torch.randn(6), torch.randn(2, 3, 4), torch.empty(0, 3)])
def test_fixed_linear_rejects_bad_shapes(weight):
    with pytest.raises(ValueError, match=r"\(K, d\)"):
        FixedLinear(weight)


# --------------------------------------------------------------------------- Projector


def test_projector_is_linear_relu_linear():
    torch.manual_seed(0)
    projector = Projector(10, out_dim=3)
    assert projector.hidden_dim == 10 and projector.out_dim == 3
    first, second = (m for m in projector.modules() if isinstance(m, nn.Linear))
    assert (first.in_features, first.out_features) == (10, 10)
    assert (second.in_features, second.out_features) == (10, 3)
    x = torch.randn(4, 10)
    expected = (x @ first.weight.T + first.bias).clamp_min(0) @ second.weight.T + second.bias
    torch.testing.assert_close(projector(x), expected)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in projector.modules())


def test_projector_hidden_width():
    projector = Projector(10, hidden_dim=7, out_dim=3)
    assert projector(torch.randn(2, 10)).shape == (2, 3)
    assert projector.layers[0].out_features == 7
    with pytest.raises(ValueError, match="hidden_dim"):
        Projector(10, hidden_dim=0)


# --------------------------------------------------------------------------- Network


def test_network_output_is_a_named_tuple():
    net = small_network(head="linear")
    out = net(torch.randn(3, *DIGITS))
    assert isinstance(out, NetworkOutput)
    features, logits = out
    assert features is out.features and logits is out.logits
    assert features.shape == (3, 8) and logits.shape == (3, K)


def test_features_are_not_normalised():
    net = small_network()
    features = net(torch.randn(6, *DIGITS)).features
    assert not torch.allclose(features.norm(dim=-1), torch.ones(6), atol=1e-2)


def test_views_fold_into_the_batch_like_separate_runs():
    torch.manual_seed(0)
    backbone = build_backbone("cnn_small", in_shape=(3, 8, 8), channels=(4, 8), out_dim=16)
    net = Network(backbone, num_classes=K, head="linear", projector="mlp", projector_dim=6)
    # train a step's worth of BN statistics so eval mode is not trivial
    net.train()
    net(torch.randn(16, 2, 3, 8, 8))
    net.eval()
    x = torch.randn(5, 3, 3, 8, 8)
    with torch.no_grad():
        features, logits = net(x)
        assert features.shape == (5, 3, 6) and logits.shape == (5, 3, K)
        for v in range(3):
            f_v, l_v = net(x[:, v])
            torch.testing.assert_close(features[:, v], f_v, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(logits[:, v], l_v, atol=1e-6, rtol=1e-6)


def test_views_order_matches_flatten_views():
    """Member b·V + v of the folded batch is view v of image b (as the losses assume)."""
    net = small_network().eval()
    x = torch.randn(3, 2, *DIGITS)
    with torch.no_grad():
        features = net(x).features
        flat = net(x.reshape(6, *DIGITS)).features
    torch.testing.assert_close(features.reshape(6, -1), flat, atol=1e-6, rtol=1e-6)


def test_views_share_batch_norm_statistics_in_training():
    """In training mode all B·V members form one BN batch (SupContrast's concatenation)."""
    torch.manual_seed(0)
    backbone = build_backbone("cnn_small", in_shape=(3, 8, 8), channels=(4,), out_dim=5)
    net = Network(backbone, num_classes=K).train()
    x = torch.randn(4, 2, 3, 8, 8)
    folded = net(x).features
    torch.testing.assert_close(folded.reshape(8, 5), net(x.reshape(8, 3, 8, 8)).features)


@pytest.mark.parametrize("head", ["none", "linear", "fixed_linear"])
def test_head_kinds(head):
    torch.manual_seed(0)
    prototypes = make_prototypes("etf", K, 8) if head == "fixed_linear" else None
    net = small_network(head=head, prototypes=prototypes)
    assert net.embedding_dim == 8 and net.head_kind == head
    x = torch.randn(3, 2, *DIGITS)
    features, logits = net(x)
    weight = net.classifier_weight()
    if head == "none":
        assert logits is None and weight is None and net.head is None
    elif head == "linear":
        assert isinstance(net.head, nn.Linear) and net.head.bias is not None
        assert weight is net.head.weight and weight.requires_grad and weight.shape == (K, 8)
        torch.testing.assert_close(logits, features @ weight.T + net.head.bias)
    else:
        assert isinstance(net.head, FixedLinear)
        assert torch.equal(weight, prototypes)
        assert all(p is not weight for p in net.parameters())
        assert "head.weight" in net.state_dict()
        assert torch.equal(logits, features @ prototypes.T)


def test_fixed_linear_requires_prototypes():
    with pytest.raises(ValueError, match=r"prototypes of shape \(4, 8\)"):
        small_network(head="fixed_linear")
    with pytest.raises(ValueError, match=r"\(4, 8\).*got \(4, 7\)"):
        small_network(head="fixed_linear", prototypes=torch.randn(K, 7))
    with pytest.raises(ValueError, match=r"got \(3, 8\)"):
        small_network(head="fixed_linear", prototypes=torch.randn(3, 8))


def test_prototypes_without_fixed_head_are_refused_by_network():
    with pytest.raises(ValueError, match="only by head 'fixed_linear'"):
        small_network(head="linear", prototypes=torch.randn(K, 8))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"head": "cosine"}, "unknown head 'cosine'; known: none, linear, fixed_linear"),
        ({"projector": "bn_mlp"}, "unknown projector 'bn_mlp'; known: none, mlp"),
    ],
)
def test_bad_head_or_projector_names(options, match):
    with pytest.raises(ValueError, match=match):
        small_network(**options)


def test_bad_input_rank():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, V, C, H, W\)"):
        small_network()(torch.randn(8, 8))


def test_projector_changes_the_embedding_dim():
    net = small_network(projector="mlp", projector_dim=5, projector_hidden=11)
    assert net.embedding_dim == 5
    assert isinstance(net.projector, Projector) and net.projector.hidden_dim == 11
    assert net(torch.randn(2, *DIGITS)).features.shape == (2, 5)
    # a fixed classifier lives in the projected space
    net = small_network(
        projector="mlp", projector_dim=5, head="fixed_linear", prototypes=torch.randn(K, 5)
    )
    assert net(torch.randn(2, *DIGITS)).logits.shape == (2, K)
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        small_network(
            projector="mlp", projector_dim=5, head="fixed_linear", prototypes=torch.randn(K, 8)
        )


# --------------------------------------------------------------------------- head over the encoder


def test_linear_head_over_the_encoder_reads_the_backbone_output():
    """With ``head_input="encoder"`` the logits are ``W·backbone(x) + b`` and the features
    stay the projector's output; the head's loss trains the backbone, not the projector."""
    torch.manual_seed(0)
    net = small_network(head="linear", head_input="encoder", projector="mlp", projector_dim=5)
    assert net.head_input == "encoder" and net.head_dim == 8 and net.embedding_dim == 5
    assert net.classifier_weight().shape == (K, 8)
    x = torch.randn(3, 2, *DIGITS)
    features, logits = net(x)
    encoded = net.backbone(x.flatten(0, 1))
    torch.testing.assert_close(features, net.projector(encoded).unflatten(0, (3, 2)))
    want = encoded @ net.head.weight.T + net.head.bias
    torch.testing.assert_close(logits, want.unflatten(0, (3, 2)))
    logits.square().sum().backward()
    assert all(p.grad is None for p in net.projector.parameters())
    assert all(p.grad is not None for p in net.backbone.parameters())


def test_head_over_the_embedding_is_the_default():
    torch.manual_seed(0)
    net = small_network(head="linear", projector="mlp", projector_dim=5)
    assert net.head_input == "embedding" and net.head_dim == 5
    features, logits = net(torch.randn(4, *DIGITS))
    torch.testing.assert_close(logits, features @ net.head.weight.T + net.head.bias)


def test_fixed_head_over_the_encoder_needs_prototypes_of_the_encoder_width():
    prototypes = make_prototypes("etf", K, 8)
    net = small_network(
        head="fixed_linear",
        head_input="encoder",
        prototypes=prototypes,
        projector="mlp",
        projector_dim=5,
    )
    x = torch.randn(2, *DIGITS)
    torch.testing.assert_close(net(x).logits, net.backbone(x) @ prototypes.T)
    with pytest.raises(ValueError, match=r"the backbone output it reads\) = \(4, 8\); got \(4, 5"):
        small_network(
            head="fixed_linear",
            head_input="encoder",
            prototypes=torch.randn(K, 5),
            projector="mlp",
            projector_dim=5,
        )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"head": "linear", "head_input": "projector"}, "unknown head_input 'projector'"),
        ({"head_input": "encoder"}, "head_input 'encoder' needs a head; got head 'none'"),
    ],
)
def test_bad_head_input(options, match):
    with pytest.raises(ValueError, match=match):
        small_network(**options)


def test_build_network_puts_the_head_where_needs_say():
    needs = LossNeeds(head="linear", head_input="encoder")
    net = build_network(
        "mlp",
        in_shape=DIGITS,
        num_classes=K,
        needs=needs,
        projector="mlp",
        projector_dim=6,
        model_options={"widths": (16,), "out_dim": 10},
    )
    assert net.head_input == "encoder" and net.head.in_features == 10
    features, logits = net(torch.randn(2, *DIGITS))
    assert features.shape == (2, 6) and logits.shape == (2, K)


def test_network_state_dict_round_trip_with_fixed_head():
    torch.manual_seed(0)
    prototypes = make_prototypes("etf", K, 8)
    a = small_network(head="fixed_linear", prototypes=prototypes).to(torch.float64)
    assert a.classifier_weight().dtype == torch.float64
    b = small_network(head="fixed_linear", prototypes=torch.zeros(K, 8)).to(torch.float64)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, *DIGITS, dtype=torch.float64)
    assert torch.equal(a(x).logits, b(x).logits)


# --------------------------------------------------------------------------- build_network


@pytest.mark.parametrize("loss_name", LOSSES.names())
def test_every_loss_gets_the_head_it_needs_and_trains(loss_name):
    """The head comes from the loss's LossNeeds; the network's output feeds the loss."""
    torch.manual_seed(0)
    options = dict(LOSS_OPTIONS.get(loss_name, {}))
    needs = LOSSES.get(loss_name).needs_for(options)
    d = 8
    prototypes = make_prototypes("etf", K, d)
    net = build_network(
        "mlp",
        in_shape=DIGITS,
        num_classes=K,
        needs=needs,
        prototypes=prototypes,
        model_options={"widths": (16,), "out_dim": d},
    )
    assert net.head_kind == needs.head and net.head_input == needs.head_input
    if needs.prototypes != "no":
        options["prototypes"] = prototypes
    if needs.prototypes == "optional":
        options["n_w"] = 3
    if needs.priors:
        options["priors"] = torch.full((K,), 1 / K, dtype=torch.float64)
    loss = LOSSES.create(loss_name, **options)
    features, logits = net(torch.randn(8, 2, *DIGITS))
    assert (logits is None) == (needs.head == "none")
    value = loss(features, torch.arange(8) % K, logits=logits)["loss"]
    assert torch.isfinite(value)
    value.backward()
    grad = next(p for p in net.backbone.parameters() if p.ndim == 2).grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["none", "linear", "fixed_linear"])
def test_build_network_heads_from_needs(head):
    prototypes = torch.randn(K, 6)
    net = build_network(
        "cnn_small",
        in_shape=(3, 8, 8),
        num_classes=K,
        needs=LossNeeds(head=head),
        prototypes=prototypes,
        projector="mlp",
        projector_dim=6,
        model_options={"channels": (4,), "out_dim": 10},
    )
    assert net.head_kind == head and net.embedding_dim == 6
    assert net.backbone.out_dim == 10
    if head == "fixed_linear":
        assert torch.equal(net.classifier_weight(), prototypes)
    elif head == "none":
        assert net.classifier_weight() is None  # prototypes were left to the loss
    else:
        assert net.classifier_weight().shape == (K, 6)


def test_build_network_fixed_head_without_prototypes():
    with pytest.raises(ValueError, match="fixed_linear"):
        build_network("mlp", in_shape=DIGITS, num_classes=K, needs=LossNeeds(head="fixed_linear"))


def test_build_network_needs_must_be_lossneeds():
    with pytest.raises(TypeError, match="LossNeeds"):
        build_network("mlp", in_shape=DIGITS, num_classes=K, needs="linear")


def test_build_network_unknown_model_lists_known_names():
    with pytest.raises(RegistryError) as info:
        build_network("resnet50_cifar", in_shape=DIGITS, num_classes=K, needs=LossNeeds())
    assert all(name in str(info.value) for name in MODELS.names())
    assert "timm:<name>" in str(info.value)


def test_build_network_bad_timm_name():
    with pytest.raises(ValueError, match="'not_a_timm_model'"):
        build_network(
            "timm:not_a_timm_model", in_shape=(3, 32, 32), num_classes=K, needs=LossNeeds()
        )


def test_build_network_timm_with_linear_head():
    net = build_network(
        "timm:resnet18", in_shape=(3, 16, 16), num_classes=10, needs=LossNeeds(head="linear")
    )
    features, logits = net(torch.randn(2, 2, 3, 16, 16))
    assert features.shape == (2, 2, 512) and logits.shape == (2, 2, 10)


def test_build_network_is_deterministic_under_seed():
    def build():
        torch.manual_seed(0)
        return build_network(
            "resnet18_cifar",
            in_shape=(3, 32, 32),
            num_classes=10,
            needs=LossNeeds(head="linear"),
            projector="mlp",
        )

    a, b = build().state_dict(), build().state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
