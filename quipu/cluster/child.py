"""One process the supervisor runs: start it, know when it is ready, restart it with backoff.

Ready means the process printed its `... listening on URL` line *and* its `/v1/healthz`
answers 200, so a process that binds but cannot serve is not counted as up. Its stdout and
stderr go to one log file under <data_dir>/run/ (appended across restarts), which is also
where the ready line is read from: no pipe ties the child to the supervisor, so a child
never blocks or dies on a full or broken pipe.

Each child runs in its own process group, so a Ctrl-C at the terminal reaches only the
supervisor, which then stops the children in order (fronts first, shards flushed). On
Linux a child also gets SIGTERM if the supervisor itself dies, so a killed supervisor does
not leave shards holding their stores and ports.
"""

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from quipu.cluster.http_client import healthy

log = logging.getLogger("quipu.cluster")

START_TIMEOUT = 60.0  # seconds from spawn to healthy before a start counts as failed
FIRST_BACKOFF = 0.5  # restart delays: 0.5, 1, 2, 4 ... seconds
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0  # running this long resets the backoff
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class State(Enum):
    STARTING = "starting"
    RUNNING = "running"
    WAITING = "waiting"  # crashed; restarts at `restart_at`
    STOPPED = "stopped"


class Event(Enum):
    READY = "ready"
    EXITED = "exited"  # crashed, or failed to start


@dataclass(frozen=True)
class ProcessSpec:
    name: str  # "shard-0001", "router", "ingest-1"
    argv: Sequence[str]
    env: Mapping[str, str]
    ready_prefix: str  # "quipu shard listening on "
    health_url: str  # where /v1/healthz is asked (the configured address, not the printed one)
    log_path: Path


class Child:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.state = State.STOPPED
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._failures = 0
        self._spawned_at = 0.0
        self._ready_at = 0.0
        self.restart_at = 0.0
        self._offset = 0  # where this run's output starts in the log
        self._scanned = 0
        self._listening = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.state is not State.WAITING else None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "ab") as logfile:
            self._offset = self._scanned = logfile.seek(0, os.SEEK_END)
            self.proc = subprocess.Popen(
                list(self.spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                env=dict(self.spec.env),
                process_group=0,
                preexec_fn=_die_with_parent(),
            )
        self._spawned_at = time.monotonic()
        self._listening = False
        self.state = State.STARTING

    def tick(self, now: float) -> Event | None:
        """Advance: STARTING -> RUNNING once ready; EXITED when the process ended (or did not
        get ready in time, when it is killed). WAITING children are restarted by `due`."""
        if self.state in (State.STOPPED, State.WAITING) or self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self._exited()
        if self.state is State.STARTING:
            if not self._listening:
                self._listening = self._saw_ready_line()
            if self._listening and healthy(self.spec.health_url):
                self.state, self._ready_at = State.RUNNING, now
                return Event.READY
            if now - self._spawned_at > START_TIMEOUT:
                log.error("%s did not get ready within %.0f s; killing it", self.name, START_TIMEOUT)
                self.kill()
                return self._exited()
        elif now - self._ready_at > STABLE_AFTER:
            self._failures = 0
        return None

    def _exited(self) -> Event:
        self.state = State.WAITING
        return Event.EXITED

    def schedule_restart(self, now: float) -> float:
        """After a crash: restart after an exponential backoff; returns the delay."""
        delay = min(FIRST_BACKOFF * 2**self._failures, MAX_BACKOFF)
        self._failures += 1
        self.restart_at = now + delay
        return delay

    def due(self, now: float) -> bool:
        return self.state is State.WAITING and now >= self.restart_at

    def exit_text(self) -> str:
        code = self.proc.returncode if self.proc is not None else None
        if code is None:
            return "is running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def last_error(self) -> str:
        """The reason a child gave for exiting: its last `quipu...: ` line (the CLIs print
        their one-line errors that way), else its last line."""
        lines = [line.strip() for line in self._output().splitlines() if line.strip()]
        marked = [line for line in lines if line.split(":", 1)[0] in ("quipu", "quipu-cluster")]
        text = (marked or lines or ["(no output)"])[-1]
        return text if len(text) <= 400 else text[:400] + "..."

    def _output(self) -> str:
        try:
            with open(self.spec.log_path, "rb") as f:
                f.seek(max(self._offset, os.path.getsize(self.spec.log_path) - 16384))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _saw_ready_line(self) -> bool:
        try:
            with open(self.spec.log_path, "rb") as f:
                f.seek(self._scanned)
                data = f.read()
        except OSError:
            return False
        complete = data[: data.rfind(b"\n") + 1]
        self._scanned += len(complete)
        prefix = self.spec.ready_prefix.encode()
        return any(line.startswith(prefix) for line in complete.splitlines())

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_stopped(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.state = State.STOPPED
        return True

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds."""
        self.terminate()
        if not self.wait_stopped(timeout):
            log.error("%s did not stop within %.0f s of SIGTERM; killing it", self.name, timeout)
            self.kill()
        self.state = State.STOPPED


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when the supervisor dies. Only
    async-signal-safe work runs in the forked child: libc was looked up beforehand."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return hook
