"""The slurm profile without a cluster: `snakemake --profile slurm -n all` must plan the
workflow on a machine without SLURM, and the PROTOLIB_SLURM_* variables must reach the
jobs' resources. The time-limit estimate is checked against a hand computation."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from protolib import resources
from protolib.train.config import RunConfig
from tests import launcher

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# the client commands of SLURM's Debian packages
SLURM_COMMANDS = frozenset(
    {
        *("sacct", "sacctmgr", "salloc", "sattach", "sbatch", "sbcast", "scancel", "scontrol"),
        *("scrontab", "sdiag", "sinfo", "sprio", "squeue", "sreport", "srun", "sshare"),
        *("sstat", "strigger", "sview"),
    }
)
SITE = {
    "PROTOLIB_SLURM_ACCOUNT": "lab42",
    "PROTOLIB_SLURM_PARTITION": "cpu",
    "PROTOLIB_SLURM_GPU_PARTITION": "gpu-a",
    "PROTOLIB_SLURM_GPU_MODEL": "h100",
    "PROTOLIB_SLURM_CPUS_PER_GPU": "6",
    "PROTOLIB_SLURM_MEM_PER_GPU_MB": "25000",
}


def _config(tmp_path: Path) -> None:
    run = {"dataset": "digits", "model": "mlp", "iterations": 20, "eval_every": 10}
    config = {
        "experiments": {
            "tiny": {
                "base": run,
                "losses": {
                    "ce": {"loss": "ce"},
                    "supcon": {"loss": "supcon"},
                    # a CIFAR-sized budget: too long to share a job
                    "big": {"loss": "ce", "model": "resnet18_cifar", "iterations": 100000},
                    # pinned to the CPU: no GPU, no GPU settings, never with GPU runs
                    "cpu": {"loss": "ce", "device": "cpu"},
                },
                "grid": {"seed": [0, 1, 2]},
            }
        }
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def _path_without_slurm(tmp_path: Path) -> str:
    """A PATH with every tool of this machine except SLURM's (the venv's first)."""
    farm = tmp_path / "bin-without-slurm"
    farm.mkdir(exist_ok=True)
    for directory in os.environ["PATH"].split(os.pathsep):
        if not Path(directory).is_dir() or Path(directory) == BIN:
            continue
        for tool in Path(directory).iterdir():
            link = farm / tool.name
            if tool.name in SLURM_COMMANDS or link.exists() or link.is_symlink():
                continue
            link.symlink_to(tool)
    path = os.pathsep.join([str(BIN), str(farm)])
    assert not any(shutil.which(name, path=path) for name in SLURM_COMMANDS)
    return path


def _dry_run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm -n all`, run from the repository (so that the profile
    name resolves to ./slurm) with no SLURM command on the PATH."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROTOLIB_SLURM")}
    return launcher.run(
        [
            *(str(BIN / "snakemake"), "--profile", "slurm", "-n", "--verbose", "--cores", "8"),
            *("--directory", str(tmp_path), "all"),
        ],
        cwd=ROOT,
        env={**clean, "PATH": _path_without_slurm(tmp_path), **env},
        timeout=300,
    )


def _train_resources(output: str) -> dict[str, dict[str, str]]:
    """{batch: {resource: value}} from the verbose dry-run listing of train jobs."""
    found = {}
    for block in output.split("rule train:")[1:]:
        batch = re.search(r"batch=([\w.+]+)", block)[1]
        line = re.search(r"resources: (.*)", block)[1]
        found[batch] = dict(item.split("=", 1) for item in line.split(", "))
    return found


# the six short GPU runs share one job (a cluster job costs a round trip: only
# batch_seconds splits them); the ResNet runs (estimated too long) get a job each; the
# three CPU runs share one, never with GPU runs
BATCHES = {"ce_R1_p0_s0+5", "big_R1_p0_s0", "big_R1_p0_s1", "big_R1_p0_s2", "cpu_R1_p0_s0+2"}


def test_dry_run_needs_no_slurm_and_batches_small_runs(tmp_path):
    _config(tmp_path)
    result = _dry_run(tmp_path, {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "results").exists()
    output = result.stdout + result.stderr
    assert "Using profiles slurm" in output
    train = _train_resources(output)
    assert set(train) == BATCHES
    for batch, res in train.items():
        # memory per CPU: 32000 MB for the process and its 8 CPUs
        assert res["cpus_per_gpu"] == "8" and res["mem_mb_per_cpu"] == "4000"
        assert res["gpu"] == ("0" if batch.startswith("cpu") else "1")
        # one process per run: no task settings, so the plugin runs it under `srun -n1`
        assert res["processes"] == "1" and not {"tasks", "tasks_per_gpu", "mpi"} & set(res)
        assert "slurm_account" not in res
        assert res["slurm_partition"] == res["gpu_model"] == "", res
        if not batch.startswith("big"):  # one start-up, a few seconds of runs, twice: 5 min
            assert res["runtime"] == "5", (batch, res)
    # torch threads follow the CPUs per GPU
    assert "--threads 8" in output


def test_site_values_come_from_the_environment(tmp_path):
    _config(tmp_path)
    result = _dry_run(tmp_path, {**SITE, "PROTOLIB_SLURM_TRAIN_RUNTIME": "77"})
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for run_id, res in _train_resources(output).items():
        assert res["slurm_account"] == "lab42"
        if run_id.startswith("cpu"):  # no GPU settings for a CPU run
            assert res["slurm_partition"] == "cpu" and res["gpu_model"] == "", res
        else:
            assert res["slurm_partition"] == "gpu-a" and res["gpu_model"] == "h100", res
        assert res["cpus_per_gpu"] == "6" and res["mem_mb_per_cpu"] == "4167"  # 25000 / 6
        assert res["runtime"] == "77"
    # the override sets the time limit only; the batches follow the estimates
    assert set(_train_resources(output)) == BATCHES
    theory = re.search(r"rule theory:.*?resources: (.*?)\n", output, re.S)[1]
    assert "slurm_account=lab42" in theory and "slurm_partition=cpu" in theory
    assert "--threads 6" in output


def test_runtime_estimate_matches_a_hand_computation():
    run = {
        "dataset": "digits",
        "model": "mlp",
        "iterations": 3000,
        "batch_size": 256,
        "eval_every": 100,
        "views": 2,
    }
    seconds = 120 + 3000 * 256 * 2 * 2e-5 + (3000 // 100 + 1) * 1797 * 2e-5 / 3
    assert resources.estimated_seconds(run) == pytest.approx(seconds)
    assert resources.runtime_minutes([run]) == math.ceil(2 * seconds / 60)
    assert resources.runtime_minutes([run], attempt=3) == 3 * math.ceil(2 * seconds / 60)
    # a batch of runs: one start-up, then each run's training
    batch = 120 + 3 * (seconds - 120)
    assert resources.runtime_minutes([run, run, run]) == math.ceil(2 * batch / 60)
    assert resources.runtime_minutes([run, run, run], attempt=2) == 2 * math.ceil(2 * batch / 60)
    # an epoch budget counts the dataset's batches per epoch
    cifar = {
        "dataset": "cifar10",
        "model": "resnet18_cifar",
        "epochs": 200,
        "iterations": None,
        "batch_size": 512,
        "eval_every": 98,
        "views": 1,
        "dataset_options": {"root": "x"},
    }
    steps = 200 * math.ceil(60000 / 512)
    seconds = 120 + steps * 512 * 2e-4 + (steps // 98 + 1) * 60000 * 2e-4 / 3
    assert resources.estimated_seconds(cifar) == pytest.approx(seconds)
    # defaults come from RunConfig: digits, mlp, 1000 iterations of 256, evaluation every 100
    d = RunConfig()
    assert (d.dataset, d.model, d.iterations, d.batch_size, d.eval_every, d.views) == (
        "digits",
        "mlp",
        1000,
        256,
        100,
        1,
    )
    defaults = 120 + 1000 * 256 * 2e-5 + (1000 // 100 + 1) * 1797 * 2e-5 / 3
    assert resources.estimated_seconds({}) == pytest.approx(defaults)
    assert resources.gpus({}) == 1 and resources.gpus({"device": "cpu"}) == 0


def test_cpu_runs_use_cpu_costs_and_no_gpu_settings(monkeypatch):
    run = {
        "dataset": "cifar10",
        "model": "resnet18_cifar",
        "iterations": 1000,
        "batch_size": 128,
        "eval_every": 500,
        "device": "cpu",
    }
    seconds = 120 + 1000 * 128 * 4e-2 + (1000 // 500 + 1) * 60000 * 4e-2 / 3
    assert resources.estimated_seconds(run) == pytest.approx(seconds)
    tiny = {"dataset": "digits", "model": "mlp", "iterations": 10, "device": "cpu"}
    monkeypatch.setenv("PROTOLIB_SLURM_GPU_MODEL", "a100")
    monkeypatch.setenv("PROTOLIB_SLURM_PARTITION", "general")
    assert resources.gpu_model(tiny) == "" and resources.partition(tiny) == "general"
    assert resources.gpu_model({}) == "a100" and resources.partition({}) == "general"
    monkeypatch.setenv("PROTOLIB_SLURM_TRAIN_RUNTIME", "40")
    assert resources.runtime_minutes([tiny], attempt=2) == 80
    monkeypatch.setenv("PROTOLIB_SLURM_TRAIN_RUNTIME", "1h")
    with pytest.raises(ValueError, match="whole number of minutes, got '1h'"):
        resources.runtime_minutes([tiny])


def test_processes_per_run_ask_for_tasks_and_start_them(tmp_path):
    """PROTOLIB_SLURM_PROCESSES_PER_RUN=2: each train job asks for 2 tasks (and 2 GPUs, one
    per task, for GPU runs) with the `mpi` resource, and its command starts the trainer
    with srun inside a SLURM job, with torchrun elsewhere; the batches stay the same."""
    _config(tmp_path)
    result = _dry_run(tmp_path, {"PROTOLIB_SLURM_PROCESSES_PER_RUN": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    train = _train_resources(output)
    assert set(train) == BATCHES
    for batch, res in train.items():
        gpu_run = not batch.startswith("cpu")
        assert res["processes"] == res["tasks"] == "2" and res["mpi"] == "srun", res
        assert res["gpu"] == ("2" if gpu_run else "0"), res
        assert res.get("tasks_per_gpu") == ("1" if gpu_run else None), res
        assert res["mem_mb_per_cpu"] == "4000", res  # per CPU: the job's memory follows
    assert "srun --ntasks=2 --cpus-per-task=8 --kill-on-bad-exit=1" in output
    assert "torchrun --standalone --nproc-per-node=2 --no-python" in output
    assert "protolib train --batch results/tiny/logs/batches/ce_R1_p0_s0+5.spec.json" in output


def test_the_plugin_turns_the_resources_into_one_task_per_gpu():
    """The SLURM executor plugin's sbatch line for a GPU train job of two processes: two
    GPUs, one task each, the CPUs and memory per CPU of each (the plugin is real; the
    job is the resources the dry run above shows)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    class Resources(dict):
        __getattr__ = dict.__getitem__

    class Job:
        threads = 8

        def __init__(self, **resources):
            self.resources = Resources(resources)

    job = Job(gpu=2, tasks=2, tasks_per_gpu=1, mpi="srun", cpus_per_gpu=8, mem_mb_per_cpu=4000)
    params = dict(
        run_uuid="x", slurm_logfile="log", comment_str="rule_train", account="", partition=""
    )
    line = get_submit_command(job, {**params, "workdir": ""}).split()
    assert {"--ntasks-per-gpu=1", "--ntasks=2", "--cpus-per-gpu=8"} <= set(line), line
    assert line[line.index("--mem-per-cpu") + 1] == "4000", line
    assert not any(flag.startswith("--cpus-per-task") for flag in line), line


def test_a_batch_the_processes_cannot_share_is_refused_when_planned(tmp_path):
    """One line naming the variable, its value, the run and the batch size; exit 2;
    nothing written, before any job is queued."""
    run = {"dataset": "digits", "model": "mlp", "iterations": 20, "batch_size": 30}
    config = {"experiments": {"tiny": {"base": run, "losses": {"ce": {"loss": "ce"}}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = _dry_run(tmp_path, {"PROTOLIB_SLURM_PROCESSES_PER_RUN": "4"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("protolib: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines == [
        "protolib: PROTOLIB_SLURM_PROCESSES_PER_RUN is 4; run ce_R1_p0_s0: batch_size 30 does "
        "not split into 4 equal shards, one per process; allowed: a multiple of 4 (or another "
        "number of processes)"
    ], result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / ".snakemake").exists()


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5", "4097"])
def test_processes_per_run_is_an_integer_in_range(monkeypatch, value):
    monkeypatch.setenv("PROTOLIB_SLURM_PROCESSES_PER_RUN", value)
    with pytest.raises(
        ValueError, match=rf"PROCESSES_PER_RUN must be an integer in 1..4096 .*got '{value}'"
    ):
        resources.processes_per_run()
    for value, expected in (("", 1), ("1", 1), (" 8 ", 8)):
        monkeypatch.setenv("PROTOLIB_SLURM_PROCESSES_PER_RUN", value)
        assert resources.processes_per_run() == expected


def test_binding_points_the_processes_cannot_share_are_refused():
    """The bound points of a batch (binding × the dataset's classes) split as well."""
    runs = {"r": {"dataset": "digits", "batch_size": 64, "binding": 1}}  # 10 bound points
    resources.check_processes(runs, 2)
    with pytest.raises(ValueError, match=r"run r: binding 1 adds 10 bound points .* 4 equal"):
        resources.check_processes(runs, 4)
    resources.check_processes({"r": {"batch_size": 30}}, 1)  # one process: anything goes
