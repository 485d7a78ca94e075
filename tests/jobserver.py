"""Run the `protolib` commands of Snakemake's jobs without a new interpreter for each.

A Snakemake that :mod:`tests.launcher` starts runs each job's shell command, and the shell
finds `protolib` on PATH. That Snakemake gets, first on its PATH, a folder holding a
`protolib` that is a small client (an isolated interpreter without ``site``, importing
only the standard library). The client hands its command line, working directory,
environment, umask and standard streams (the file descriptors themselves) to a server
that has imported torch, pandas, pyarrow, matplotlib and mlflow once per test worker; the
server forks a process that becomes the command (:func:`tests.launcher.become`: the real
console-script entry point, on the real command line) and runs it. The client stays the
job's process: signals it gets go to that process, and it exits with that process's
status, or dies of the same signal. If the client is killed outright (SIGKILL), the
process kills its own process group, children included.

What a job saves is its start-up (`import torch` alone is 1.7 s of CPU on 2 cores; the
saving is measured in benchmarks/README.md). A dry run starts no server. Tests that kill a
pipeline's whole process group, or that run Snakemake the ordinary way (the kill-anywhere
test's killed pipelines, the SLURM cluster's jobs, `make run`), run every job as a fresh
process; their uninterrupted local references go through :mod:`tests.launcher`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

from tests import launcher

# Imported once more in the server: what `protolib aggregate`, `report` and `track` import.
PRELOAD = [
    *launcher.PRELOAD,
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "mlflow",
    "duckdb",
]

# The command the jobs run through the server, as the shell would start it.
COMMAND = str(launcher.BIN / "protolib")

# The signals the client passes on (SIGKILL and SIGSTOP cannot be caught).
RELAYED = [
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
]

_HEADER = struct.Struct("!Q")  # the length of the request that follows
_NUMBER = struct.Struct("!i")  # the process id, then the wait status (4 bytes each)

CLIENT = """\
#!{python} -IS
# {doc}
import json, os, signal, socket, struct, sys, time

child, pending = None, []


def relay(signum, frame):
    if child is None:
        pending.append(signum)
    else:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass


for signum in {relayed}:
    signal.signal(signum, relay)
streams = []
for fd in (0, 1, 2):
    try:
        os.fstat(fd)
        streams.append(fd)
    except OSError:
        streams.append(os.open(os.devnull, os.O_RDWR))
mask = os.umask(0)
os.umask(mask)
request = json.dumps(
    {{
        "argv": [{argv0!r}, *sys.argv[1:]],
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": mask,
    }}
).encode()
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
deadline = time.monotonic() + 120
while True:
    try:
        server.connect({path!r})
        break
    except (FileNotFoundError, ConnectionRefusedError):
        if time.monotonic() > deadline:
            sys.exit("tests.jobserver: no server at {path}")
        time.sleep(0.02)
socket.send_fds(server, [struct.pack({header!r}, len(request))], streams)
server.sendall(request)


def number():
    data = b""
    while len(data) < {size}:
        more = server.recv({size} - len(data))
        if not more:
            sys.exit("tests.jobserver: the server closed the connection")
        data += more
    return struct.unpack({number!r}, data)[0]


child = number()
for signum in pending:
    relay(signum, None)
code = os.waitstatus_to_exitcode(number())
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code if code >= 0 else 128 - code)
"""


@functools.cache
def client_folder() -> str:
    """The folder of the clients (put it first on a Snakemake's PATH); starts this test
    worker's server the first time."""
    folder = tempfile.mkdtemp(prefix="protolib-jobs-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "server")
    client = Path(folder, Path(COMMAND).name)
    client.write_text(
        CLIENT.format(
            python=sys.executable,
            doc=__doc__.splitlines()[0],
            relayed=[int(s) for s in RELAYED],
            argv0=COMMAND,
            path=path,
            header=_HEADER.format,
            number=_NUMBER.format,
            size=_NUMBER.size,
        )
    )
    client.chmod(0o755)
    entry = launcher.command_entry([COMMAND], os.environ, Path.cwd())
    assert entry is not None, f"{COMMAND} is not a console script of this environment"
    server = launcher.CONTEXT.Process(
        target=serve, args=(path, os.getpid(), entry, launcher.base_path()), daemon=True
    )
    server.start()
    return folder


def serve(path: str, owner: int, entry: tuple[str, str], base: list[str]) -> None:
    """The server: import :data:`PRELOAD`, listen on ``path`` (it appears once the server
    listens), and fork one process per request; end when the test worker ``owner`` does."""
    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, "an import started a thread: forking is unsafe"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    owner_fd = os.pidfd_open(owner)
    selector.register(owner_fd, selectors.EVENT_READ)
    running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    while True:
        for key, _ in selector.select():
            if key.fd == owner_fd:
                return
            if key.fileobj is listener:
                connection, _ = listener.accept()
                with contextlib.suppress(OSError, ValueError):
                    pid = _start(connection, entry, base, [listener, selector, owner_fd, running])
                    pidfd = os.pidfd_open(pid)
                    running[pidfd] = (pid, connection)
                    selector.register(pidfd, selectors.EVENT_READ)
                    connection.sendall(_NUMBER.pack(pid))
                    continue
                connection.close()
            else:
                pid, connection = running.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    connection.sendall(_NUMBER.pack(status))
                connection.close()


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """One request: its JSON and the client's standard streams (three descriptors)."""
    head, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
    if len(head) != _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a short request")
    (size,) = _HEADER.unpack(head)
    body = b""
    while len(body) < size:
        more = connection.recv(size - len(body))
        if not more:
            raise ValueError("a short request")
        body += more
    return json.loads(body), fds


def _start(connection, entry, base, inherited) -> int:
    """Fork the process of one request; return its pid."""
    request, fds = _receive(connection)
    pid = os.fork()
    if pid == 0:
        listener, selector, owner_fd, running = inherited
        selector.close()
        listener.close()
        os.close(owner_fd)
        for pidfd, (_, other) in running.items():
            os.close(pidfd)
            other.close()
        _job(connection, request, fds, entry, base)
    for fd in fds:
        os.close(fd)
    return pid


def _job(connection, request, fds, entry, base) -> NoReturn:
    """In the forked process: the client's streams and umask, a process group of its own
    that dies with the client, then :func:`tests.launcher.become` the command."""
    try:
        os.setpgid(0, 0)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.umask(request["umask"])
        for signum in (*RELAYED, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        threading.Thread(target=_die_with_client, args=(connection,), daemon=True).start()
    except BaseException as error:  # never return into the server's loop
        print(f"tests.jobserver: {error!r}", file=sys.stderr, flush=True)
        os._exit(70)
    launcher.become(*entry, request["argv"], request["cwd"], request["env"], base)


def _die_with_client(connection: socket.socket) -> None:
    """Wait for the client to go (it sends nothing): if it does while the command runs, it
    was killed, and so is the command's process group."""
    with contextlib.suppress(OSError):
        connection.recv(1)
    os.killpg(0, signal.SIGKILL)
