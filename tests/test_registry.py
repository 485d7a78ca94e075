"""The Registry class and plugin loading."""

from __future__ import annotations

import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

import protolib
from protolib import DATASETS, GEOMETRIES, LOSSES, MODELS
from protolib.registry import METRICS, Registry, RegistryError, load_plugins
from tests import launcher


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
    """The built-ins are members (checked by membership: adding an entry breaks nothing)."""
    assert {"bcl", "ce", "ce_fix", "supcon", "supcon_limit", "supcon_limit_paper"} <= set(LOSSES)
    assert {"etf", "from_gram", "majority_collapse", "minority_angles", "orthonormal"} <= set(
        GEOMETRIES.names()
    )


#: every protolib module that registers built-in entries with a decorator
REGISTERING = sorted(
    ".".join(path.relative_to(Path(protolib.__file__).parents[1]).with_suffix("").parts)
    for path in Path(protolib.__file__).parent.rglob("*.py")
    if re.search(r"^@[A-Z]+\.register\(", path.read_text(), re.MULTILINE)
)
#: a fresh process imports one of them before anything else of protolib, then every
#: registry, which must then hold the same entries as when protolib is imported the usual way
IMPORT_FIRST = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
from protolib import registry
print(json.dumps({r.family: sorted(r.names()) for r in vars(registry).values()
                  if isinstance(r, registry.Registry)}))
"""


def test_registering_modules_are_found():
    assert {"protolib.data.cifar", "protolib.data.digits", "protolib.losses.ce"} <= set(REGISTERING)


def _registries_after_importing(module: str, folder: Path) -> dict:
    script = folder / "first.py"
    script.write_text(IMPORT_FIRST)
    done = launcher.run([sys.executable, str(script), module], timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def usual_registries(tmp_path_factory):
    return _registries_after_importing("protolib", tmp_path_factory.mktemp("usual"))


@pytest.mark.parametrize("module", REGISTERING)
def test_a_registering_module_imports_first_on_its_own(module, tmp_path, usual_registries):
    """Importing ``protolib.data.cifar`` first once failed: its decorator imported the
    built-ins, which imported the half-initialised module back (a circular import)."""
    assert usual_registries["dataset"] and usual_registries["loss"]
    assert _registries_after_importing(module, tmp_path) == usual_registries


#: a registry whose built-ins live in another module, which registers into it on import
#: and looks a name up while it is being imported (that must not import it again)
REGISTRY_MODULE = """
from protolib.registry import Registry

WIDGETS = Registry("widget", builtins="{builtins}")
"""
BUILTINS_MODULE = """
from {registry} import WIDGETS

@WIDGETS.register("a")
def make_a(*, size=1):
    return ("a", size)

assert WIDGETS.names() == ["a"] and "a" in WIDGETS and len(WIDGETS) == 1
WIDGETS.register("b", lambda: "b")
"""

FIRST_USES = {
    "get": lambda reg: reg.get("a"),
    "create": lambda reg: reg.create("a", size=2),
    "names": lambda reg: reg.names(),
    "contains": lambda reg: "a" in reg,
    "iter": lambda reg: list(reg),
    "len": lambda reg: len(reg),
    "check_options": lambda reg: reg.check_options("a", size=3),
    "register": lambda reg: reg.register("c", lambda: "c"),
}


@pytest.mark.parametrize("use", sorted(FIRST_USES))
def test_builtins_are_imported_on_first_use(tmp_path, monkeypatch, use):
    registry, builtins = f"lazy_registry_{use}", f"lazy_builtins_{use}"
    (tmp_path / f"{registry}.py").write_text(REGISTRY_MODULE.format(builtins=builtins))
    (tmp_path / f"{builtins}.py").write_text(BUILTINS_MODULE.format(registry=registry))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        widgets = importlib.import_module(registry).WIDGETS
        assert builtins not in sys.modules  # creating the registry imports nothing
        assert repr(widgets) == f"Registry('widget', builtins={builtins!r}, not loaded yet)"
        FIRST_USES[use](widgets)
        assert widgets.names() == (["a", "b", "c"] if use == "register" else ["a", "b"])
        assert widgets.get("a") is sys.modules[builtins].make_a
        assert widgets.create("a", size=4) == ("a", 4)
        assert repr(widgets) == f"Registry('widget', names={widgets.names()})"
    finally:
        sys.modules.pop(registry, None)
        sys.modules.pop(builtins, None)


def test_registering_a_builtin_name_first_is_refused(tmp_path, monkeypatch):
    """Registration imports the built-ins first, so a user's "a" clashes with the built-in
    "a" at once, not later when someone looks a name up."""
    (tmp_path / "clash_registry.py").write_text(REGISTRY_MODULE.format(builtins="clash_builtins"))
    (tmp_path / "clash_builtins.py").write_text(BUILTINS_MODULE.format(registry="clash_registry"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        widgets = importlib.import_module("clash_registry").WIDGETS
        with pytest.raises(RegistryError, match=r"'a' is already registered \(by clash_builtins"):
            widgets.register("a", lambda: "mine")
    finally:
        sys.modules.pop("clash_registry", None)
        sys.modules.pop("clash_builtins", None)


def test_builtins_that_fail_to_import_raise_every_time(tmp_path, monkeypatch):
    (tmp_path / "broken_builtins.py").write_text("raise RuntimeError('no backend')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    widgets = Registry("widget", builtins="broken_builtins")
    for _ in range(2):  # not marked loaded after a failure: the next use tries again
        with pytest.raises(RuntimeError, match="no backend"):
            widgets.names()
    sys.modules.pop("broken_builtins", None)


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


def test_facts_are_kept_read_only_and_resolved_against_the_options():
    reg = Registry("dataset")

    @reg.register("noise", size=lambda o: o["n"] + o["extra"], classes=2)
    def noise(*, n=100, extra=5):
        return n

    reg.register("plain", lambda: None)
    facts = reg.facts("noise")
    assert set(facts) == {"size", "classes"} and facts["classes"] == 2
    with pytest.raises(TypeError):
        facts["classes"] = 3  # read-only
    assert reg.facts("plain") == {}
    # a callable fact sees the options over the factory's defaults
    assert reg.fact("noise", "size") == 105
    assert reg.fact("noise", "size", options={"n": 7}) == 12
    assert reg.fact("noise", "classes") == 2
    # undeclared: the caller's default
    assert reg.fact("plain", "size", 60000) == 60000 and reg.fact("noise", "other") is None
    with pytest.raises(RegistryError, match="unknown dataset 'nois'"):
        reg.facts("nois")
    reg.unregister("noise")
    reg.register("noise", lambda: None)  # the name is free again, with no facts
    assert reg.facts("noise") == {}


def test_registering_a_taken_name_with_other_facts_is_an_error():
    reg = Registry("model")

    def make():
        return None

    reg.register("m", make, cost=1.0)
    reg.register("m", make, cost=1.0)  # the same entry again: a no-op
    with pytest.raises(RegistryError, match="'m' is already registered"):
        reg.register("m", make, cost=2.0)
    assert reg.facts("m") == {"cost": 1.0}


def test_entries_come_in_registration_order():
    reg = Registry("metric")
    for name in ("zeta", "alpha", "mid"):
        reg.register(name, lambda: None)
    assert [name for name, _ in reg.entries()] == ["zeta", "alpha", "mid"]
    assert reg.names() == ["alpha", "mid", "zeta"]


def test_builtin_entries_declare_the_facts_resources_read():
    """Each built-in dataset declares its size, class count and image shape, each built-in
    model its costs per sample (a plugin may omit them: resources.py has the defaults)."""
    for name in ("digits", "cifar10", "cifar100", "synthetic"):
        assert {"size", "num_classes", "image_shape"} <= set(DATASETS.facts(name)), name
    for name in ("mlp", "cnn_small", "resnet18_cifar", "preact_resnet18_cifar", "resnet32_cifar"):
        assert {"gpu_seconds_per_sample", "cpu_seconds_per_sample"} <= set(MODELS.facts(name))
    assert [name for name, _ in METRICS.entries()][:3] == ["delta_g", "gamma", "neural_collapse"]


@pytest.mark.parametrize(
    ("registry", "facts", "message"),
    [
        (MODELS, {"gpu_seconds_per_sample": "fast"}, "fact gpu_seconds_per_sample='fast'"),
        (MODELS, {"cpu_seconds_per_sample": 0}, "allowed: a positive finite number of seconds"),
        (MODELS, {"cpu_seconds_per_sample": float("inf")}, "cpu_seconds_per_sample=inf"),
        (DATASETS, {"size": 1797.5}, "fact size=1797.5 is not allowed; allowed: a positive whole"),
        (DATASETS, {"size": True}, "fact size=True is not allowed"),
        (DATASETS, {"image_shape": (1, 8)}, "allowed: (C, H, W), three positive whole numbers"),
        (DATASETS, {"num_classes": -2}, "fact num_classes=-2 is not allowed"),
    ],
)
def test_a_fact_that_breaks_its_rule_is_refused_at_registration(registry, facts, message):
    with pytest.raises(RegistryError) as caught:
        registry.register("fact_breaker", lambda: None, **facts)
    assert message in str(caught.value) and "fact_breaker" in str(caught.value)
    assert "fact_breaker" not in registry


def test_a_fact_of_the_options_is_checked_when_resolved():
    reg = Registry("dataset", fact_checks={"size": DATASETS.fact_checks["size"]})
    reg.register("gauss", lambda *, n=10: None, size=lambda o: o["n"] - 10)
    assert reg.fact("gauss", "size", options={"n": 15}) == 5
    with pytest.raises(RegistryError, match=r"^dataset 'gauss': fact size=0 is not allowed"):
        reg.fact("gauss", "size")


def test_a_plugin_with_a_bad_fact_fails_to_import_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "bad_fact_plugin.py").write_text(
        "from protolib.registry import MODELS\n"
        "MODELS.register('slow_net', lambda *, in_shape: None, gpu_seconds_per_sample=-1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as caught:
        load_plugins(["bad_fact_plugin"])
    assert str(caught.value) == (
        "plugin module 'bad_fact_plugin' could not be imported: RegistryError: model "
        "'slow_net': fact gpu_seconds_per_sample=-1 is not allowed; allowed: a positive "
        "finite number of seconds"
    )
    assert "slow_net" not in MODELS
