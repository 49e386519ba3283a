"""The few file-system primitives the engine's durability rests on."""

import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quipu.core.errors import StorageFull

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


@contextmanager
def classify_disk_full(what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into StorageFull, the one place the engine classifies a full disk."""
    try:
        yield
    except OSError as err:
        if err.errno in _FULL:
            raise StorageFull(f"disk full while {what}; free space, then flush() again") from err
        raise
