"""The supervisor's pid file, `up --detach` and `down`.

The pid file (<data_dir>/run/cluster.pid) is held with an flock for as long as the
supervisor runs, so "is a cluster running?" is answered by the kernel, not by whether a
recorded pid happens to be alive: a stale file after a crash (or a reused pid) is never
mistaken for a running cluster, and a second `up` on the same data dir is refused.
"""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from quipu.cluster.config import ClusterConfig
from quipu.core.errors import Conflict, QuipuError

UP_PREFIX = "quipu-cluster: up at "  # the supervisor's line once every process is ready
DETACH_TIMEOUT = 180.0
STOP_TIMEOUT = 300.0  # `down` waits this long for the flush and the children to stop


class PidFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, data_dir: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            holder = _read_pid(fd)
            os.close(fd)
            raise Conflict(already_running(data_dir, holder)) from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # unlinked while still locked: no window
            os.close(self._fd)
            self._fd = None


def already_running(data_dir: Path, pid: int | None) -> str:
    who = f"supervisor pid {pid}" if pid else "a supervisor"
    return f"a cluster is already running from {data_dir} ({who}); stop it with `quipu-cluster down`"


def running_supervisor(config: ClusterConfig) -> int | None:
    """The pid of the supervisor holding the pid file, or None when none runs."""
    try:
        fd = os.open(config.pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def detach(config: ClusterConfig, argv: list[str]) -> str:
    """Start `argv` (the supervisor) in its own session, its output appended to
    <data_dir>/run/cluster.log; wait for its up line and return it. QuipuError with the
    supervisor's own last error when it exits first."""
    log_path = config.supervisor_log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "QUIPU_TOKEN"}
    with open(log_path, "ab") as logfile:
        offset = logfile.seek(0, os.SEEK_END)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, env=env, start_new_session=True
        )
    deadline = time.monotonic() + DETACH_TIMEOUT
    while time.monotonic() < deadline:
        lines = _lines_from(log_path, offset)
        up = next((line for line in lines if line.startswith(UP_PREFIX)), None)
        if up is not None:
            return up
        if proc.poll() is not None:
            errors = [line for line in lines if line.startswith("quipu-cluster: ")]
            raise QuipuError(
                (errors or [f"the supervisor exited with status {proc.returncode}"])[-1].removeprefix(
                    "quipu-cluster: "
                )
                + f" (log: {log_path})"
            )
        time.sleep(0.1)
    raise QuipuError(f"the cluster did not come up within {DETACH_TIMEOUT:.0f} s; see {log_path}")


def _lines_from(path: Path, offset: int) -> list[str]:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def stop_supervisor(config: ClusterConfig) -> int | None:
    """SIGTERM the running supervisor and wait until it has flushed and stopped everything;
    its pid, or None when none was running."""
    pid = running_supervisor(config)
    if pid is None:
        return None
    if pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return pid
    deadline = time.monotonic() + STOP_TIMEOUT
    # The pid file is released once every child is stopped; the process exits right after.
    while running_supervisor(config) is not None or not _gone(pid):
        if time.monotonic() > deadline:
            raise QuipuError(f"the supervisor (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s")
        time.sleep(0.05)
    return pid


def _gone(pid: int) -> bool:
    """No such process, or only its zombie is left (its parent has not reaped it yet)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
    except (ProcessLookupError, FileNotFoundError):
        return True
    except OSError:
        return False


def supervisor_argv(config_path: str) -> list[str]:
    """How `up --detach` re-runs itself in the background."""
    return [sys.executable, "-m", "quipu.cluster.cli", "up", config_path, "--supervise"]
