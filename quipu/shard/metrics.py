"""The write pipeline's counters and latency histogram, rendered for Prometheus.

Every instrument carries its own small lock rather than sharing one: the writer thread
increments while the HTTP thread renders, and `/metrics` must stay answerable even when
the writer is wedged (an operator needs the numbers most exactly then). Nothing here is
module-level mutable state, so two shards in one process keep separate metrics.

`render_prometheus` writes text exposition format 0.0.4
(https://prometheus.io/docs/instrumenting/exposition_formats/); `write_family`,
`label_set` and `format_value` are its pieces, which the router's metrics render with too,
so both processes escape and format alike.
"""

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Seconds. Writes normally land in well under a millisecond; the long tail up to 10 s is
#: where fsync stalls and ENOSPC retries show up, so the buckets span both.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: The reasons `emit` refuses an event; each is rendered even at 0, so an alert on
#: `rate(...{reason="disk_full"}[5m]) > 0` has a series from the first scrape.
REJECT_REASONS: tuple[str, ...] = ("queue_full", "disk_full", "writer_stopped")

#: Gauges the caller may pass to `render_prometheus`, with their HELP text. A name missing
#: here is a typo or an undocumented metric, so rendering refuses it.
GAUGE_HELP: Mapping[str, str] = {
    "quipu_queue_depth": "Events accepted and waiting for the writer thread.",
    "quipu_dlq_entries": "Events parked in the dead-letter queue, not yet in the store.",
    "quipu_store_bytes": "Bytes the store occupies on disk.",
    "quipu_disk_free_bytes": "Free bytes on the store's file system at the last probe.",
    "quipu_disk_total_bytes": "Total bytes of the store's file system at the last probe.",
    "quipu_writer_alive": "1 while the writer thread runs; 0 means events are not persisted.",
    "quipu_disk_full": "1 while the ENOSPC latch is set (writes go to the dead-letter queue).",
    "quipu_disk_low": "1 while free space is below the configured threshold.",
}

_COUNTER_HELP: tuple[tuple[str, str, str], ...] = (
    # (attribute of PipelineMetrics, family name, HELP)
    ("writes_ok", "quipu_writes_ok_total", "Events written into the store."),
    ("write_retries", "quipu_write_retries_total", "Store writes retried after a transient error."),
    ("writes_parked", "quipu_writes_parked_total", "Events written to the dead-letter queue instead."),
    ("events_lost", "quipu_events_lost_total", "Events lost: both the store and the DLQ failed."),
    ("verify_runs", "quipu_verify_runs_total", "Integrity verifications run."),
)
_REJECTED = ("quipu_emit_rejected_total", "Events refused at emit, by reason.")
_LATENCY = ("quipu_write_latency_seconds", "Seconds from accepting an event to writing it into the store.")


class Counter:
    """A monotonic count, safe to increment from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def inc(self, n: int = 1) -> None:
        # A negative step would make rate() report a counter reset; refuse it loudly.
        if n < 0:
            raise ValueError(f"a counter only goes up; got inc({n})")
        with self._lock:
            self._value += n

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class LabeledCounter:
    """Monotonic counts keyed by one label value (e.g. the reason an emit was refused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, label: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"a counter only goes up; got inc({label!r}, {n})")
        with self._lock:
            self._values[label] = self._values.get(label, 0) + n

    def values(self) -> dict[str, int]:
        """A copy, so the caller can iterate while other threads keep counting."""
        with self._lock:
            return dict(self._values)


@dataclass(frozen=True)
class HistogramSnapshot:
    """One consistent reading: `cumulative[i]` counts observations <= `bounds[i]`;
    `count` is the implicit +Inf bucket."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float
    count: int


class Histogram:
    """Observations in fixed buckets (upper bounds in seconds), as Prometheus expects."""

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        if not self.bounds or any(not math.isfinite(b) for b in self.bounds):
            raise ValueError("histogram bounds must be a non-empty list of finite numbers")
        if any(a >= b for a, b in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError("histogram bounds must be strictly increasing")
        self._lock = threading.Lock()
        # One slot per bound plus the overflow (+Inf) slot; made cumulative on read.
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, seconds: float) -> None:
        # Clamp rather than raise: this runs on the writer thread, and a clock oddity must
        # not kill it. max(0.0, nan) is 0.0, so NaN is clamped too.
        seconds = max(0.0, seconds)
        slot = next((i for i, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        with self._lock:
            self._counts[slot] += 1
            self._sum += seconds
            self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        """Buckets, sum and count read under one lock, so +Inf always equals count."""
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        cumulative, running = [], 0
        for c in counts[:-1]:
            running += c
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), total, count)


@dataclass(frozen=True)
class PipelineMetrics:
    """Everything the write pipeline counts. Build one per pipeline: `PipelineMetrics()`."""

    writes_ok: Counter = field(default_factory=Counter)
    write_retries: Counter = field(default_factory=Counter)
    writes_parked: Counter = field(default_factory=Counter)
    events_lost: Counter = field(default_factory=Counter)
    emit_rejected: LabeledCounter = field(default_factory=LabeledCounter)
    write_latency: Histogram = field(default_factory=Histogram)
    verify_runs: Counter = field(default_factory=Counter)


def render_prometheus(metrics: PipelineMetrics, gauges: Mapping[str, float]) -> str:
    """The metrics and `gauges` (names from GAUGE_HELP) as Prometheus text format 0.0.4.

    Raises ValueError for a gauge name not in GAUGE_HELP, before writing anything.
    """
    unknown = sorted(name for name in gauges if name not in GAUGE_HELP)
    if unknown:
        raise ValueError(f"unknown gauge(s) {unknown}; add them to GAUGE_HELP with a HELP text")
    lines: list[str] = []
    for attr, name, help_text in _COUNTER_HELP:
        counter: Counter = getattr(metrics, attr)
        write_family(lines, name, "counter", help_text)
        lines.append(f"{name} {counter.value}")
    _render_rejected(lines, metrics.emit_rejected)
    _render_histogram(lines, metrics.write_latency.snapshot())
    for name, help_text in GAUGE_HELP.items():
        if name in gauges:
            write_family(lines, name, "gauge", help_text)
            lines.append(f"{name} {format_value(float(gauges[name]))}")
    return "\n".join(lines) + "\n"


def _render_rejected(lines: list[str], counter: LabeledCounter) -> None:
    name, help_text = _REJECTED
    seen = counter.values()
    write_family(lines, name, "counter", help_text)
    # Known reasons first (always present), then anything else a caller counted.
    for reason in (*REJECT_REASONS, *sorted(set(seen) - set(REJECT_REASONS))):
        lines.append(f"{name}{label_set([('reason', reason)])} {seen.get(reason, 0)}")


def _render_histogram(lines: list[str], snap: HistogramSnapshot) -> None:
    name, help_text = _LATENCY
    write_family(lines, name, "histogram", help_text)
    for bound, count in zip(snap.bounds, snap.cumulative, strict=True):
        lines.append(f'{name}_bucket{{le="{format_value(bound)}"}} {count}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {snap.count}')
    lines.append(f"{name}_sum {format_value(snap.sum)}")
    lines.append(f"{name}_count {snap.count}")


def write_family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    """A family's `# HELP` and `# TYPE` lines, appended to `lines`."""
    # HELP escapes only backslash and newline; a quote is literal there (format 0.0.4).
    escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    lines.append(f"# HELP {name} {escaped}")
    lines.append(f"# TYPE {name} {kind}")


def label_set(pairs: Iterable[tuple[str, str]]) -> str:
    """`{name="value",...}` with each value escaped."""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs) + "}"


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed escaped, as format 0.0.4 requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(x: float) -> str:
    """A sample value as Prometheus writes it: repr for finite floats, +Inf/-Inf/NaN else."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x)
