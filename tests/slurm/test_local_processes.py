"""PROTOLIB_SLURM_PROCESSES_PER_RUN off a cluster: `snakemake --cores N` trains each run of
a train job on that many processes, started with `torchrun --standalone` (outside a SLURM
job the rule's command has no srun to call)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from tests import launcher
from tests.conftest import tiny_run

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN = tiny_run(
    device="cpu",
    iterations=10,
    eval_every=5,
    batch_size=32,
    probe_iterations=0,
    model_options={"widths": [16], "out_dim": 8},
    threads=1,
)
RUN_IDS = ("ce_R1_p0_s0", "supcon_nw0_R1_p0_s0")


def test_a_local_train_job_starts_its_processes_with_torchrun(tmp_path):
    config = {"experiments": {"pair": {"base": RUN, "losses": {"ce": {"loss": "ce"}}}}}
    config["experiments"]["pair"]["losses"]["supcon"] = {"loss": "supcon"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["PROTOLIB_SLURM_PROCESSES_PER_RUN"] = "2"
    marker = "results/pair/batches/ce_R1_p0_s0+1.json"  # one core: one job for both runs
    result = launcher.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--cores", "1", marker],
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results" / "pair"
    outs = [f"results/pair/runs/{run_id}" for run_id in RUN_IDS]
    assert json.loads((tmp_path / marker).read_text()) == {"runs": outs}
    log = (results / "logs" / "batches" / "ce_R1_p0_s0+1.log").read_text()
    for run_id in RUN_IDS:
        summary = json.loads((results / "runs" / run_id / "summary.json").read_text())
        assert [attempt["processes"] for attempt in summary["attempts"]] == [2]
        assert summary["status"] == "completed"
        assert log.count(f"{run_id}: completed; time to fit") == 1, log  # rank 0 alone
