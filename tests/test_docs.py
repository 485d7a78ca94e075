"""Every shell command that the README and the presets' headers show runs as written.

Commands are collected from the documents themselves: every line of a ```sh block, every
``$ `` line of any fenced block, every inline code span that starts with ``snakemake``,
``.venv/bin/``, ``make`` or ``protolib <subcommand> <argument>``, and the ``#   `` command
lines in the headers of ``config.yaml`` and ``configs/*.yaml``. Each is then run exactly as
written, in a copy of the repository's workflow files whose ``.venv`` is this one:
Snakemake commands as a dry run (``-n`` added: a real run takes minutes to days), ``make``
as ``make -n`` (``make run``'s Snakemake command is then itself dry-run), and everything
else for real. A command this module does not know how to run fails the test, so the
documents cannot show a command that nobody has run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import launcher
from tests.workflow.test_pipeline import TINY_BASE

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
WORKFLOW_FILES = ["Snakefile", "config.yaml", "configs", "workflow", "profiles", "slurm"]
MAKE_FILES = ["Makefile", "pyproject.toml"]
INLINE = re.compile(r"^(snakemake |\.venv/bin/|make [\w-]+( [A-Z_]+=.*)?$|protolib [a-z]+ [^:]+$)")

# the experiments the README's query examples name, at the smallest size
TINY_CONFIG = {
    "results": "results",
    "experiments": {
        "fit": {
            "base": TINY_BASE,
            "losses": {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}},
        },
        "prototypes": {  # evaluated at step 50, which a README query selects
            "base": {**TINY_BASE, "iterations": 50, "eval_every": 50},
            "losses": {"supcon": {"loss": "supcon"}},
            "grid": {"n_w": [10], "imbalance_ratio": [50]},
        },
    },
}


def readme_commands(text: str) -> list[str]:
    """The shell commands shown in a Markdown text (see the module docstring)."""
    commands: list[str] = []
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        language, body = block[1], block[2].replace("\\\n", " ")
        if language == "sh":  # a block is one script: `export …` lines apply to what follows
            lines = [re.sub(r"\s+#.*$", "", line).strip() for line in body.splitlines()]
            lines = [line for line in lines if line and not line.startswith("#")]
            exports = [line for line in lines if line.startswith("export ")]
            for line in lines:
                if not line.startswith("export "):
                    commands.append(" && ".join([*exports, " ".join(line.split())]))
        commands += [line[2:].strip() for line in body.splitlines() if line.startswith("$ ")]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S).replace("\n", " ")
    commands += [span for span in re.findall(r"`([^`]+)`", prose) if INLINE.match(span)]
    return list(dict.fromkeys(commands))


def header_commands(path: Path) -> list[str]:
    """The ``#   command`` lines at the top of a YAML config."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   "):
            commands.append(line[4:].strip())
    return commands


def documented_commands() -> list[str]:
    """Every documented command once; ``.venv/bin/X`` and ``X`` count as one, since the
    venv's ``bin`` comes first on the ``PATH`` the commands run with."""
    commands = readme_commands((ROOT / "README.md").read_text())
    for path in [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        commands += header_commands(path)
    unique: dict[str, str] = {}
    for command in commands:
        unique.setdefault(command.replace(".venv/bin/", ""), command)
    return list(unique.values())


def readme_output(command: str) -> list[str]:
    """The lines the README shows right after ``$ command`` (up to the next ``$`` or fence)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(f"$ {command}") + 1
    shown = []
    for line in lines[start:]:
        if line.startswith(("$ ", "```")):
            break
        shown.append(line)
    return shown


def _copy(names: list[str], target: Path, *, venv: bool = True) -> None:
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    if venv:
        (target / ".venv").symlink_to(VENV)


def _env(workdir: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _shell(command: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``command`` as bash runs it; a plain command line (words and quotes, nothing bash
    would expand or redirect) is split as bash splits it and started by tests.launcher."""
    if re.search(r"[|&;<>()$`*?\[\]{}~\\]|^\w+=", command):
        argv = ["bash", "-c", command]
    else:
        argv = shlex.split(command)
    return launcher.run(argv, cwd=cwd, env=_env(cwd), timeout=timeout)


def _dry(command: str) -> str:
    """``command`` with ``-n`` after every ``snakemake`` word."""
    return re.sub(r"(^|[\s/])snakemake(?=\s)", r"\1snakemake -n", command)


def _ok(result: subprocess.CompletedProcess, command: str) -> None:
    assert result.returncode == 0, (
        f"{command!r} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the workflow (default config and presets) with this venv as ``.venv``."""
    workdir = tmp_path_factory.mktemp("repo")
    _copy([*WORKFLOW_FILES, *MAKE_FILES], workdir)
    return workdir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A workflow copy whose config is a tiny grid with the experiments the README queries,
    run for real: results/ holds aggregates, plots, tables and an MLflow store."""
    workdir = tmp_path_factory.mktemp("tiny")
    _copy(WORKFLOW_FILES, workdir)
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    targets = " ".join(f"results/{e}/tracking.json" for e in TINY_CONFIG["experiments"])
    _ok(_shell(f".venv/bin/snakemake --cores 2 {targets}", workdir), "the tiny pipeline")
    return workdir


def test_every_documented_command_is_checked_here():
    """A command in the documents that this module does not run is a failure."""
    unknown = [c for c in documented_commands() if _runner(c) is None]
    assert not unknown, f"documented commands this test does not run: {unknown}"


def _runner(command: str):
    words = shlex.split(command.split(" && ")[-1])
    program = Path(words[0]).name
    if program == "make":
        return "make"
    if program == "snakemake":
        return "report" if "--report" in words else "snakemake"
    if program == "mlflow" and words[1] == "ui":
        return "mlflow"
    if program == "protolib" and words[1] in {"query", "aggregate"}:
        return "results"
    if program == "protolib" and words[1] in {"bounds", "list", "train"}:
        return "plain"
    return None


def _commands(kind: str) -> list[str]:
    commands = [c for c in documented_commands() if _runner(c) == kind]
    if kind == "snakemake":  # `snakemake X -n all` is the dry run of `snakemake X all`: once
        unique = {tuple(w for w in shlex.split(c) if w != "-n"): c for c in commands}
        commands = list(unique.values())
    return commands


@pytest.mark.parametrize("command", _commands("snakemake"))
def test_snakemake_commands_plan_as_written(repo, command):
    result = _shell(_dry(command), repo)
    _ok(result, command)
    if "--unlock" not in command:
        assert "Job stats:" in result.stdout + result.stderr
    assert not (repo / "results").exists()  # a dry run writes nothing


@pytest.mark.parametrize("command", _commands("make"))
def test_make_commands_do_what_the_readme_says(repo, tmp_path, command):
    """``make -n`` in a fresh checkout (no venv yet) prints the whole recipe: the venv set-up
    with the PyTorch build asked for, then the tests or the pipeline."""
    _copy([*MAKE_FILES, "workflow"], tmp_path, venv=False)
    result = _shell(command.replace("make ", "make -n ", 1), tmp_path)
    _ok(result, command)
    recipe = [line for line in result.stdout.splitlines() if not line.startswith("make[")]
    words = shlex.split(command)
    if words[1:] == ["clean-env"]:
        assert recipe == ["rm -rf .venv"]
        return
    torch = next((w.split("=", 1)[1] for w in words if w.startswith("TORCH=")), "torch==")
    assert any(f"pip install --quiet --no-compile {torch}" in line for line in recipe), recipe
    assert (
        "workflow/scripts/compile_imports.py"
        in recipe[recipe.index("touch .venv/.protolib-installed") - 1]
    )
    if words[1] == "test":  # the suite itself, with the options shown
        pytest_line = next(line for line in recipe if "-m pytest" in line)
        for word in words[2:]:
            if word.startswith("PYTEST_ARGS="):
                assert word.split("=", 1)[1] in pytest_line
    else:  # make run: its Snakemake command, dry-run in a checkout with the venv
        assert words[1:] == ["run"]
        snake = [line for line in recipe if "snakemake" in line]
        assert len(snake) == 1, recipe
        _ok(_shell(_dry(snake[0]), repo), snake[0])
        assert not (repo / "results").exists()


@pytest.mark.parametrize("command", _commands("plain"))
def test_protolib_commands_run_as_written(tmp_path, command):
    (tmp_path / ".venv").symlink_to(VENV)
    if "--config run.json" in command:  # "a JSON object of the keys below"
        (tmp_path / "run.json").write_text(json.dumps({"iterations": 50, "eval_every": 25}))
    if "--batch runs.json" in command:  # two tiny runs, as the README describes the file
        tiny = {"iterations": 20, "eval_every": 10, "probe_iterations": 0}
        runs = [
            {"config": {**tiny, "seed": s}, "out": f"b/{s}", "log": f"b/{s}.log"} for s in (0, 1)
        ]
        (tmp_path / "runs.json").write_text(json.dumps({"runs": runs, "done": "b/done.json"}))
    result = _shell(command, tmp_path)
    _ok(result, command)
    if " bounds " in command:  # the README shows the output: it must be the output
        assert result.stdout.splitlines() == readme_output(command)
    if " train " in command and "--out" in command:
        out = Path(tmp_path, shlex.split(command)[shlex.split(command).index("--out") + 1])
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed"
    if "--batch runs.json" in command:
        for seed in (0, 1):
            summary = json.loads((tmp_path / "b" / str(seed) / "summary.json").read_text())
            assert (summary["status"], summary["seed"]) == ("completed", seed)
            assert summary["run_id"] in (tmp_path / "b" / f"{seed}.log").read_text()
        assert json.loads((tmp_path / "b" / "done.json").read_text()) == {"runs": ["b/0", "b/1"]}


@pytest.mark.parametrize("command", _commands("results"))
def test_result_commands_run_as_written(tiny, tmp_path, command):
    if "RUN_DIR..." in command:  # the placeholders, filled in
        runs = sorted(str(p) for p in (tiny / "results" / "fit" / "runs").iterdir())
        command = command.replace("RUN_DIR...", " ".join(runs)).replace(
            "DIR", str(tmp_path / "agg")
        )
    result = _shell(command, tiny)
    _ok(result, command)
    if " query " in command:  # the columns the README shows
        shown = readme_output(command)
        assert result.stdout.splitlines()[0].split() == shown[0].split()
        assert "(no rows)" not in result.stdout
    else:
        assert sorted(p.name for p in (tmp_path / "agg").iterdir()) == [
            "gamma.parquet",
            "geometry.parquet",
            "metrics.parquet",
            "runs.parquet",
        ]


@pytest.mark.parametrize("command", _commands("report"))
def test_report_command_runs_as_written(tiny, command):
    _ok(_shell(command, tiny), command)
    assert (tiny / "report.html").stat().st_size > 0


@pytest.mark.parametrize("command", _commands("mlflow"))
def test_mlflow_ui_serves_the_store(tiny, command):
    url = re.search(r"http://[\d.]+:\d+", (ROOT / "README.md").read_text())[0]
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as probe:
        if probe.connect_ex((host, int(port))) == 0:
            pytest.fail(f"{url} is already taken by another process; cannot check {command!r}")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=tiny,
        env=_env(tiny),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(search) as page:
                    found = json.loads(page.read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, f"{command!r} did not serve {url} within 60 s"
                time.sleep(0.5)
        names = {e["name"] for e in found.get("experiments", [])}
        assert {f"protolib/{e}" for e in TINY_CONFIG["experiments"]} <= names
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
