"""Train jobs that are batches of runs, in the real workflow: a failing run loses no finished
run of its batch, and a fixed or edited run is the only one trained again."""

from __future__ import annotations

import json

import yaml

from tests.conftest import tiny_grid
from tests.workflow.test_pipeline import job_counts, snakemake

TARGET = "results/tiny/aggregate/runs.parquet"


def stamps(runs) -> dict[str, int]:
    return {
        p.name: (p / "summary.json").stat().st_mtime_ns
        for p in runs.iterdir()
        if (p / "summary.json").exists()
    }


def test_a_failing_run_loses_nothing_and_only_changed_runs_train_again(tmp_path):
    def config(ce_options: dict) -> dict:
        losses = {"ce": {"loss": "ce", "loss_options": ce_options}, "supcon": {"loss": "supcon"}}
        return tiny_grid(losses, {"seed": [0, 1]}, base={"iterations": 20})

    runs = tmp_path / "results" / "tiny" / "runs"
    # an option the loss does not take is only found when the run is built: ce fails
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config({"bogus": 1})))
    failed = snakemake(tmp_path, TARGET, "--keep-going")
    assert failed.returncode != 0
    assert set(stamps(runs)) == {"supcon_nw0_R1_p0_s0", "supcon_nw0_R1_p0_s1"}
    log = (tmp_path / "results" / "tiny" / "logs" / "train" / "ce_R1_p0_s0.log").read_text()
    assert "bogus" in log, log
    kept = stamps(runs)

    # fixed: only the two ce runs train; the finished supcon runs are not touched
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config({})))
    fixed = snakemake(tmp_path, TARGET)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    after = stamps(runs)
    assert set(after) == {"ce_R1_p0_s0", "ce_R1_p0_s1", *kept}
    assert {r: after[r] for r in kept} == kept

    # an edited variant: its runs train again, their old outputs kept aside; nothing else
    edited = config({})
    edited["experiments"]["tiny"]["losses"]["ce"]["iterations"] = 25
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(edited))
    again = snakemake(tmp_path, TARGET)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds another config than the experiment's (iterations differ)" in again.stderr
    assert job_counts(again.stdout + again.stderr)["aggregate"] == 1
    final = stamps(runs)
    for run_id in ("ce_R1_p0_s0", "ce_R1_p0_s1"):
        assert final[run_id] > after[run_id]
        assert json.loads((runs / run_id / "config.json").read_text())["iterations"] == 25
        (old,) = (runs / run_id / ".corrupt").iterdir()
        assert json.loads((old / "config.json").read_text())["iterations"] == 20
    assert {r: final[r] for r in kept} == kept
