"""What `/v1/healthz` reports: ok, degraded or unhealthy, with the reasons.

The two failing states differ on purpose. `unhealthy` (the HTTP edge answers 503) means
events are not being persisted: the writer thread is dead, the ENOSPC latch is set, or a
probe write to the store root failed. `degraded` (still 200) means writes work but free
space is running out; answering 503 there would make a load balancer pull instances that
are still persisting, moving the load onto peers whose disks fill the same way. Alerts
should watch the status field, not the code.

`HealthState` is written by the writer and probe threads and read by the HTTP thread. Each
field is one attribute assignment, which is atomic in CPython, so no lock is needed and
`/v1/healthz` stays answerable even if a writer hangs while holding some other lock.
"""

import contextlib
import errno
import os
from pathlib import Path

import psutil

from quipu.core.errors import StorageFull
from quipu.core.files import classify_disk_full

PROBE_NAME = "health.probe"
_PROBE_BYTES = b"quipu health probe\n"


class HealthState:
    """The shard's health signals; `HealthState()` starts with the writer not yet running."""

    def __init__(self) -> None:
        # False until a pipeline starts its writer: a shard that never started is not healthy.
        self.writer_alive = False
        self._disk_full = False
        self.low_disk = False
        self.probe_failed = False
        self.probe_errno = ""  # errno name of the last failed probe, e.g. "ENOSPC"
        self.free_bytes = 0
        self.total_bytes = 0
        self.low_disk_threshold_bytes = 0  # the effective floor the last probe compared against

    @property
    def disk_full(self) -> bool:
        """The ENOSPC latch: set when a write hit a full disk, cleared once a write succeeds."""
        return self._disk_full

    def set_disk_full(self, latched: bool) -> None:
        self._disk_full = bool(latched)

    def status(self) -> tuple[str, list[str]]:
        """("ok" | "degraded" | "unhealthy", reasons); reasons is [] exactly when ok."""
        unhealthy: list[str] = []
        if not self.writer_alive:
            unhealthy.append("writer thread is not running")
        if self._disk_full:
            unhealthy.append("disk full (ENOSPC): writes go to the dead-letter queue until space is freed")
        if self.probe_failed:
            unhealthy.append(f"probe write to the store root failed: {self.probe_errno or 'unknown error'}")
        if unhealthy:
            return "unhealthy", unhealthy
        if self.low_disk:
            return "degraded", [
                f"low disk: {self.free_bytes} bytes free "
                f"(below {self.low_disk_threshold_bytes} bytes); free space before the disk fills"
            ]
        return "ok", []


class DiskProbe:
    """Measures free space under `root` and proves the store root still takes a durable write.

    `low_disk` is set when free space is below `min_free_bytes` or below `min_free_ratio`
    of the file system, whichever floor is higher.
    """

    def __init__(
        self,
        root: Path,
        health: HealthState,
        min_free_bytes: int = 1 << 30,
        min_free_ratio: float = 0.10,
    ) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        if not min_free_ratio >= 0:  # also refuses NaN
            raise ValueError(f"min_free_ratio must be >= 0, got {min_free_ratio}")
        self.root = Path(root)
        self.health = health
        self.min_free_bytes = min_free_bytes
        self.min_free_ratio = min_free_ratio

    def run(self) -> None:
        """Take one reading and update the health state; never raises an OSError."""
        self._measure()
        self._probe_write()

    def _measure(self) -> None:
        try:
            usage = psutil.disk_usage(str(self.root))
        except OSError:
            # A missing root also fails the probe write, which reports it; keep the last reading.
            return
        floor = max(self.min_free_bytes, int(self.min_free_ratio * usage.total))
        self.health.free_bytes = usage.free
        self.health.total_bytes = usage.total
        self.health.low_disk_threshold_bytes = floor
        self.health.low_disk = usage.free < self.min_free_bytes or (
            usage.total > 0 and usage.free / usage.total < self.min_free_ratio
        )

    def _probe_write(self) -> None:
        path = self.root / PROBE_NAME
        try:
            with classify_disk_full("writing the health probe"):
                _write_and_remove(path)
        except StorageFull as err:
            # The probe itself hit ENOSPC (or EDQUOT): latch, so writes are known to be
            # failing even before the writer trips over it.
            cause = err.__cause__
            self._fail(cause.errno if isinstance(cause, OSError) else errno.ENOSPC)
            self.health.set_disk_full(True)
            return
        except OSError as err:
            self._fail(err.errno)
            return
        self.health.probe_failed = False
        # Space came back: a durable write just succeeded, so the latch no longer holds.
        if self.health.disk_full:
            self.health.set_disk_full(False)

    def _fail(self, code: int | None) -> None:
        # Name before flag, so a reader that sees the flag also sees its reason.
        self.health.probe_errno = errno.errorcode.get(code or 0, "unknown error")
        self.health.probe_failed = True


def _write_and_remove(path: Path) -> None:
    """Create, write, fsync and unlink a small file: the same steps a segment write needs."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, _PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        # Remove even after a failed write, so a full disk is not left with a stray file.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
