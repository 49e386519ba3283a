"""When appended records are made durable (fsync), and the timer that bounds the wait.

Group commit (`every_n_or_interval`) batches the fsync over N appends or `interval`
seconds after the first unsynced append, whichever comes first: it keeps most of the
page-cache throughput while bounding how long a record waits for durability under low load.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from quipu.core.errors import BadInput, QuipuError

log = logging.getLogger("quipu.core")

SyncKind = Literal["always", "every_n", "every_n_or_interval", "os_managed"]


@dataclass(frozen=True)
class SyncPolicy:
    """How often appends are fsynced. `flush()` always makes everything durable."""

    kind: SyncKind
    n: int = 1
    interval: float = 0.0

    @classmethod
    def always(cls) -> "SyncPolicy":
        """fsync after every append: slowest, nothing acknowledged is ever at risk."""
        return cls("always")

    @classmethod
    def every_n(cls, n: int) -> "SyncPolicy":
        """fsync after every n appends; a quiet tail waits for the next flush()."""
        _positive("n", n)
        return cls("every_n", n=n)

    @classmethod
    def every_n_or_interval(cls, n: int, seconds: float) -> "SyncPolicy":
        """Group commit: fsync after n appends or `seconds` after the first unsynced one."""
        _positive("n", n)
        _positive("seconds", seconds)
        return cls("every_n_or_interval", n=n, interval=seconds)

    @classmethod
    def os_managed(cls) -> "SyncPolicy":
        """Every append reaches the OS page cache (survives a process crash, not power
        loss); fsync only on flush(), seal and close."""
        return cls("os_managed")

    @classmethod
    def parse(cls, text: str) -> "SyncPolicy":
        """`always`, `os_managed`, `every_n:N` or `every_n_or_interval:N:SECONDS`."""
        name, *args = text.split(":")
        try:
            if name in ("always", "os_managed") and not args:
                return getattr(cls, name)()
            if name == "every_n" and len(args) == 1:
                return cls.every_n(int(args[0]))
            if name == "every_n_or_interval" and len(args) == 2:
                return cls.every_n_or_interval(int(args[0]), float(args[1]))
        except ValueError as err:
            raise BadInput(f"sync policy {text!r}: {err}") from err
        raise BadInput(
            f"unknown sync policy {text!r}; use always, os_managed, every_n:N "
            "or every_n_or_interval:N:SECONDS"
        )


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise BadInput(f"sync policy {name} must be positive, got {value}")


class IntervalSync:
    """A daemon thread that runs `sync_pending` `interval` seconds after it is armed.

    The table arms it on the first unsynced append; an fsync that the count triggers first
    makes the timed one find nothing to do, which is cheap.
    """

    def __init__(self, interval: float, sync_pending: Callable[[], None]) -> None:
        self._interval = interval
        self._sync_pending = sync_pending
        self._armed = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quipu-group-commit", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        self._armed.set()

    def stop(self) -> None:
        self._stopped.set()
        self._armed.set()
        self._thread.join()

    def _run(self) -> None:
        # Clear before waiting out the interval: an arm() that lands during the wait
        # (after a count-triggered sync) then schedules one more round instead of being lost.
        while not self._stopped.is_set():
            self._armed.wait()
            self._armed.clear()
            if self._stopped.wait(self._interval):
                return
            try:
                self._sync_pending()
            except QuipuError as err:  # e.g. disk full: the records stay buffered and the
                # next flush() or armed round retries; the timer must outlive the error
                log.warning("group commit failed, will retry on the next append: %s", err)
