"""The store directory's `LOCK` file: one process holds a store at a time.

flock(2) locks belong to the open file description, so a second open in the same process
is refused too, and the kernel drops the lock when the holder dies (even by SIGKILL).
"""

import fcntl
import os
from pathlib import Path

from quipu.core.errors import StoreLocked

LOCK_NAME = "LOCK"


class StoreLock:
    """An exclusive, non-blocking lock on `<root>/LOCK` that records the holder's pid."""

    def __init__(self, root: Path) -> None:
        self._root = root
        path = root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(str(root), holder) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except ValueError:
        return None
