"""``protolib._lazy.lazy_exports``: a real package whose names load their module on first
access, in a fresh interpreter (so what is imported when is seen, not assumed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = {
    "__init__.py": """
        from protolib._lazy import lazy_exports

        _EXPORTS = {"VALUE": "pkg.heavy", "helper": "pkg.heavy", "sub": "pkg.sub"}
        __all__ = [*sorted(_EXPORTS), "__version__"]
        CALLS = []

        def _version():
            CALLS.append("version")
            return "1.2.3"

        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, {"__version__": _version})
    """,
    "heavy.py": """
        VALUE = 42

        def helper():
            return "helped"
    """,
    "sub.py": "NAME = 'sub'\n",
}

CHECK = """
    import sys
    import pkg
    assert "pkg.heavy" not in sys.modules and "pkg.sub" not in sys.modules
    assert "VALUE" in dir(pkg) and "sub" in dir(pkg) and "CALLS" in dir(pkg)
    assert pkg.VALUE == 42 and "pkg.heavy" in sys.modules and "pkg.sub" not in sys.modules
    assert pkg.__dict__["VALUE"] == 42  # stored: later reads do not call __getattr__
    assert pkg.helper() == "helped"
    assert pkg.sub is sys.modules["pkg.sub"] and pkg.sub.NAME == "sub"
    assert (pkg.__version__, pkg.__version__, pkg.CALLS) == ("1.2.3", "1.2.3", ["version"])
    from pkg import VALUE, sub
    assert (VALUE, sub.NAME) == (42, "sub")
    try:
        pkg.missing
    except AttributeError as error:
        assert str(error) == "module 'pkg' has no attribute 'missing'", error
    else:
        raise AssertionError("no AttributeError")
    print("ok")
"""


def test_names_load_their_module_on_first_access_only(tmp_path: Path):
    package = tmp_path / "pkg"
    package.mkdir()
    for name, text in PACKAGE.items():
        (package / name).write_text(textwrap.dedent(text))
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECK)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout == "ok\n"


def test_the_packages_use_it_and_stay_light():
    """protolib, protolib.models and protolib.theory export lazily: importing them (and
    listing their names) loads neither torch nor scipy."""
    code = textwrap.dedent(
        """
        import sys
        import protolib, protolib.models, protolib.theory
        heavy = {"torch", "scipy"} & set(sys.modules)
        assert not heavy, heavy
        assert {"losses", "__version__"} <= set(dir(protolib))
        assert {"build_network", "Network"} <= set(dir(protolib.models))
        assert "supcon_bound" in dir(protolib.theory) and "scipy" not in sys.modules
        print("ok")
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout == "ok\n"
