"""``torch.compile`` of a run's network: the ``compile`` key (README, "Speed on a GPU").

``model`` wraps the module that trains (the network, or its DDP wrapper) in
``torch.compile`` with static shapes: every training batch has the same shape, so it
compiles once, at the first step. The network itself is not replaced: evaluation runs it
eagerly (other batch sizes and eval mode would each compile again), and its parameters
and state-dict names stay those of an eager run, so checkpoints are interchangeable. The
loss step stays eager: a compiled forward-and-loss gives the same losses to float32
round-off on the CPU, but the loss is a small part of a step and the blockwise
contrastive losses (MATH.md §1.10) would unroll their block loops into one graph.

``auto`` compiles on CUDA when Inductor can (Triton and a C compiler present) and runs
eagerly on the CPU, where compiling costs more than it saves on short runs. Nothing here
imports ``torch._dynamo`` unless a network is compiled.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import torch
from torch import nn

from protolib.train.config_json import ConfigError


def missing_toolchain(device_type: str) -> str | None:
    """What Inductor (``torch.compile``'s default backend) needs on this machine for
    ``device_type`` and does not find, or None: on CUDA the ``triton`` package and a C
    compiler (Triton builds its launcher), on the CPU a C++ compiler."""
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "the triton package"
        if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
            return "a C compiler (gcc or clang on PATH, or CC)"
        return None
    compiler = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        return f"a C++ compiler ({compiler!r} is not on PATH; set CXX)"
    return None


def resolve_compile(mode: str, device: torch.device) -> bool:
    """Whether a run with ``compile`` ``mode`` (``auto``, ``model`` or ``eager``) on
    ``device`` compiles its network; :class:`ConfigError` when ``model`` cannot."""
    if mode == "eager":
        return False
    missing = missing_toolchain(device.type)
    if mode == "auto":
        return device.type == "cuda" and missing is None
    if missing is not None:
        raise ConfigError(
            f"compile 'model' on {device.type} needs {missing}, which this machine lacks; "
            "allowed here: compile 'eager', or 'auto' (compiles on CUDA when it can)"
        )
    return True


def compiled(module: nn.Module) -> nn.Module:
    """``module`` compiled for training (static shapes; parameters shared with it)."""
    return torch.compile(module, dynamic=False)  # type: ignore[return-value]
