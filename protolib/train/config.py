"""The run config: one model, one loss, one dataset variant (``protolib train --config``).

A run config is a flat JSON object; every field has its one default here. Validation
happens before any work: unknown keys, unknown registry names, out-of-range values, NaN
or infinite numbers anywhere (options included) and duplicate keys each raise
:class:`ConfigError` with one line that says what was wrong and what is allowed.

Integer fields have upper bounds no real run reaches (``INT_RANGES``); a value beyond one
is a typo or a unit mistake, refused before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protolib.choices import CORRUPTION_MODES, PROJECTOR_KINDS, SAMPLINGS
from protolib.data import DEFAULT_MINORITY_FRACTION, IMBALANCE_KINDS
from protolib.io import one_line
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, MODELS, load_plugins
from protolib.train.config_json import (
    ConfigError,
    check_finite,
    json_kind,
    parse_config_json,
    read_config_file,
)

SCHEDULES = ("constant", "step", "cosine", "poly")
DEVICES = ("auto", "cpu", "cuda")
#: ``compile``: ``model`` wraps the network in ``torch.compile``, ``eager`` does not,
#: ``auto`` is ``model`` on CUDA (when Triton and a C compiler are there) and ``eager`` on
#: the CPU
COMPILE_MODES = ("auto", "model", "eager")
#: ``sgd_impl``: torch's SGD kernels: one tensor at a time (``loop``), grouped
#: (``foreach``) or one fused kernel (``fused``); ``auto`` is ``fused`` on CUDA and
#: ``foreach`` on the CPU (bit for bit ``loop`` there)
SGD_IMPLS = ("auto", "loop", "foreach", "fused")
#: string keys whose type error lists their allowed values
_CHOICE_KEYS = {"compile": COMPILE_MODES, "sgd_impl": SGD_IMPLS}
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")

MAX_STEPS = 10**9  # iterations, eval_every, checkpoint_every, probe_iterations, milestones
MAX_BATCH_SIZE = 2**20
MAX_SEED = 2**32 - 1  # what numpy's and torch's seeding both accept everywhere
# The allowed range of each integer field (None is allowed where the default allows it).
INT_RANGES: dict[str, tuple[int, int]] = {
    "iterations": (1, MAX_STEPS),
    "epochs": (1, 10**6),
    "batch_size": (1, MAX_BATCH_SIZE),
    "eval_batch_size": (1, MAX_BATCH_SIZE),
    "views": (1, 64),
    "crop_padding": (0, 1024),  # and at most the image's height and width (train.run)
    "n_w": (0, 10_000),
    "binding": (0, 10_000),  # and at most the smallest class's training points (train.build)
    "bound_batches": (0, 10**6),
    "warmup": (0, MAX_STEPS),
    "projector_dim": (1, 2**16),
    "eval_every": (1, MAX_STEPS),
    "checkpoint_every": (1, MAX_STEPS),
    "probe_iterations": (0, MAX_STEPS),
    "threads": (1, 1024),
    "seed": (0, MAX_SEED),
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run. See the README for each field."""

    run_id: str = "run"
    experiment: str = "default"
    plugins: tuple[str, ...] = ()
    # data (MATH.md §6)
    dataset: str = "digits"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    balance: bool = False  # subsample every class to the smallest one's size, first
    imbalance: str = "step"  # "step" or "exp" (exponential, long-tailed)
    imbalance_ratio: float = 1.0
    minority_fraction: float = DEFAULT_MINORITY_FRACTION  # STEP's μ: the last ⌊μK⌋ classes
    label_corruption: float = 0.0
    validation_fraction: float = 0.0  # held out of the training points, per class (§6)
    corruption_mode: str = "other"
    # model
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    projector: str = "none"
    projector_dim: int = 128
    # loss and prototypes (MATH.md §1–2)
    loss: str = "ce"
    loss_name: str | None = None  # the loss variant's name in results; defaults to loss
    loss_options: dict[str, Any] = field(default_factory=dict)
    n_w: int = 0
    geometry: str = "etf"
    geometry_options: dict[str, Any] = field(default_factory=dict)
    # optimisation (MATH.md §7)
    batch_size: int = 256
    sampling: str = "replacement"
    binding: int = 0  # bound points per class appended to every batch (MATH.md §6)
    views: int = 1
    crop_padding: int = 0
    flip: bool = False
    iterations: int | None = 1000
    epochs: int | None = None
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    lr_factor: float = 0.1
    poly_power: float = 5.0
    warmup: int = 0  # linear warm-up, in iterations (in epochs when epochs is set)
    # evaluation
    eval_every: int = 100
    eval_batch_size: int = 1024
    probe_iterations: int = 1000
    probe_lr: float = 0.1
    metric_options: dict[str, Any] = field(default_factory=dict)  # MATH.md §3 panel options
    bound_batches: int = 1000  # batches of the trained-network bound comparison (MATH.md §4)
    # execution
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    threads: int | None = None
    checkpoint_every: int = 500
    compile: str = "auto"  # COMPILE_MODES (README, "Speed on a GPU")
    sgd_impl: str = "auto"  # SGD_IMPLS
    # several processes (torchrun): batch norm over the global batch; no effect in one
    sync_batchnorm: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate a config from a mapping (unknown keys are an error)."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"a run config must be a JSON object ({{...}}), got {json_kind(data)}"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown run config key {unknown[0]!r}; allowed keys: {', '.join(names)}"
            )
        config = cls.unchecked(data)
        config.validate()
        return config

    @classmethod
    def unchecked(cls, data: dict[str, Any]) -> RunConfig:
        """A config from a mapping of known keys, not validated: for a config validated
        before (the pipeline's planned runs), where :meth:`from_dict` would check again."""
        values = dict(data)
        for key in ("plugins", "milestones"):
            if key in values and isinstance(values[key], list):
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        """Read, parse and validate a run config JSON file."""
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["plugins"] = list(self.plugins)
        data["milestones"] = list(self.milestones)
        return data

    @property
    def grid_keys(self) -> dict[str, Any]:
        """The grid coordinates of this run (columns of every results table): the loss
        variant and each axis of :mod:`protolib.results.contract`, of its Python type."""
        # imported here: protolib.results imports pyarrow and DuckDB, which a refused
        # config never needs
        from protolib.results.contract import AXES, LOSS

        return {
            LOSS.name: self.loss_name or self.loss,
            **{axis.name: axis.python(getattr(self, axis.name)) for axis in AXES},
        }

    def loss_needs(self) -> Any:
        """What the run's loss needs from the model (a :class:`~protolib.losses.LossNeeds`;
        a composite loss's depend on its ``loss_options``), or :class:`ConfigError` naming
        ``loss_options`` when the loss refuses them."""
        try:
            return LOSSES.get(self.loss).needs_for(self.loss_options)
        except ValueError as error:
            raise ConfigError(f"loss_options: {one_line(error, 300)}") from None

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` on the first problem."""
        # long: one short check per field, in one place, so each rule is found by its key
        _check_type(self)
        for f in dataclasses.fields(self):
            if f.name not in INT_RANGES and f.name != "milestones":  # those have ranges
                check_finite(getattr(self, f.name), f.name)
        if not RUN_ID_PATTERN.match(self.run_id):
            raise ConfigError(
                f"run_id {self.run_id!r} must start with a letter or digit and contain only "
                "letters, digits and . _ = , + -"
            )
        try:
            load_plugins(self.plugins)
        except ImportError as error:
            raise ConfigError(str(error)) from None
        _check_name("dataset", self.dataset, DATASETS.names())
        if not self.model.startswith("timm:"):
            _check_name("model", self.model, [*MODELS.names(), "timm:<name>"], MODELS.names())
        _check_name("loss", self.loss, LOSSES.names())
        if self.loss_name is not None and not RUN_ID_PATTERN.match(self.loss_name):
            raise ConfigError(
                f"loss_name {self.loss_name!r} must start with a letter or digit and contain "
                "only letters, digits and . _ = , + -"
            )
        _check_name("geometry", self.geometry, GEOMETRIES.names())
        _check_choice("projector", self.projector, PROJECTOR_KINDS)
        _check_choice("sampling", self.sampling, SAMPLINGS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("compile", self.compile, COMPILE_MODES)
        _check_choice("sgd_impl", self.sgd_impl, SGD_IMPLS)
        _check_choice("corruption_mode", self.corruption_mode, CORRUPTION_MODES)
        _check_choice("imbalance", self.imbalance, IMBALANCE_KINDS)
        if not self.imbalance_ratio >= 1:
            raise ConfigError(
                f"imbalance_ratio must be a number >= 1, got {self.imbalance_ratio!r}"
            )
        if not 0 < self.minority_fraction <= 1:
            raise ConfigError(
                f"minority_fraction must be in (0, 1], got {self.minority_fraction!r}"
            )
        if self.imbalance != "step" and self.minority_fraction != DEFAULT_MINORITY_FRACTION:
            raise ConfigError(
                f"minority_fraction {self.minority_fraction!r} applies to imbalance 'step' "
                f"only, got imbalance {self.imbalance!r}; leave minority_fraction at "
                f"{DEFAULT_MINORITY_FRACTION} or use imbalance 'step'"
            )
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}"
            )
        if not 0 <= self.label_corruption <= 1:
            raise ConfigError(f"label_corruption must be in [0, 1], got {self.label_corruption!r}")
        for key, (low, high) in INT_RANGES.items():
            value = getattr(self, key)
            if value is not None and not low <= value <= high:
                nullable = " or null" if key in ("iterations", "epochs", "threads") else ""
                raise ConfigError(
                    f"{key} must be an integer in {low}..{high}{nullable}, got {value!r}"
                )
        if {"n_w", "prototypes", "priors"} & set(self.loss_options):
            raise ConfigError(
                "loss_options may not set n_w, prototypes or priors; use the n_w and geometry "
                "keys (class priors come from the run's training labels)"
            )
        uses_prototypes = self.loss_needs().prototypes
        if self.n_w > 0 and uses_prototypes != "optional":
            raise ConfigError(
                f"loss {self.loss!r} does not take n_w (prototype copies); set n_w to 0 "
                f"(losses that take n_w: {', '.join(_losses_with_n_w())})"
            )
        if self.metric_options:
            from protolib.geometry.panel import check_metric_options

            try:
                check_metric_options(self.metric_options)
            except ValueError as error:
                raise ConfigError(one_line(error, 300)) from None
        if (self.iterations is None) == (self.epochs is None):
            raise ConfigError("set exactly one of iterations and epochs (the other to null)")
        for key in ("lr", "probe_lr", "lr_factor", "poly_power"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be a finite number > 0, got {getattr(self, key)!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ConfigError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if self.schedule == "step" and not self.milestones:
            raise ConfigError(
                "schedule 'step' needs milestones (iterations, or epochs when epochs is set)"
            )
        if list(self.milestones) != sorted(set(self.milestones)) or any(
            not 1 <= m <= MAX_STEPS for m in self.milestones
        ):
            raise ConfigError(
                f"milestones must be increasing integers in 1..{MAX_STEPS}, "
                f"got {list(self.milestones)}"
            )


def _check_type(config: RunConfig) -> None:
    """Each field has the type of its default (ints accepted for floats, None where allowed)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = str(f.type)
        allowed: tuple[type, ...]
        if hint.startswith("dict"):
            allowed = (dict,)
        elif hint.startswith("tuple"):
            allowed = (tuple,)
        elif hint.startswith("bool"):
            allowed = (bool,)
        elif hint.startswith("int"):
            allowed = (int,)
        elif hint.startswith("float"):
            allowed = (int, float)
        else:
            allowed = (str,)
        if value is None and "None" in hint:
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if ok and f.name in ("plugins",):
            ok = all(isinstance(v, str) for v in value)
        if ok and f.name == "milestones":
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok:
            expected = {
                dict: "an object",
                tuple: "a list",
                bool: "true or false",
                int: "an integer",
                float: "a number",
                str: "a string",
            }[allowed[-1]]
            if "None" in hint:
                expected += " or null"
            if f.name in _CHOICE_KEYS:
                expected = f"one of {', '.join(_CHOICE_KEYS[f.name])}"
            raise ConfigError(f"{f.name} must be {expected}, got {value!r}")


def _check_name(key: str, value: str, shown: list[str], known: list[str] | None = None) -> None:
    if value not in (known if known is not None else shown):
        raise ConfigError(f"unknown {key} {value!r}; known: {', '.join(shown)}")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _losses_with_n_w() -> list[str]:
    takes = [name for name in LOSSES.names() if LOSSES.get(name).needs.prototypes == "optional"]
    return [*takes, "composite with such a part"]


__all__ = [
    "COMPILE_MODES",
    "INT_RANGES",
    "MAX_SEED",
    "SGD_IMPLS",
    "ConfigError",
    "RunConfig",
    "check_finite",
    "parse_config_json",
    "read_config_file",
]
