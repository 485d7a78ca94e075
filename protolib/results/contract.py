"""The results contract: what the pipeline, the trainer and the tables agree on, once.

- The key columns every results table starts with: a run's identity (``run_id``,
  ``experiment``) and its grid point (the loss variant ``loss`` and the :data:`AXES`
  ``n_w``, ``imbalance_ratio``, ``imbalance``, ``minority_fraction``,
  ``label_corruption``, ``seed``), each axis with its Arrow and Python type, its default
  and its spelling in a run id.
- The columns of the four tables (:data:`TABLES`): ``runs`` (one row per run, from
  ``summary.json``), ``metrics``, ``geometry`` and ``gamma``; and the keys of
  ``summary.json`` that ``runs.parquet`` does not hold (:data:`SUMMARY_ONLY`).
- The file names of a run directory and of an experiment's aggregate.

Standard library only (no pyarrow, no DuckDB); the
Arrow schemas are built from it in :mod:`protolib.results.schema`, which re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """A column of a results table: ``arrow`` names its pyarrow type (``pa.int64()``)."""

    name: str
    arrow: str  # "string", "int64", "float64" or "bool_"
    nullable: bool = True


@dataclass(frozen=True)
class Axis(Column):
    """A grid axis: its column, the Python type of its values in the tables (``int``,
    ``float`` or ``str``), the value of a grid point that does not set it, its tag in a run
    id (``nw`` in ``supcon_nw10_R10_p0.2_s0``; a string axis's value follows its tag
    as it is, ``exp`` with the empty tag), and whether a run id leaves out the axis at
    its default (an axis added after run ids were published, so that they stay)."""

    python: type = int
    #: the value the pipeline writes into a run config unchanged: an integer for a
    #: numeric axis (1 == 1.0) unless its default is not one, a string for a string axis
    default: int | float | str = 0
    tag: str = ""
    omit_default: bool = False


RUN_ID = Column("run_id", "string", nullable=False)
EXPERIMENT = Column("experiment", "string", nullable=False)
#: the loss variant's name (a run config's ``loss_name``, else its ``loss``)
LOSS = Column("loss", "string", nullable=False)
N_W = Axis("n_w", "int64", nullable=False, python=int, default=0, tag="nw")
IMBALANCE_RATIO = Axis(
    "imbalance_ratio", "float64", nullable=False, python=float, default=1, tag="R"
)
#: the kind of class imbalance (MATH.md §6): ``step`` (left out of run ids) or ``exp``
IMBALANCE = Axis(
    "imbalance", "string", nullable=False, python=str, default="step", omit_default=True
)
#: STEP's minority fraction μ (MATH.md §6): ``_mu0.3`` in a run id unless it is 0.5
MINORITY_FRACTION = Axis(
    "minority_fraction",
    "float64",
    nullable=False,
    python=float,
    default=0.5,
    tag="mu",
    omit_default=True,
)
LABEL_CORRUPTION = Axis(
    "label_corruption", "float64", nullable=False, python=float, default=0, tag="p"
)
SEED = Axis("seed", "int64", nullable=False, python=int, default=0, tag="s")

#: the grid axes, in run-id order
AXES: tuple[Axis, ...] = (
    N_W,
    IMBALANCE_RATIO,
    IMBALANCE,
    MINORITY_FRACTION,
    LABEL_CORRUPTION,
    SEED,
)
AXIS_NAMES = tuple(axis.name for axis in AXES)
#: a run's grid point: the loss variant and the axes
GRID_COLUMNS = (LOSS.name, *AXIS_NAMES)
#: the columns every results table starts with (each row repeats them)
KEY_COLUMNS: tuple[Column, ...] = (RUN_ID, EXPERIMENT, LOSS, *AXES)


def _columns(*spec: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, arrow) for name, arrow in spec)


#: the metric panel's figures in the runs table (MATH.md §3): recorded under the ``test``
#: and the ``train`` split of ``metrics.parquet``, their last values in ``runs.parquet``
PANEL_TEST = ("accuracy_many", "accuracy_medium", "accuracy_few", "knn_accuracy", "ncc_agreement")
PANEL_TRAIN = ("effective_rank", "cdnv", "alignment", "uniformity")

#: ``runs.parquet`` after the key columns: the figures of ``summary.json``
RUNS_FIGURES = _columns(
    ("loss_type", "string"),
    ("dataset", "string"),
    ("model", "string"),
    ("geometry", "string"),
    ("status", "string"),
    ("iterations", "int64"),
    ("epochs", "float64"),
    ("time_to_fit", "int64"),
    ("fitted", "bool_"),
    ("train_error", "float64"),
    ("test_accuracy", "float64"),
    ("mean_classifier_accuracy", "float64"),
    ("probe_accuracy", "float64"),
    ("delta_g", "float64"),
    # the metric panel at the last evaluation (MATH.md §3): test accuracy per class-size
    # group (null when the group has no class), kNN and nearest-class-mean agreement on
    # the test set, and the collapse statistics of the training embeddings
    *((name, "float64") for name in (*PANEL_TEST, *PANEL_TRAIN)),
    ("n_train", "int64"),
    ("n_corrupted", "int64"),
    # SHA-256 of the kept training indices and their training labels (MATH.md §6;
    # protolib.data.transforms.split_sha256): equal for runs that train on the same data
    ("split_sha256", "string"),
    ("balance", "bool_"),
    ("binding", "int64"),
    # trained network against its loss bound (MATH.md §4, last bullet): which bound, the
    # attained loss, the bound and their difference; null unless the run's training labels
    # are exactly balanced and its loss has a bound (supcon, a CE head)
    ("bound_kind", "string"),
    ("bound_attained", "float64"),
    ("bound_value", "float64"),
    ("bound_gap", "float64"),
    ("wall_seconds", "float64"),
    ("train_seconds", "float64"),
    # the training steps' seconds on the device's clock (CUDA events, evaluations left
    # out); null on the CPU, and for a run not every step of which was timed so
    ("train_seconds_device", "float64"),
    ("images_per_second", "float64"),
    ("device", "string"),
    ("git_revision", "string"),
)

#: table name → its columns (the key columns first); ``metrics`` is long format, one row
#: per step × split × metric; ``geometry`` final K×K matrices, one row per entry;
#: ``gamma`` histograms of the final γ distributions
TABLES: dict[str, tuple[Column, ...]] = {
    "runs": (*KEY_COLUMNS, *RUNS_FIGURES),
    "metrics": (
        *KEY_COLUMNS,
        Column("step", "int64", nullable=False),
        Column("epoch", "float64", nullable=False),
        Column("split", "string", nullable=False),
        Column("metric", "string", nullable=False),
        Column("value", "float64"),
    ),
    "geometry": (
        *KEY_COLUMNS,
        Column("matrix", "string", nullable=False),
        Column("row", "int64", nullable=False),
        Column("col", "int64", nullable=False),
        Column("value", "float64"),
    ),
    "gamma": (
        *KEY_COLUMNS,
        Column("distribution", "string", nullable=False),
        Column("lower", "float64", nullable=False),
        Column("upper", "float64", nullable=False),
        Column("count", "int64", nullable=False),
    ),
}

# -- files ------------------------------------------------------------------------------

SUMMARY = "summary.json"  # written last: its presence marks a finished run
CONFIG = "config.json"  # the resolved run config
METRICS = "metrics.parquet"
GEOMETRY = "geometry.parquet"
GAMMA = "gamma.parquet"
DATA = "data.parquet"  # the training points used
CHECKPOINT = "checkpoint.pt"  # the final state
RESUME = "resume.pt"  # the periodic state while training; removed when the run completes
RUNS = "runs.parquet"  # an aggregate's runs table (the others keep the per-run names)
#: the key of ``summary.json`` that holds the manifest of the run's other files
MANIFEST_KEY = "manifest"
#: the declared outputs of a run besides summary.json, in the order they are written
RUN_FILES = (CONFIG, METRICS, GEOMETRY, GAMMA, DATA, CHECKPOINT)
#: table name → its file, in an aggregate; the per-run tables (all but ``runs``) have the
#: same name in a run directory
TABLE_FILES = {"runs": RUNS, "metrics": METRICS, "geometry": GEOMETRY, "gamma": GAMMA}

#: keys of ``summary.json`` besides the ``runs`` columns (not in ``runs.parquet``)
SUMMARY_ONLY = (
    "final",
    "n_test",
    "class_counts",
    "device_type",
    "versions",
    "hostname",
    "pid",
    "attempts",
    "bounds",
    MANIFEST_KEY,
)
