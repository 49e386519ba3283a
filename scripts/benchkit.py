"""Helpers shared by the benchmark scripts (bench_engine.py and bench_store.py).

Both scripts print the same machine header, track RSS after each phase, run their cases in
interleaved rounds bounded by time budgets, and lay out their tables alike. Keeping that here
means a fix reaches both, and their reports stay comparable with each other.

The scripts run as `.venv/bin/python scripts/bench_X.py`, which puts scripts/ on sys.path,
so they import this module as plain `benchkit`.
"""

import argparse
import cProfile
import gc
import os
import platform
import pstats
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import psutil

perf = time.perf_counter

# --- numbers and formatting -------------------------------------------------------------


def fmt_rate(r: float) -> str:
    """A rate as the tables print it: whole units with thousands separators."""
    return f"{r:,.0f}"


def ratio(a: float, b: float) -> float:
    """a / b, NaN instead of ZeroDivisionError: a skipped or empty case must not end the run."""
    return a / b if b else float("nan")


def per_second(count: int, seconds: float) -> float:
    """Items per second, NaN when nothing was timed."""
    return count / seconds if seconds > 0 else float("nan")


def micros_each(seconds: float, count: int) -> float:
    """Microseconds per item, NaN when there were none."""
    return seconds / count * 1e6 if count else float("nan")


def budget_cut(done: int, planned: int) -> str:
    """The suffix a progress line gets when a time budget stopped a case short of its plan."""
    return "" if done >= planned else f"  (time budget hit at {done:,})"


class LatencyStats:
    """Percentile and median of `samples` (ms), for the latency dataclasses of both scripts;
    NaN when empty, so a case the budget cut short still prints a row."""

    samples: list[float]

    def pct(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")


# --- memory -----------------------------------------------------------------------------

MEMORY: list[tuple[str, float, float]] = []  # (phase, peak RSS MiB, current RSS MiB)


def rss_mib() -> float:
    """Current RSS of this process in MiB."""
    return psutil.Process().memory_info().rss / (1 << 20)


def mem(phase: str) -> None:
    """Record and print peak and current RSS after a phase; print_memory lists them at the end."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    cur = rss_mib()
    MEMORY.append((phase, peak, cur))
    print(f"  [mem] after {phase}: peak RSS {peak:,.1f} MiB, current RSS {cur:,.1f} MiB", flush=True)


def print_memory(width: int) -> None:
    """The closing table of what mem() recorded, phase names padded to `width`."""
    print("\n=== Memory after each phase ===")
    for phase, peak, cur in MEMORY:
        print(f"  {phase:{width}} peak RSS {peak:>9,.1f} MiB   current RSS {cur:>9,.1f} MiB")


# --- machine and run setup -----------------------------------------------------------------


def machine_info(extra: Sequence[tuple[str, str]]) -> None:
    """The header every report starts with, so results from different machines can be told
    apart; `extra` adds (name, value) lines for what only one script depends on."""
    print("=== Machine ===")
    print(
        f"  python      {sys.version.split()[0]} ({platform.python_implementation()}) "
        f"on {platform.platform()}"
    )
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"  cpus        os.cpu_count()={os.cpu_count()}, usable={affinity}")
    print(f"  memory      {psutil.virtual_memory().total / (1 << 30):.1f} GiB")
    tmp = tempfile.gettempdir()
    parts = [p for p in psutil.disk_partitions(all=True) if tmp.startswith(p.mountpoint)]
    fs = max(parts, key=lambda p: len(p.mountpoint)) if parts else None
    print(f"  temp dir    {tmp} ({fs.fstype + ' on ' + fs.device if fs else 'unknown fs'})")
    print(f"  sqlite      {sqlite3.sqlite_version}")
    for name, value in extra:
        print(f"  {name:11} {value}")


def require_positive(ap: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str]) -> None:
    """Reject zero or negative counts up front rather than dividing by them at the end."""
    for name in names:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be positive")


@contextmanager
def bench_tmpdir(prefix: str) -> Iterator[Path]:
    """A scratch directory under /tmp (not the repo), removed afterwards even on failure."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp") as name:
        yield Path(name)


# --- measured loops ------------------------------------------------------------------------

C = TypeVar("C", bound=Sized)


def run_chunks(chunks: Iterable[C], step: Callable[[C], object], budget: float) -> int:
    """Feed chunks to `step` until done or `budget` seconds have passed; returns items fed.
    The budget is what keeps every loop, and so every run, bounded in time."""
    deadline = perf() + budget
    done = 0
    for chunk in chunks:
        step(chunk)
        done += len(chunk)
        if perf() > deadline:
            break
    return done


class RoundResult(Protocol):
    """What run_rounds needs of a case's result: a rate to rank by and a note to annotate."""

    note: str

    @property
    def rate(self) -> float: ...


R = TypeVar("R", bound=RoundResult)


def run_rounds(
    cases: Sequence[Callable[[Path], R]],
    repeat: int,
    tmp: Path,
    prefix: str,
    describe: Callable[[R], str],
    unit: str,
) -> list[R]:
    """Run every case `repeat` times, interleaved (round 1 of every case, then round 2...), so
    drift (page cache, CPU clock, background load) hits every case alike. Each run gets a fresh
    directory tmp/<prefix>-<round>-<case>, removed afterwards, and prints `describe(result)`.
    Per case, keeps the median-rate round, its note prefixed by the rounds' spread in `unit`."""
    rounds: list[list[R]] = [[] for _ in cases]
    for rnd in range(repeat):
        for i, case in enumerate(cases):
            root = tmp / f"{prefix}-{rnd}-{i}"
            result = case(root)
            shutil.rmtree(root, ignore_errors=True)  # a case may not have needed a directory
            rounds[i].append(result)
            print(f"  [{rnd + 1}/{repeat}] {describe(result)}", flush=True)
    kept = []
    for runs in rounds:
        by_rate = sorted(runs, key=lambda r: r.rate)
        r = by_rate[len(by_rate) // 2]
        if len(runs) > 1:
            spread = f"rounds {fmt_rate(by_rate[0].rate)}..{fmt_rate(by_rate[-1].rate)} {unit}"
            r.note = f"{spread}; {r.note}" if r.note else spread
        kept.append(r)
    return kept


# --- output ---------------------------------------------------------------------------------


def print_header(header: str) -> None:
    """A table's header line, underlined to its own width."""
    print(header)
    print("-" * len(header))


def print_targets(rows: Sequence[tuple[str, str, str, str]]) -> None:
    """(label, value, target, verdict) rows of the targets summary, in aligned columns."""
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for label, value, target, verdict in rows:
        print(f"  {label:{width}}  {value:{vwidth}}  target {target:9}  {verdict}")


def print_profile(profiler: cProfile.Profile, top: int) -> pstats.Stats:
    """The `top` functions by self time; returns the stats for further breakdowns."""
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    return stats


def print_profile_stats(stats: pstats.Stats, top: int) -> None:
    """The `top` functions by cumulative time, then by self time: the first shows which call
    paths hold the time, the second where it is actually spent."""
    for key, label in (("cumulative", "cumulative"), ("tottime", "self")):
        print(f"--- top {top} by {label} time ---")
        stats.sort_stats(key).print_stats(top)


# --- CPU ------------------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), all its threads,
    children excluded: on a small machine a load generator shares the CPU with what it
    measures, so each side's CPU is worth reporting beside the wall-clock rate."""
    times = (proc or psutil.Process()).cpu_times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (every core, idle and iowait
    excluded): what remains after subtracting the measured processes is someone else's load."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class GcClock:
    """CPU seconds the cyclic GC spends, by generation, while installed in gc.callbacks. Each
    collection is charged by the CPU clock of the thread that triggered it. cProfile cannot
    show this: it charges a collection to whatever function happened to allocate."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.thread_time()  # collections do not nest: one start suffices
        else:
            self.runs[info["generation"]] += 1
            self.seconds[info["generation"]] += time.thread_time() - self._started

    def __enter__(self) -> "GcClock":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    @property
    def total(self) -> float:
        return sum(self.seconds)

    def summary(self) -> str:
        return ", ".join(
            f"gen{g} {n:,} x {t / n * 1000:.2f} ms = {t:.2f} s" if n else f"gen{g} none"
            for g, (n, t) in enumerate(zip(self.runs, self.seconds, strict=True))
        )
