"""One training run: config, loop, evaluation, probe, checkpoints, outputs."""

from protolib.train.config import ConfigError, RunConfig
from protolib.train.run import RunInterrupted, prepare, train_run

__all__ = ["ConfigError", "RunConfig", "RunInterrupted", "prepare", "train_run"]
