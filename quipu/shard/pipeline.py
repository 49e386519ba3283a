"""The shard write pipeline: a bounded queue, one writer thread, the dead-letter queue.

    pipeline = AuditPipeline.start(store, PermissionPolicy.allow_all())
    handle = pipeline.handle("app")
    handle.emit(event)          # "queued" (or "duplicate" for a known Idempotency-Key)
    handle.flush()              # everything emitted before is durable
    pipeline.close()            # drain, flush, stop the writer; the caller closes the store

`emit` only checks and queues, so a request never waits for a disk. One writer thread owns
every append: it groups what is queued into one `append_many` (one sync decision for the
lot), which is what makes the store fast under load. Flush and redrive travel through the
same queue as markers, so "everything emitted before this call" has an exact meaning.

Once accepted, an event is written, parked in the DLQ, handed to the `fallback` hook, or
counted in `metrics.events_lost` (and its key forgotten, so the client's retry records it);
it never vanishes silently. A bad event (an undefined type) parks at once: retrying does not
fix it, defining the type and redriving does. A full disk sets the health latch; while it
holds, batches park instead of failing one by one, and the writer retries a store flush
every `probe_interval` to notice when space is back.
"""

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from quipu.core.access import AccessPage
from quipu.core.audit_store import AuditStore
from quipu.core.checkpoint import Checkpoint
from quipu.core.errors import (
    BadInput,
    Conflict,
    CorruptStore,
    Forbidden,
    NotFound,
    Overloaded,
    QuipuError,
    StorageFull,
)
from quipu.core.event import AuditEvent
from quipu.core.integrity import IntegrityReport
from quipu.core.query import Page
from quipu.core.query_spec import AccessQuery, LogQuery
from quipu.core.schema import ColumnDef, TypeSchema
from quipu.core.table import now_micros
from quipu.shard.dlq import DeadLetterQueue, ParkedEvent
from quipu.shard.health import DiskProbe, HealthState
from quipu.shard.idempotency import IdempotencyWindow, KeyState
from quipu.shard.metrics import PipelineMetrics
from quipu.shard.permissions import Action, PermissionPolicy

log = logging.getLogger(__name__)
DLQ_DIR = "dlq"
WRITER_ACTOR = "quipu:writer"  # what the access log records for the writer's own flushes
DISK_FULL = "disk full (ENOSPC); free space, then redrive"


@dataclass(frozen=True)
class PipelineConfig:
    queue_capacity: int = 32768
    batch_max: int = 1000  # events per store.append_many (group commit)
    max_retries: int = 3  # for unexpected errors (OSError etc.), not for bad events, not for ENOSPC
    retry_backoff: float = 0.02  # seconds, doubled per retry
    idempotency_window: int = 100_000
    reject_emit_when_disk_full: bool = False  # fast StorageFull (HTTP 507) from emit while latched
    probe_interval: float = 5.0  # seconds between DiskProbe.run() calls from the writer loop
    wait_timeout: float = 60.0  # seconds flush() and redrive() wait for the writer to reach them

    def __post_init__(self) -> None:
        for name in ("queue_capacity", "batch_max", "idempotency_window"):
            if getattr(self, name) < 1:
                raise BadInput(f"pipeline.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.retry_backoff < 0:
            raise BadInput("pipeline.max_retries and retry_backoff must not be negative")
        if self.probe_interval <= 0 or self.wait_timeout <= 0:
            raise BadInput("pipeline.probe_interval and wait_timeout must be positive")


DEFAULTS = PipelineConfig()
DENY_ALL = PermissionPolicy.deny_by_default()  # immutable, so a shared default is safe


@dataclass
class _Queued:
    event: AuditEvent  # occurred_at always set
    accepted: float | None  # time.monotonic() at emit; None for a redriven entry


@dataclass
class _Marker:
    kind: str  # "flush" | "redrive" | "stop"
    actor: str
    done: threading.Event = field(default_factory=threading.Event)
    result: int = 0
    error: BaseException | None = None


class AuditPipeline:
    """Start with `AuditPipeline.start(store, ...)`; reach it through `handle(role)`.

    `policy` is a plain attribute: a reload swaps the whole (immutable) policy and every
    handle sees the new one on its next call."""

    def __init__(self, store: AuditStore, policy: PermissionPolicy, config: PipelineConfig) -> None:
        self.store, self.policy, self.config = store, policy, config
        self.metrics, self.health = PipelineMetrics(), HealthState()
        self.dlq = DeadLetterQueue(store.root / DLQ_DIR)
        self.window = IdempotencyWindow(config.idempotency_window)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders admission against close() and the writer's end
        self._depth = 0  # events queued, not yet taken by the writer (markers never count)
        self._accepting = self._stop_sent = False
        self._verifying = threading.Lock()
        self._writer: _Writer  # built by start(), with the hooks

    @classmethod
    def start(
        cls,
        store: AuditStore,
        policy: PermissionPolicy = DENY_ALL,
        config: PipelineConfig = DEFAULTS,
        *,
        fallback: Callable[[list[ParkedEvent]], None] | None = None,
        on_written: Callable[[AuditEvent, str], None] | None = None,
        metrics: PipelineMetrics | None = None,
        health: HealthState | None = None,
        probe: DiskProbe | None = None,
    ) -> "AuditPipeline":
        """Rebuild the duplicate window from the store and the DLQ, then start the writer."""
        pipeline = cls(store, policy, config)
        pipeline.metrics = metrics if metrics is not None else pipeline.metrics
        pipeline.health = health if health is not None else pipeline.health
        pipeline.window.rebuild(store, pipeline.dlq)
        pipeline._writer = _Writer(pipeline, fallback, on_written, probe)
        pipeline._accepting = pipeline.health.writer_alive = True
        pipeline._writer.start()
        # The cyclic GC walking the open store's registry costs ~1/3 of append time: freeze it out.
        gc.freeze()
        return pipeline

    def handle(self, role: str, actor: str | None = None) -> "AuditHandle":
        """A handle for one caller; `actor` (default: the role) is what the access log records."""
        return AuditHandle(self, role, role if actor is None else actor)

    @property
    def queue_depth(self) -> int:
        return self._depth

    @property
    def dlq_count(self) -> int:
        return self.dlq.count()

    @property
    def writer_alive(self) -> bool:
        return self._writer.is_alive() and self.health.writer_alive

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, let the writer drain the queue and flush the store, stop it.
        The store stays open: whoever opened it closes it."""
        with self._lock:
            self._accepting = False
            if not self._stop_sent and self._writer.is_alive():
                self._stop_sent = True
                self._queue.put(_Marker("stop", WRITER_ACTOR))
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise Overloaded(
                f"the writer did not drain its queue ({self._depth} events) within {timeout}s; "
                "call close() again to keep waiting"
            )

    # --- called by handles --------------------------------------------------------------

    def _admit(self, event: AuditEvent) -> str:
        if event.occurred_at is None:  # the accept time is the occurrence time, kept in the DLQ too
            event = replace(event, occurred_at=now_micros())
        self.store.check_event(event)
        key = event.idempotency_key
        if key is not None and not self.window.claim(event.tenant, key):
            return "duplicate"
        with self._lock:
            refusal = self._refusal()
            if refusal is None:
                self._depth += 1
                self._queue.put(_Queued(event, time.monotonic()))
                return "queued"
        if key is not None:
            self.window.forget(event.tenant, key)
        self.metrics.emit_rejected.inc(refusal[0])
        raise refusal[1]

    def _refusal(self) -> tuple[str, QuipuError] | None:
        if not self._accepting:
            return "writer_stopped", Overloaded(
                "the writer is not running, so events are not persisted; check the shard's health and log"
            )
        if self.health.disk_full and self.config.reject_emit_when_disk_full:
            return "disk_full", StorageFull("the store's disk is full; free space, then retry")
        if self._depth >= self.config.queue_capacity:
            return "queue_full", Overloaded(
                f"the write queue is full ({self.config.queue_capacity} events); retry after a backoff"
            )
        return None

    def _run_marker(self, kind: str, actor: str) -> int:
        """Queue a flush or redrive behind everything emitted so far and wait (bounded)."""
        marker = _Marker(kind, actor)
        with self._lock:
            if not self._accepting:
                raise Conflict(f"the pipeline is closed or its writer stopped; no {kind} can run")
            self._queue.put(marker)
        if not marker.done.wait(self.config.wait_timeout):
            raise Overloaded(
                f"the writer has not finished this {kind} within {self.config.wait_timeout}s "
                f"({self._depth} events queued); it still runs: call {kind}() again to wait"
            )
        if marker.error is not None:
            raise marker.error
        return marker.result

    def _verify(self, actor: str) -> IntegrityReport:
        if not self._verifying.acquire(blocking=False):
            raise Conflict("an integrity verify is already running; wait for its report, then retry")
        try:
            self.metrics.verify_runs.inc()
            return self.store.verify_integrity(actor=actor)
        finally:
            self._verifying.release()


class _Writer(threading.Thread):
    """The one thread that appends: batches, isolates bad events, parks, redrives."""

    def __init__(
        self,
        pipeline: AuditPipeline,
        fallback: Callable[[list[ParkedEvent]], None] | None,
        on_written: Callable[[AuditEvent, str], None] | None,
        probe: DiskProbe | None,
    ) -> None:
        super().__init__(name="quipu-writer", daemon=True)
        self.p, self.store, self.cfg = pipeline, pipeline.store, pipeline.config
        self.metrics, self.health, self.window = pipeline.metrics, pipeline.health, pipeline.window
        self.fallback, self.on_written, self.probe = fallback, on_written, probe
        self.held: _Marker | None = None  # a marker met while draining a batch: runs right after it
        self.next_tick = 0.0

    def run(self) -> None:
        try:
            self.loop()
        except BaseException:
            log.exception("the writer thread died; events are no longer persisted")
        finally:
            self.wind_down()

    def loop(self) -> None:
        self.next_tick = time.monotonic() + self.cfg.probe_interval
        while True:
            try:
                item = self.p._queue.get(timeout=max(0.0, self.next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            if time.monotonic() >= self.next_tick:
                self.tick()
            if isinstance(item, _Queued):
                batch = self.take_batch(item)
                try:
                    self.write(batch)
                except Exception:
                    log.exception("writer: unexpected error handling a batch of %d events", len(batch))
                item, self.held = self.held, None
            if isinstance(item, _Marker) and self.run_marker(item):
                return

    def take_batch(self, first: _Queued) -> list[_Queued]:
        batch = [first]
        while len(batch) < self.cfg.batch_max:
            try:
                item = self.p._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Marker):
                self.held = item
                break
            batch.append(item)
        with self.p._lock:
            self.p._depth -= len(batch)
        return batch

    def run_marker(self, marker: _Marker) -> bool:
        """Run a flush, redrive or stop marker; True for stop."""
        try:
            if marker.kind == "stop":
                self.flush(WRITER_ACTOR)
                return True
            if marker.kind == "flush":
                self.flush(marker.actor)
            else:
                marker.result = self.redrive(marker.actor)
        except Exception as err:
            if marker.kind == "stop":
                log.error("the final flush failed (%s); buffered rows may not be durable", err)
                return True
            marker.error = _detached(err)
        finally:
            marker.done.set()
        return False

    def tick(self) -> None:
        """Every probe_interval: measure the disk, and while latched retry a store flush."""
        self.next_tick = time.monotonic() + self.cfg.probe_interval
        latched = self.health.disk_full
        if self.probe is not None:
            try:
                self.probe.run()
            except Exception as err:
                log.warning("the disk probe failed: %s", err)
        if latched:
            try:
                self.flush(WRITER_ACTOR)
                log.info("the store flushed again: disk space is back, writes resume")
            except Exception as err:
                log.warning("the store still cannot flush (%s); events keep parking", type(err).__name__)

    def flush(self, actor: str) -> None:
        try:
            self.store.flush(actor=actor)
        except StorageFull:
            self.health.set_disk_full(True)
            raise
        self.health.set_disk_full(False)

    # --- writing --------------------------------------------------------------------------

    def write(self, batch: list[_Queued]) -> None:
        failed = self.append(batch)
        if failed:
            self.park(failed)

    def append(self, items: list[_Queued]) -> list[tuple[_Queued, str]]:
        """Append `items`; returns those not written, each with the reason it parks.

        After a failed append_many the store's tree_size says how many rows went in (their
        indexes are assigned, a later flush writes them): those count as written and are
        never appended again; only the rest is retried, isolated or parked."""
        pending, tries = items, 0
        while pending:
            if self.health.disk_full:
                return [(q, DISK_FULL) for q in pending]
            before = self.store.tree_size
            try:
                ids = self.store.append_many([q.event for q in pending])
            except (BadInput, NotFound) as err:  # a bad event: retrying cannot fix it
                pending = self.written_partly(pending, before)
                return self.isolate(pending) if len(pending) > 1 else [(q, str(err)) for q in pending]
            except StorageFull:
                pending = self.written_partly(pending, before)
                self.health.set_disk_full(True)
                log.warning("disk full: the store stays latched until a flush succeeds")
                return [(q, DISK_FULL) for q in pending]
            except Exception as err:
                pending = self.written_partly(pending, before)
                reason = f"the store failed {tries + 1} times ({type(err).__name__}: {err}); redrive retries"
                if tries >= self.cfg.max_retries:
                    return [(q, reason) for q in pending]
                tries += 1
                self.metrics.write_retries.inc()
                log.warning(
                    "store append failed (%s); retry %d of %d",
                    type(err).__name__,
                    tries,
                    self.cfg.max_retries,
                )
                time.sleep(self.cfg.retry_backoff * 2 ** (tries - 1))
                continue
            self.written(pending, ids)
            return []
        return []

    def isolate(self, items: list[_Queued]) -> list[tuple[_Queued, str]]:
        """One by one, so one bad event does not hold back the good ones of its batch."""
        return [failure for q in items for failure in self.append([q])]

    def written_partly(self, pending: list[_Queued], before: int) -> list[_Queued]:
        got = self.store.tree_size - before
        # The store raised before returning these rows' log_ids: on_written cannot see them.
        self.written(pending[:got], None)
        return pending[got:]

    def written(self, items: list[_Queued], ids: list[str] | None) -> None:
        if not items:
            return
        self.metrics.writes_ok.inc(len(items))
        now = time.monotonic()
        for i, q in enumerate(items):
            if q.accepted is not None:
                self.metrics.write_latency.observe(now - q.accepted)
            if q.event.idempotency_key is not None:
                self.window.mark(q.event.tenant, q.event.idempotency_key, KeyState.RECORDED)
            if ids is not None and self.on_written is not None:
                try:
                    self.on_written(q.event, ids[i])
                except Exception as err:  # a hook must never stop the writer
                    log.error("the on_written hook failed (%s); the event is recorded", type(err).__name__)
        if ids is not None and self.health.disk_full:
            self.health.set_disk_full(False)

    def park(self, failed: list[tuple[_Queued, str]]) -> None:
        now = now_micros()
        entries = [ParkedEvent(q.event, reason, now) for q, reason in failed]
        try:
            self.p.dlq.park(entries)
        except Exception as err:
            log.error("could not park %d events in the dead-letter queue: %s", len(entries), err)
            self.fall_back(entries)
            return
        self.metrics.writes_parked.inc(len(entries))
        self.mark(entries, KeyState.PARKED)
        log.warning("parked %d events in the dead-letter queue", len(entries))

    def fall_back(self, entries: list[ParkedEvent]) -> None:
        if self.fallback is not None:
            try:
                self.fallback(entries)
                self.mark(entries, KeyState.PARKED)
                return
            except Exception as err:
                log.error("the fallback hook failed (%s)", type(err).__name__)
        self.metrics.events_lost.inc(len(entries))
        for e in entries:  # forgotten, so the client's retry can record the event
            if e.event.idempotency_key is not None:
                self.window.forget(e.event.tenant, e.event.idempotency_key)
        log.error("LOST %d events: neither the dead-letter queue nor a fallback took them", len(entries))

    def mark(self, entries: list[ParkedEvent], state: KeyState) -> None:
        for e in entries:
            if e.event.idempotency_key is not None:
                self.window.mark(e.event.tenant, e.event.idempotency_key, state)

    def redrive(self, actor: str) -> int:
        """Record what the DLQ holds, file by file. A file is rewritten only after the store
        flush: a crash in between leaves entries that are in the store AND parked, and the
        window (rebuilt from the store on start) skips them, so nothing is recorded twice."""
        if self.health.disk_full:
            self.flush(actor)  # StorageFull: nothing is touched
        recorded = 0
        for path in self.p.dlq.batches():
            try:
                entries = self.p.dlq.load(path)
            except CorruptStore as err:
                log.error("%s", err)
                self.p.dlq.quarantine(path)
                continue
            todo = [e for e in entries if not self.in_store(e.event)]
            items = [_Queued(e.event, None) for e in todo]
            failed = {id(q): reason for q, reason in self.append(items)}
            self.flush(actor)
            still = [
                ParkedEvent(e.event, failed[id(q)], e.parked_at)
                for e, q in zip(todo, items, strict=True)
                if id(q) in failed
            ]
            self.p.dlq.replace(path, still)
            recorded += len(todo) - len(still)
        return recorded

    def in_store(self, event: AuditEvent) -> bool:
        key = event.idempotency_key
        return key is not None and self.window.state(event.tenant, key) is KeyState.RECORDED

    def wind_down(self) -> None:
        """Whatever is still queued when the writer ends: events park, markers fail."""
        with self.p._lock:
            self.p._accepting = False
            self.health.writer_alive = False
        leftovers, item = [], self.held
        while True:
            if isinstance(item, _Queued):
                leftovers.append((item, "the writer stopped before writing it; redrive records it"))
            elif isinstance(item, _Marker):
                item.error = Conflict(f"the writer stopped before this {item.kind} ran")
                item.done.set()
            try:
                item = self.p._queue.get_nowait()
            except queue.Empty:
                break
        if leftovers:
            with self.p._lock:
                self.p._depth -= len(leftovers)
            self.park(leftovers)


def _detached(err: BaseException) -> BaseException:
    """The error without the writer's tracebacks, to hand to the waiting caller. A kept
    traceback keeps the failed write's frames alive, and with them a memoryview of the
    segment's pending buffer (quipu.core.files.write_all), which then cannot be resized:
    every later append would fail with BufferError for as long as the caller holds it."""
    seen: BaseException | None = err
    while seen is not None:
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
    return err


@dataclass(frozen=True)
class AuditHandle:
    """One caller's view of the pipeline: every call checks the role, every store call
    records `actor`. Cheap and immutable; `clone()` matches the Rust original's API."""

    pipeline: AuditPipeline
    role: str
    actor: str

    def clone(self) -> "AuditHandle":
        return replace(self)

    def _check(self, action: Action) -> AuditStore:
        self.pipeline.policy.check(self.role, action)
        return self.pipeline.store

    def emit(self, event: AuditEvent) -> str:
        """ "queued" or "duplicate"; BadInput, Overloaded or StorageFull when refused."""
        self._check(Action.EMIT)
        return self.pipeline._admit(event)

    def emit_many(self, events: Sequence[AuditEvent]) -> list[str | QuipuError]:
        """Per event: "queued", "duplicate", or the error that refused it (the rest go on)."""
        self._check(Action.EMIT)
        out: list[str | QuipuError] = []
        for event in events:
            try:
                out.append(self.pipeline._admit(event))
            except (BadInput, Overloaded, StorageFull) as err:
                out.append(err)
        return out

    def flush(self) -> None:
        """Returns once everything emitted before the call is written and durable."""
        self._check(Action.ADMINISTER)
        self.pipeline._run_marker("flush", self.actor)

    def redrive(self) -> int:
        """Record the parked events that can be recorded now; returns how many were."""
        self._check(Action.ADMINISTER)
        return self.pipeline._run_marker("redrive", self.actor)

    def dlq_count(self) -> int:
        self._check(Action.ADMINISTER)
        return self.pipeline.dlq_count

    def verify(self) -> IntegrityReport:
        """One verify at a time: it reads every segment, and two would only compete for I/O."""
        self._check(Action.ADMINISTER)
        return self.pipeline._verify(self.actor)

    def run_retention(self) -> int:
        return self._check(Action.ADMINISTER).run_retention(actor=self.actor)

    def checkpoint(self) -> Checkpoint | None:
        return self._check(Action.ADMINISTER).checkpoint(actor=self.actor)

    def define_type(self, schema: TypeSchema) -> None:
        self._check(Action.ADMINISTER).define_type(schema, actor=self.actor)

    def define_column(self, column: ColumnDef) -> None:
        self._check(Action.ADMINISTER).define_column(column, actor=self.actor)

    def query_access(self, q: AccessQuery) -> AccessPage:
        return self._check(Action.ADMINISTER).query_access(q, actor=self.actor)

    # Queries are snapshot reads: they run on the caller's thread, never through the queue.
    def query(self, q: LogQuery) -> Page:
        return self._check(Action.QUERY).query(q, actor=self.actor)

    def count(self, q: LogQuery) -> int:
        return self._check(Action.QUERY).count(q, actor=self.actor)

    def list_entities(self, type_name: str, include_deleted: bool = False) -> list[dict]:
        return self._check(Action.QUERY).list_entities(type_name, include_deleted, actor=self.actor)

    def entity_history(self, type_name: str, entity_id: str) -> list[dict]:
        return self._check(Action.QUERY).entity_history(type_name, entity_id, actor=self.actor)

    def prove_inclusion(self, log_id: str) -> dict:
        return self._check(Action.QUERY).prove_inclusion(log_id, actor=self.actor)

    def prove_consistency(self, first_size: int) -> dict:
        return self._check(Action.QUERY).prove_consistency(first_size, actor=self.actor)

    def entity_types(self) -> list[TypeSchema]:
        """Any role granted at least one action: emitters need the types to build events."""
        if not any(self.pipeline.policy.is_allowed(self.role, a) for a in Action):
            raise Forbidden("this token's role is granted no action")
        return self.pipeline.store.entity_types(actor=self.actor)
