"""One process owns a run directory: an exclusive, non-blocking ``flock`` on ``<out>/.lock``.

The lock is taken when the run directory is opened (after the run config is validated)
and held for the whole run, the "already finished" and resume paths included. The kernel
drops it when its process ends in any way (SIGKILL too), so a killed run never leaves a
stuck lock. The lock file holds the owner's process id, for the message a second process
gets; the owner removes the file on release, so a finished run directory holds only its
outputs (a file left by a killed owner is reused).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class RunDirectoryInUse(RuntimeError):
    """Another process holds the run directory's lock."""

    def __init__(self, out: Path, pid: int | None) -> None:
        owner = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"{out} is in use by another protolib train process ({owner}); wait for it to "
            "finish or stop it, or use another --out"
        )
        self.pid = pid


class RunDirectoryLock:
    """``with RunDirectoryLock(out):`` creates ``out`` (and its parents) if needed and
    holds ``out/.lock``; raises :class:`RunDirectoryInUse` at once if another process
    holds it, and ``OSError`` if the directory cannot be written."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunDirectoryLock:
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                owner = _read_pid(fd)
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RunDirectoryInUse(self.out, owner) from None
                raise
            # the previous owner may have removed the file between our open and our lock:
            # then we hold a lock on a file no other process can find; open it again
            if _same_file(fd, self.path):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still ours: we hold the lock on it
        except OSError:
            pass  # a read-only or vanished directory: the file is harmless, the lock ends
        finally:
            os.close(self._fd)
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


__all__ = ["LOCK_NAME", "RunDirectoryInUse", "RunDirectoryLock"]
