"""The few file-system primitives the engine's durability rests on."""

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

from quipu.core.errors import QuipuError, StorageFull

log = logging.getLogger(__name__)
T = TypeVar("T")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """pwrite until every byte is written: a short write is not an error in POSIX.

    The view is released even when pwrite fails: a live view pins a bytearray's size, and
    the error's traceback would keep it alive, so every later append to that buffer (the
    segment's pending bytes after an ENOSPC) would fail with BufferError."""
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            with view[done:] as rest:
                done += os.pwrite(fd, rest, offset + done)


def fsync_dir(path: Path) -> None:
    """Make a create, rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` by temp file + fsync + rename: readers see old or new, never half.
    The temp name is unique per thread, so two threads writing the same file cannot collide."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> None:
    """Append `line` and a newline to an append-only NDJSON log (checkpoints, anchors) and
    fsync it before returning, so whoever is told next (a hook) is told of a durable line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_torn_line(path: Path) -> int:
    """Cut off a last line without its newline, what a crash mid-`append_line` leaves: it
    was never acknowledged (fsync had not returned). The bytes dropped (0: none, or no file),
    for the caller to log."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
        os.fsync(f.fileno())
    return len(data) - keep


@contextmanager
def classify_disk_full(what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into StorageFull, the one place the engine classifies a full disk."""
    try:
        yield
    except OSError as err:
        if err.errno in _FULL:
            raise StorageFull(f"disk full while {what}; free space, then flush() again") from err
        raise


def file_stamp(path: Path) -> tuple[int, int, int]:
    """(inode, mtime ns, size), or zeros when the file is gone: what changes when a file is
    rewritten by rename or in place, for readers that re-load a file only after a change."""
    try:
        st = os.stat(path)
    except OSError:
        return 0, 0, 0
    return st.st_ino, st.st_mtime_ns, st.st_size


class ReloadedFile(Generic[T]):
    """A value loaded from a file and loaded again when the file changes, checked at most
    every `recheck` seconds: how a long-running process picks up a file that another
    process rewrites (by rename), without a restart or a signal.

    A file that cannot be loaded keeps the last good value, and the reason is logged once
    per change of the file: a half-edited file never takes a running process down."""

    def __init__(self, path: Path, load: Callable[[Path], T], recheck: float) -> None:
        self.path, self._load, self._recheck = path, load, recheck
        self._lock = threading.Lock()
        self._stamp = file_stamp(path)
        self._value = load(path)  # the first load's error is the caller's: it cannot start
        self._checked = time.monotonic()

    def current(self, fresh: bool = False) -> T:
        """The newest value; `fresh` checks the file now instead of after `recheck`."""
        now = time.monotonic()
        if not fresh and now - self._checked < self._recheck:
            return self._value
        with self._lock:
            self._checked = now
            stamp = file_stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._value = self._load(self.path)
                except (QuipuError, OSError) as err:
                    log.error("%s: keeping what was loaded before: %s", self.path, err)
            return self._value
