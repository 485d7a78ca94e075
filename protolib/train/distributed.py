"""The process group of one run trained on several processes (``torchrun`` or ``srun``;
MATH.md §1.10).

:func:`launch_from_environment` reads what the launcher set. ``torchrun``'s variables
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) win when
``WORLD_SIZE`` is set. Otherwise, a task of an ``srun`` job step with several tasks
(``SLURM_STEP_NUM_TASKS`` ≥ 2, a variable only ``srun`` sets: a batch script with
``--ntasks=2`` that runs ``protolib train`` itself is one process) is rank
``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS``, local rank ``SLURM_LOCALID``; the processes
meet at the first host of ``SLURM_STEP_NODELIST`` on a port derived from
``SLURM_JOB_ID`` and ``SLURM_STEP_ID`` (``MASTER_ADDR`` and ``MASTER_PORT`` override
them). One process (no launcher, or one task) is no :class:`Launch` at all, and the
single-process run uses no process group.

The processes of a launch share one key-value store for their whole life (rank 0 hosts
it, or torchrun's agent does): each :class:`ProcessGroup` (one per run: a batch trains
several runs in turn) rendezvouses under its own prefix of it, so that a process that
reaches the next run early never meets the previous run's group, and :func:`agree`
gives every process the same answer (an exit status) without a process group.
:class:`ProcessGroup` starts the group (gloo on the CPU, NCCL on CUDA, device
``cuda:LOCAL_RANK``) and holds the few collectives a run needs: the gather of features
with gradient (:meth:`ProcessGroup.gather`), sums, an agreed stop flag and broadcasts of
plain data (JSON or bytes: nothing is unpickled).

Every process draws the same global batch and keeps its shard of the samples
(:meth:`Launch.rows`); the gathered batch is the single-process batch, in the same order.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from protolib.resources import check_batch_split as check_batch_split  # the one rule
from protolib.train.config import ConfigError

#: how long a process waits in a collective (rank 0 evaluates while the others wait)
TIMEOUT = timedelta(minutes=30)
#: the rendezvous ports of ``srun`` launches: ``PORT_BASE + (job·64 + step) mod PORT_SPAN``
#: (distinct for the steps of one job and for the next few hundred jobs on a node)
PORT_BASE, PORT_SPAN = 20000, 20000
#: what ``srun`` sets in each task of a step (the batch step of a job has none of it)
SRUN_VARIABLES = (
    "SLURM_STEP_NUM_TASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
)


@dataclass(frozen=True)
class Launch:
    """This process's place among ``size`` processes of one run (the launcher's have
    ``size`` ≥ 2) and where they meet (``address``, ``port``; None: ``MASTER_ADDR`` and
    ``MASTER_PORT`` of the environment when the group starts)."""

    rank: int
    size: int
    local_rank: int
    address: str | None = None
    port: int | None = None

    @property
    def main(self) -> bool:
        """Whether this process owns the run directory (rank 0)."""
        return self.rank == 0

    def rows(self, members: int) -> slice:
        """This process's rows of a global batch of ``members`` (divisible by ``size``):
        ``rank·b/G … (rank+1)·b/G``."""
        share = members // self.size
        return slice(self.rank * share, (self.rank + 1) * share)


def launch_from_environment(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The :class:`Launch` the launcher's variables describe (torchrun's, else srun's),
    or None for one process; a :class:`ConfigError` naming the variables when they are
    inconsistent."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return _torchrun(env)
    if "SLURM_STEP_NUM_TASKS" in env:
        return _srun(env)
    return None


def _torchrun(env: Mapping[str, str]) -> Launch | None:
    size = _int_variable(env, "WORLD_SIZE", "1", 1)
    if size == 1:
        return None
    rank = _int_variable(env, "RANK", None, 0)
    local_rank = _int_variable(env, "LOCAL_RANK", str(rank), 0)
    if rank >= size:
        raise ConfigError(f"environment variable RANK must be in 0..{size - 1}, got {rank}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ConfigError(
                f"environment variable WORLD_SIZE is {size} but {name} is not set; "
                "start several processes with torchrun"
            )
    port = _port(env, "MASTER_PORT")
    return Launch(rank, size, local_rank, env["MASTER_ADDR"], port)


def _srun(env: Mapping[str, str]) -> Launch | None:
    """A task of an ``srun`` step (MASTER_ADDR and MASTER_PORT, when set, name the
    rendezvous)."""
    size = _int_variable(env, "SLURM_STEP_NUM_TASKS", None, 1, "run under srun")
    if size == 1:
        return None
    missing = [name for name in SRUN_VARIABLES if not env.get(name)]
    if missing:
        raise ConfigError(
            f"environment variable SLURM_STEP_NUM_TASKS is {size} but {', '.join(missing)} "
            "is not set; start the processes with srun (or torchrun)"
        )
    rank = _int_variable(env, "SLURM_PROCID", None, 0)
    local_rank = _int_variable(env, "SLURM_LOCALID", None, 0)
    if rank >= size:
        raise ConfigError(
            f"environment variables SLURM_PROCID ({rank}) and SLURM_STEP_NUM_TASKS ({size}) "
            f"disagree: SLURM_PROCID must be in 0..{size - 1}"
        )
    if local_rank > rank:
        raise ConfigError(
            f"environment variables SLURM_LOCALID ({local_rank}) and SLURM_PROCID ({rank}) "
            "disagree: a task's rank on its node cannot exceed its rank in the step"
        )
    address = env.get("MASTER_ADDR") or first_host(env["SLURM_STEP_NODELIST"])
    if env.get("MASTER_PORT"):
        port = _port(env, "MASTER_PORT")
    else:
        job = _int_variable(env, "SLURM_JOB_ID", None, 0)
        step = _int_variable(env, "SLURM_STEP_ID", None, 0)
        port = PORT_BASE + (job * 64 + step) % PORT_SPAN
    return Launch(rank, size, local_rank, address, port)


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_RANGES = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list (``SLURM_STEP_NODELIST``):
    ``gpu[07-09,12],cpu3`` → ``gpu07`` (each bracket's first number, its zero padding
    kept), as ``scontrol show hostnames`` lists it first."""
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):  # the first name: up to a comma outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    name = nodelist[:end].strip()
    ranges = _BRACKETS.findall(name)
    plain = _BRACKETS.sub("", name)
    if not name or depth or "[" in plain or "]" in plain or not all(map(_RANGES.fullmatch, ranges)):
        raise ConfigError(
            f"environment variable SLURM_STEP_NODELIST is not a SLURM host list: {nodelist!r}"
        )
    return _BRACKETS.sub(lambda m: re.split(r"[-,]", m[1])[0], name)


def _port(env: Mapping[str, str], name: str) -> int:
    port = _int_variable(env, name, None, 1)
    if port > 65535:
        raise ConfigError(f"environment variable {name} must be a port in 1..65535, got {port}")
    return port


def _int_variable(
    env: Mapping[str, str],
    name: str,
    default: str | None,
    smallest: int,
    how: str = "start with torchrun",
) -> int:
    raw = env.get(name, default)
    if raw is None:
        raise ConfigError(f"environment variable {name} is not set; {how}")
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < smallest:
        raise ConfigError(
            f"environment variable {name} must be an integer >= {smallest}, got {raw!r}"
        )
    return value


class _Meeting:
    """The store the processes of one launch share for their life, and how many process
    groups and agreements they have made with it (the same on every process)."""

    def __init__(self, launch: Launch) -> None:
        address = launch.address or os.environ.get("MASTER_ADDR", "")
        port = launch.port or os.environ.get("MASTER_PORT", "")
        host = f"[{address}]" if ":" in address else address
        rendezvous = dist.rendezvous(
            f"tcp://{host}:{port}", rank=launch.rank, world_size=launch.size, timeout=TIMEOUT
        )
        self.store, _, _ = next(rendezvous)
        self.groups = 0
        self.agreements = 0


_MEETINGS: dict[tuple[str | None, int | None, int, int], _Meeting] = {}


def _meeting(launch: Launch) -> _Meeting:
    key = (
        launch.address or os.environ.get("MASTER_ADDR"),
        launch.port or int(os.environ.get("MASTER_PORT", "0") or 0),
        launch.rank,
        launch.size,
    )
    if key not in _MEETINGS:
        _MEETINGS[key] = _Meeting(launch)
    return _MEETINGS[key]


def agree(launch: Launch, value: int) -> int:
    """The largest of every process's ``value`` (say, an exit status: a signal's beats a
    failure's, which beats success), on every process; each process calls it as often."""
    meeting = _meeting(launch)
    prefix = f"protolib/agree/{meeting.agreements}"
    meeting.agreements += 1
    meeting.store.set(f"{prefix}/{launch.rank}", str(int(value)))
    keys = [f"{prefix}/{rank}" for rank in range(launch.size)]
    meeting.store.wait(keys)
    return max(int(meeting.store.get(key)) for key in keys)


class ProcessGroup:
    """``with ProcessGroup(launch, device) as group:`` the run's process group (started on
    entry, destroyed on exit) and its collectives; every process calls each collective in
    the same order."""

    def __init__(self, launch: Launch, device: torch.device) -> None:
        self.launch = launch
        self.device = device
        self.rank, self.size, self.main = launch.rank, launch.size, launch.main
        # flags and plain data travel on the CPU (gloo), never through a GPU: the check
        # for a stop signal at every step reads nothing back from the device
        self._control: Any = None

    def __enter__(self) -> ProcessGroup:
        on_cuda = self.device.type == "cuda"
        meeting = _meeting(self.launch)
        store = dist.PrefixStore(f"protolib/group/{meeting.groups}", meeting.store)
        meeting.groups += 1
        dist.init_process_group(
            backend="nccl" if on_cuda else "gloo",
            store=store,
            rank=self.rank,
            world_size=self.size,
            timeout=TIMEOUT,
            device_id=self.device if on_cuda else None,
        )
        if on_cuda:
            self._control = dist.new_group(backend="gloo", timeout=TIMEOUT)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- training --------------------------------------------------------------------
    def wrap(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients
        averaged over the processes; buffers are not broadcast: with SyncBatchNorm they
        agree, and rank 0's are the ones evaluated and saved)."""
        ddp = torch.nn.parallel.DistributedDataParallel
        # the keyword's newer name where torch has it (the old one warns there)
        newer = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        no_sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        on_cuda = self.device.type == "cuda"
        return ddp(network, device_ids=[self.device.index] if on_cuda else None, **no_sync)

    def gather(self, tensor: Tensor) -> Tensor:
        """Every process's ``tensor`` (equal shapes) concatenated along dim 0 in rank
        order, with gradient: the backward sums the incoming gradient over the processes
        and returns this process's rows (MATH.md §1.10)."""
        return _Gather.apply(tensor, self.rank, self.size)

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the processes (a new tensor)."""
        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def agreed_signal(self, signum: int | None) -> int | None:
        """The largest signal number any process received (None: none did); every
        process gets the same answer, so all stop at the same step."""
        flag = torch.tensor([signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._control)
        return int(flag.item()) or None

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every process (the others pass None)."""
        length = len(data) if self.main and data is not None else 0
        size = torch.tensor([length], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self._control)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8)
        if self.main and data:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if buffer.numel():
            dist.broadcast(buffer, src=0, group=self._control)
        return buffer.numpy().tobytes()

    def broadcast_json(self, value: Any) -> Any:
        """Rank 0's JSON-able ``value`` on every process."""
        text = json.dumps(value).encode() if self.main else None
        return json.loads(self.broadcast_bytes(text).decode())


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces (SUM) the gradient and keeps this
    process's rows: the gradient of a loss summed over processes."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, rank: int, size: int) -> Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor)
        ctx.rows = slice(rank * tensor.shape[0], (rank + 1) * tensor.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rows], None, None


__all__ = [
    "TIMEOUT",
    "Launch",
    "ProcessGroup",
    "agree",
    "check_batch_split",
    "first_host",
    "launch_from_environment",
]
