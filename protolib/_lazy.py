"""Lazy exports: a package's names load their module on first attribute access.

A package that re-exports names from heavy submodules (torch, scipy) lists them as
``name → module`` and lets :func:`lazy_exports` write its ``__getattr__`` and
``__dir__``, so importing the package, or one light submodule, imports nothing else.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    module_name: str,
    exports: Mapping[str, str],
    computed: Mapping[str, Callable[[], Any]] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of the module ``module_name``.

    Args:
        module_name: the module they serve (its ``__name__``).
        exports: exported name → the module that defines it; a name whose module is
            ``<module_name>.<name>`` is that submodule itself.
        computed: name → a function computing its value (``__version__``).

    Each value is looked up once, then stored in the module (later accesses are plain
    attribute reads). ``__dir__`` lists the module's globals and its ``__all__``.
    """
    factories = dict(computed or {})

    def module_getattr(name: str) -> Any:
        if name in factories:
            value = factories[name]()
        elif name in exports:
            module = importlib.import_module(exports[name])
            own = exports[name] == f"{module_name}.{name}"
            value = module if own else getattr(module, name)
        else:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        setattr(sys.modules[module_name], name, value)
        return value

    def module_dir() -> list[str]:
        module = sys.modules[module_name]
        return sorted({*vars(module), *getattr(module, "__all__", ())})

    return module_getattr, module_dir
