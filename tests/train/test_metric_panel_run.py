"""The neural-collapse panel in a real run (MATH.md §3): cheap metrics at every evaluation,
expensive ones (kNN accuracy, uniformity) at the final one only, test metrics under the
``test`` split, class-size groups from the training counts before label corruption."""

from __future__ import annotations

import pandas as pd
import pytest

from protolib.data.datasets import load_dataset
from protolib.train import train_run
from tests.conftest import tiny_run

EVERY = {
    ("train", "effective_rank"),
    ("train", "alignment"),
    ("train", "cdnv"),
    ("test", "ncc_agreement"),
    ("test", "accuracy_many"),
    ("test", "accuracy_few"),
}
FINAL = {("train", "uniformity"), ("test", "knn_accuracy")}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A supcon run on digits with step imbalance R = 10 and 20 % label corruption:
    evaluations at steps 2 and 4; its metrics and data tables."""
    out = tmp_path_factory.mktemp("panel") / "run"
    config = tiny_run(loss="supcon", imbalance_ratio=10, label_corruption=0.2, threads=1)
    train_run(config, out, progress=False)
    return pd.read_parquet(out / "metrics.parquet"), pd.read_parquet(out / "data.parquet")


def steps_of(metrics: pd.DataFrame, split: str, name: str) -> list[int]:
    rows = metrics[(metrics.split == split) & (metrics.metric == name)]
    return sorted(rows.step)


def test_cheap_metrics_at_every_evaluation_expensive_at_the_final_one(run):
    metrics, _ = run
    for split, name in EVERY:
        assert steps_of(metrics, split, name) == [2, 4], (split, name)
    for split, name in FINAL:
        assert steps_of(metrics, split, name) == [4], (split, name)
    final = metrics[metrics.step == 4].set_index(["split", "metric"]).value
    assert 0.0 <= final[("test", "knn_accuracy")] <= 1.0
    assert -4.0 <= final[("train", "uniformity")] <= 0.0  # log E exp(−2‖·‖²), unit rows
    assert 0.0 <= final[("test", "ncc_agreement")] <= 1.0


def test_group_accuracies_partition_the_test_accuracy(run):
    """Step imbalance R = 10 on digits: classes 0–4 keep about 144 images (many), 5–9
    about 14 (few), none medium. The test accuracy is the group accuracies weighted by
    their test points; the groups come from the labels before corruption."""
    metrics, data = run
    counts = data.label.value_counts().sort_index()
    assert counts.loc[:4].min() > 100 and counts.loc[5:].max() < 20
    # corruption moves labels, yet the grouping is by the uncorrupted counts
    assert (data.label != data.train_label).any()
    test_labels = load_dataset("digits").test.labels
    final = metrics[metrics.step == 4].set_index(["split", "metric"]).value
    many, few = (test_labels <= 4).sum().item(), (test_labels >= 5).sum().item()
    assert ("test", "accuracy_medium") not in final  # no class: no value, not 0
    weighted = (many * final[("test", "accuracy_many")] + few * final[("test", "accuracy_few")]) / (
        many + few
    )
    assert weighted == pytest.approx(final[("test", "accuracy")], abs=1e-12)
