"""Name → factory registries: the only place where a name from a config becomes an object.

Each family (losses, geometries, models, datasets, evaluation metrics) has one
:class:`Registry`. Adding a component is one decorated class or function::

    from protolib.registry import LOSSES

    @LOSSES.register("my_loss")
    class MyLoss(Loss):
        ...

An entry may carry facts, keyword arguments of ``register`` kept beside it (as timm's
registry keeps per-model metadata) and read with :meth:`Registry.facts` and
:meth:`Registry.fact`: a dataset its size and image shape, a model its training cost per
sample (:mod:`protolib.resources` reads them; an entry without them gets the documented
conservative defaults there). A fact may be a function of the entry's options::

    @DATASETS.register("noise", size=lambda o: o["n"], num_classes=2, image_shape=(1, 8, 8))
    def noise(*, n: int = 100) -> DatasetSplits: ...

Code outside the package registers by being imported: name its module in a config's
``plugins`` list, or expose it under the ``protolib.plugins`` entry-point group; both are
imported by :func:`load_plugins`.

Each built-in registry names the module that holds its built-ins (``protolib.losses`` for
``LOSSES``) and imports it on first use, so ``import protolib`` stays light (no torch) and
a command that never looks a name up never pays for the import.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from protolib.io import one_line

T = TypeVar("T", bound=Callable[..., Any])

#: a rule for one fact: (is this value allowed?, what is allowed, in words)
FactCheck = tuple[Callable[[Any], bool], str]

ENTRY_POINT_GROUP = "protolib.plugins"


class RegistryError(ValueError):
    """An unknown or duplicate name in a registry (the message lists the known names)."""


class Registry(Generic[T]):
    """A named family of factories (classes or functions) with ``register``/``create``/``names``.

    ``fact_checks`` maps a fact's key to the rule its values must follow: a declared value
    is checked when it is registered, a function of the options when :meth:`fact` calls it.

    ``builtins`` is the module that registers the family's built-in entries; it is imported
    on the first lookup (``get``, ``create``, ``names``, ``in``, ``len``, iteration,
    ``check_options``) or on registering an entry defined outside protolib, so that a name a
    built-in holds is refused. An entry defined in protolib (the built-ins' own modules,
    which may be imported in any order and before that module) registers without it.
    """

    def __init__(
        self,
        family: str,
        *,
        builtins: str | None = None,
        fact_checks: Mapping[str, FactCheck] | None = None,
    ) -> None:
        self.family = family
        self.builtins = builtins
        self.fact_checks: Mapping[str, FactCheck] = dict(fact_checks or {})
        self._entries: dict[str, T] = {}
        self._facts: dict[str, Mapping[str, Any]] = {}
        self._loaded = builtins is None
        self._loading: set[int] = set()  # ids of the threads importing the built-ins now

    def _load_builtins(self) -> None:
        """Import :attr:`builtins` once (a no-op inside that import, in the same thread)."""
        if self._loaded:
            return
        me = threading.get_ident()
        if me in self._loading:
            return
        self._loading.add(me)
        try:
            importlib.import_module(self.builtins)  # type: ignore[arg-type]
            self._loaded = True
        finally:
            self._loading.discard(me)

    def register(self, name: str, obj: T | None = None, **facts: Any) -> Any:
        """Register ``obj`` under ``name`` with ``facts``; without ``obj``, return a decorator.

        ``facts`` are kept with the entry (:meth:`facts`); a fact may be a function of the
        entry's options (:meth:`fact` calls it). The facts protolib reads, and what an entry
        registered without them gets (:mod:`protolib.resources`):

        - ``DATASETS``: ``size`` (training plus test images; default 60 000),
          ``num_classes``, ``image_shape`` ``(C, H, W)``;
        - ``MODELS``: ``gpu_seconds_per_sample`` and ``cpu_seconds_per_sample`` (training
          seconds per sample and view on one GPU / one CPU core; defaults 1e-3 and 1e-1,
          ``resources.OTHER_SECONDS_PER_SAMPLE``).

        Raises :class:`RegistryError` when ``name`` is already taken (by another object, or
        by the same object with other facts), or when a fact breaks its rule
        (``fact_checks``), before anything is registered.
        """
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"a {self.family} name must be a non-empty string, got {name!r}")
        for key, value in facts.items():
            if not callable(value):
                self._check_fact(name, key, value)
        frozen = MappingProxyType(dict(facts))

        def add(target: T) -> T:
            if not str(getattr(target, "__module__", "")).startswith("protolib."):
                self._load_builtins()
            if name in self._entries and (
                self._entries[name] is not target or dict(self._facts[name]) != facts
            ):
                raise RegistryError(
                    f"{self.family} {name!r} is already registered "
                    f"(by {_qualname(self._entries[name])}); choose another name"
                )
            self._entries[name] = target
            self._facts[name] = frozen
            return target

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The factory registered under ``name``."""
        self._load_builtins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(self._unknown_message(name)) from None

    def facts(self, name: str) -> Mapping[str, Any]:
        """The facts registered with ``name`` (read-only; empty when it declared none)."""
        self.get(name)
        return self._facts[name]

    def fact(
        self,
        name: str,
        key: str,
        /,
        default: Any = None,
        options: Mapping[str, Any] | None = None,
    ) -> Any:
        """The fact ``key`` of ``name``, or ``default`` when the entry did not declare it.

        A callable fact is called with the entry's options: ``options`` over the defaults
        of the factory's keyword parameters (so ``o["train_size"]`` is the value the
        factory will use, whether the config set it or not).
        """
        value = self.facts(name).get(key, default)
        if not callable(value):
            return value
        value = value(MappingProxyType({**self._option_defaults(name), **(options or {})}))
        self._check_fact(name, key, value)
        return value

    def _check_fact(self, name: str, key: str, value: Any) -> None:
        """Raise :class:`RegistryError` when ``value`` breaks the rule for ``key``."""
        if key in self.fact_checks:
            allowed, what = self.fact_checks[key]
            if not allowed(value):
                raise RegistryError(
                    f"{self.family} {name!r}: fact {key}={value!r} is not allowed; allowed: {what}"
                )

    def _option_defaults(self, name: str) -> dict[str, Any]:
        """The factory's parameters that have defaults, with those defaults."""
        try:
            parameters = inspect.signature(self.get(name)).parameters.values()
        except (TypeError, ValueError):
            return {}
        return {p.name: p.default for p in parameters if p.default is not p.empty}

    def entries(self) -> list[tuple[str, T]]:
        """``(name, factory)`` pairs in registration order: built-ins first, then plugins in
        the order they were imported."""
        self._load_builtins()
        return list(self._entries.items())

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Call the factory registered under ``name`` with ``kwargs``.

        Options the factory does not accept raise :class:`RegistryError` listing the ones
        it does, before the factory runs (:meth:`check_options`).
        """
        self.check_options(name, **kwargs)
        return self.get(name)(**kwargs)

    def check_options(self, name: str, /, **kwargs: Any) -> None:
        """Raise :class:`RegistryError` (listing the accepted options) when the factory
        registered under ``name`` does not accept ``kwargs``; nothing is called."""
        factory = self.get(name)
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # builtins without a signature: the call decides
            return
        try:
            signature.bind(**kwargs)
        except TypeError as error:
            accepted = [
                p.name
                for p in signature.parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            raise RegistryError(
                f"{self.family} {name!r}: {error}; "
                f"accepted options: {', '.join(accepted) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and interactive use)."""
        self.get(name)
        del self._entries[name]
        del self._facts[name]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._entries)

    def __repr__(self) -> str:  # imports nothing: a repr has no side effects
        if not self._loaded:
            return f"Registry({self.family!r}, builtins={self.builtins!r}, not loaded yet)"
        return f"Registry({self.family!r}, names={sorted(self._entries)})"

    def _unknown_message(self, name: object) -> str:
        known = ", ".join(self.names()) or "(none registered)"
        message = f"unknown {self.family} {name!r}; known: {known}"
        if isinstance(name, str):
            close = difflib.get_close_matches(name, self.names(), n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        return message


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


def load_plugins(
    modules: Iterable[str] = (), *, entry_point_group: str = ENTRY_POINT_GROUP
) -> None:
    """Import user modules that register components, then every installed entry point.

    ``modules`` are importable module names (``my_losses`` or ``pkg.losses``). A module
    that cannot be imported, or whose import raises anything at all (a ``SyntaxError``, a
    ``ZeroDivisionError``, a ``SystemExit``, …), raises :class:`ImportError` with one line
    naming the module and the error; so does an entry point that fails to load.
    """
    from importlib.metadata import entry_points  # ~20 ms: only when plugins are loaded

    for module in modules:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as error:
            raise ImportError(
                f"plugin module {module!r} could not be imported: {one_line(error, with_type=True)}"
            ) from error
    for entry in entry_points(group=entry_point_group):
        try:
            entry.load()
        except (Exception, SystemExit) as error:
            raise ImportError(
                f"plugin entry point {entry.name!r} ({entry.value}, group {entry_point_group!r}) "
                f"could not be loaded: {one_line(error, with_type=True)}"
            ) from error


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _image_shape(value: Any) -> bool:
    return isinstance(value, tuple | list) and len(value) == 3 and all(map(_positive_int, value))


_COST = (_positive_number, "a positive finite number of seconds")

LOSSES: Registry[Any] = Registry("loss", builtins="protolib.losses")
GEOMETRIES: Registry[Any] = Registry("geometry", builtins="protolib.geometry.prototypes")
MODELS: Registry[Any] = Registry(
    "model",
    builtins="protolib.models.builtin",
    fact_checks={"gpu_seconds_per_sample": _COST, "cpu_seconds_per_sample": _COST},
)
DATASETS: Registry[Any] = Registry(
    "dataset",
    builtins="protolib.data.datasets",
    fact_checks={
        "size": (_positive_int, "a positive whole number of images"),
        "num_classes": (_positive_int, "a positive whole number"),
        "image_shape": (_image_shape, "(C, H, W), three positive whole numbers"),
    },
)
#: evaluation metrics: functions of one ``protolib.geometry.panel.MetricContext``
METRICS: Registry[Any] = Registry(
    "metric",
    builtins="protolib.geometry.panel",
    fact_checks={  # where a metric's values are recorded, and when it runs
        "split": (lambda v: v in ("train", "test"), "train or test"),
        "cost": (lambda v: v in ("cheap", "expensive"), "cheap or expensive"),
    },
)
