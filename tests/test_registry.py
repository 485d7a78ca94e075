"""The Registry class and plugin loading."""

from __future__ import annotations

import sys
import textwrap

import pytest

from protolib import GEOMETRIES, LOSSES
from protolib.registry import Registry, RegistryError, load_plugins


def test_register_create_names():
    reg = Registry("widget")

    @reg.register("b")
    def make_b(*, size=1):
        return ("b", size)

    reg.register("a", lambda: "a")
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    assert "b" in reg and "c" not in reg
    assert reg.create("b", size=3) == ("b", 3)
    assert reg.get("b") is make_b
    reg.unregister("a")
    assert reg.names() == ["b"]


def test_unknown_name_lists_known_ones_and_suggests():
    reg = Registry("loss")
    reg.register("supcon", lambda: None)
    reg.register("ce", lambda: None)
    with pytest.raises(
        RegistryError,
        match=r"^unknown loss 'supcn'; known: ce, supcon \(did you mean 'supcon'\?\)$",
    ):
        reg.create("supcn")
    with pytest.raises(RegistryError, match=r"^unknown loss 'zzz'; known: ce, supcon$"):
        reg.get("zzz")


def test_duplicate_registration_is_an_error():
    reg = Registry("loss")
    reg.register("x", lambda: 1)
    with pytest.raises(RegistryError, match="'x' is already registered"):
        reg.register("x", lambda: 2)
    with pytest.raises(RegistryError, match="non-empty string"):
        reg.register("")


def test_unknown_option_lists_accepted_ones():
    reg = Registry("geometry")
    reg.register("g", lambda num_classes, *, strength=0.5: None)
    with pytest.raises(
        RegistryError,
        match="unexpected keyword argument 'strenght'; accepted options: num_classes, strength",
    ):
        reg.create("g", num_classes=3, strenght=1)


def test_builtin_registries():
    assert LOSSES.names() == ["bcl", "ce", "ce_fix", "supcon", "supcon_limit", "supcon_limit_paper"]
    assert GEOMETRIES.names() == [
        "etf",
        "from_gram",
        "majority_collapse",
        "minority_angles",
        "orthonormal",
    ]


def test_plugin_module_registers_a_loss(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_losses.py").write_text(
        textwrap.dedent(
            """
            from protolib.losses import Loss, LossNeeds
            from protolib.registry import LOSSES

            @LOSSES.register("my_test_loss")
            class MyLoss(Loss):
                needs = LossNeeds(normalized=True)

                def forward(self, features, labels, *, logits=None):
                    return {"loss": features.pow(2).sum()}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_plugins(["my_plugin_losses"])
        assert "my_test_loss" in LOSSES
        assert LOSSES.create("my_test_loss").needs.normalized
    finally:
        if "my_test_loss" in LOSSES:
            LOSSES.unregister("my_test_loss")
        sys.modules.pop("my_plugin_losses", None)
    with pytest.raises(
        ImportError, match="plugin module 'no_such_plugin_mod' could not be imported"
    ):
        load_plugins(["no_such_plugin_mod"])


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("x = 1 / 0\n", "ZeroDivisionError: division by zero"),
        ("def f(:\n    pass\n", "SyntaxError: invalid syntax"),
        ("raise SystemExit(3)\n", "SystemExit: 3"),
        ("raise RuntimeError('first\\nsecond')\n", "RuntimeError: first second"),
    ],
)
def test_plugin_module_raising_anything_is_an_import_error(tmp_path, monkeypatch, source, error):
    """Whatever a plugin raises on import becomes one ImportError line naming it."""
    (tmp_path / "raising_plugin_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as caught:
        load_plugins(["raising_plugin_mod"])
    message = str(caught.value)
    assert message.startswith("plugin module 'raising_plugin_mod' could not be imported: ")
    assert error in message and "\n" not in message, message
    assert "raising_plugin_mod" not in sys.modules
