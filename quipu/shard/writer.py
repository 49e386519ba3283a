"""The shard's one writer thread, and the queue it shares with the pipeline.

One writer thread owns every append: it groups what is queued into one `append_many` (one
sync decision for the lot), which is what makes the store fast under load. Flush and
redrive travel through the same queue as markers, so "everything emitted before this call"
has an exact meaning.

Once accepted, an event is written, parked in the DLQ, handed to the `fallback` hook, or
counted in `metrics.events_lost` (and its key forgotten, so the client's retry records it);
it never vanishes silently. A bad event (an undefined type) parks at once: retrying does not
fix it, defining the type and redriving does. A full disk sets the health latch; while it
holds, batches park instead of failing one by one, and the writer retries a store flush
every `probe_interval` to notice when space is back.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from quipu.core.audit_store import AuditStore
from quipu.core.errors import BadInput, Conflict, CorruptStore, NotFound, StorageFull
from quipu.core.event import AuditEvent
from quipu.core.table import now_micros
from quipu.shard.dlq import DeadLetterQueue, ParkedEvent
from quipu.shard.health import DiskProbe, HealthState
from quipu.shard.idempotency import IdempotencyWindow, KeyState
from quipu.shard.metrics import PipelineMetrics

if TYPE_CHECKING:  # the pipeline builds the writer; only the config's type is needed here
    from quipu.shard.pipeline import PipelineConfig

log = logging.getLogger(__name__)
WRITER_ACTOR = "quipu:writer"  # what the access log records for the writer's own flushes
DISK_FULL = "disk full (ENOSPC); free space, then redrive"
Refusal = TypeVar("Refusal")


@dataclass
class Queued:
    event: AuditEvent  # occurred_at always set
    accepted: float | None  # time.monotonic() at emit; None for a redriven entry


@dataclass
class Marker:
    kind: str  # "flush" | "redrive" | "stop"
    actor: str
    done: threading.Event = field(default_factory=threading.Event)
    result: int = 0
    error: BaseException | None = None


class WriteQueue:
    """What emitters hand the writer: events and markers, in order, with a count of events.

    The lock orders admission against close() and the writer's end: once `stop_accepting`
    returns, no event or marker is admitted any more, so whatever `drain` finds afterwards is
    all there is, and nothing is left in the queue with no thread to write or fail it."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Queued | Marker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._depth = 0  # events queued, not yet taken by the writer (markers never count)
        self._accepting = self._stop_sent = False

    @property
    def depth(self) -> int:
        """Events admitted and not yet taken; read without the lock, as a gauge."""
        return self._depth

    def start_accepting(self) -> None:
        with self._lock:
            self._accepting = True

    def admit(self, event: AuditEvent, refusal: Callable[[bool, int], Refusal | None]) -> Refusal | None:
        """Queue `event` unless `refusal(accepting, depth)` names a reason; returns that reason.
        The check runs under the lock, so no other admission or close() slips in between."""
        with self._lock:
            reason = refusal(self._accepting, self._depth)
            if reason is None:
                self._depth += 1
                self._items.put(Queued(event, time.monotonic()))
            return reason

    def put_marker(self, marker: Marker) -> bool:
        """Queue a flush or redrive behind everything admitted so far; False once closed."""
        with self._lock:
            if not self._accepting:
                return False
            self._items.put(marker)
            return True

    def put_stop(self, marker: Marker) -> None:
        """Queue the writer's stop marker, once however often the pipeline is closed."""
        with self._lock:
            if not self._stop_sent:
                self._stop_sent = True
                self._items.put(marker)

    def take(self, timeout: float = 0.0) -> Queued | Marker | None:
        """The next item, waiting up to `timeout` seconds (0: not at all); None if none came."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def taken(self, events: int) -> None:
        """Count `events` as taken by the writer: once per batch, not per event, to keep the
        lock off the hot path."""
        with self._lock:
            self._depth -= events

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def drain(self) -> list[Queued | Marker]:
        """Everything still queued; call after `stop_accepting`, when nothing more arrives."""
        leftovers = []
        while (item := self.take()) is not None:
            leftovers.append(item)
        return leftovers


class Writer(threading.Thread):
    """The one thread that appends: batches, isolates bad events, parks, redrives."""

    def __init__(
        self,
        writes: WriteQueue,
        store: AuditStore,
        *,
        dlq: DeadLetterQueue,
        window: IdempotencyWindow,
        config: "PipelineConfig",
        metrics: PipelineMetrics,
        health: HealthState,
        fallback: Callable[[list[ParkedEvent]], None] | None = None,
        on_written: Callable[[AuditEvent, str], None] | None = None,
        probe: DiskProbe | None = None,
    ) -> None:
        super().__init__(name="quipu-writer", daemon=True)
        self.writes, self.store, self.dlq, self.window, self.cfg = writes, store, dlq, window, config
        self.metrics, self.health = metrics, health
        self.fallback, self.on_written, self.probe = fallback, on_written, probe
        self.held: Marker | None = None  # a marker met while draining a batch: runs right after it
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
            item = self.writes.take(max(0.0, self.next_tick - time.monotonic()))
            if time.monotonic() >= self.next_tick:
                self.tick()
            if isinstance(item, Queued):
                batch = self.take_batch(item)
                try:
                    self.write(batch)
                except Exception:
                    log.exception("writer: unexpected error handling a batch of %d events", len(batch))
                item, self.held = self.held, None
            if isinstance(item, Marker) and self.run_marker(item):
                return

    def take_batch(self, first: Queued) -> list[Queued]:
        batch = [first]
        while len(batch) < self.cfg.batch_max:
            item = self.writes.take()
            if item is None:
                break
            if isinstance(item, Marker):
                self.held = item
                break
            batch.append(item)
        self.writes.taken(len(batch))
        return batch

    def run_marker(self, marker: Marker) -> bool:
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
            marker.error = err  # the waiting caller raises it
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

    def write(self, batch: list[Queued]) -> None:
        failed = self.append(batch)
        if failed:
            self.park(failed)

    def append(self, items: list[Queued]) -> list[tuple[Queued, str]]:
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

    def isolate(self, items: list[Queued]) -> list[tuple[Queued, str]]:
        """One by one, so one bad event does not hold back the good ones of its batch."""
        return [failure for q in items for failure in self.append([q])]

    def written_partly(self, pending: list[Queued], before: int) -> list[Queued]:
        got = self.store.tree_size - before
        # The store raised before returning these rows' log_ids: on_written cannot see them.
        self.written(pending[:got], None)
        return pending[got:]

    def written(self, items: list[Queued], ids: list[str] | None) -> None:
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

    def park(self, failed: list[tuple[Queued, str]]) -> None:
        now = now_micros()
        entries = [ParkedEvent(q.event, reason, now) for q, reason in failed]
        try:
            self.dlq.park(entries)
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
        for path in self.dlq.batches():
            try:
                entries = self.dlq.load(path)
            except CorruptStore as err:
                log.error("%s", err)
                self.dlq.quarantine(path)
                continue
            todo = [e for e in entries if not self.in_store(e.event)]
            items = [Queued(e.event, None) for e in todo]
            failed = {id(q): reason for q, reason in self.append(items)}
            self.flush(actor)
            still = [
                ParkedEvent(e.event, failed[id(q)], e.parked_at)
                for e, q in zip(todo, items, strict=True)
                if id(q) in failed
            ]
            self.dlq.replace(path, still)
            recorded += len(todo) - len(still)
        return recorded

    def in_store(self, event: AuditEvent) -> bool:
        key = event.idempotency_key
        return key is not None and self.window.state(event.tenant, key) is KeyState.RECORDED

    def wind_down(self) -> None:
        """Whatever is still queued when the writer ends: events park, markers fail."""
        self.writes.stop_accepting()
        self.health.writer_alive = False
        leftovers = []
        for item in [self.held, *self.writes.drain()]:
            if isinstance(item, Queued):
                leftovers.append((item, "the writer stopped before writing it; redrive records it"))
            elif isinstance(item, Marker):
                item.error = Conflict(f"the writer stopped before this {item.kind} ran")
                item.done.set()
        if leftovers:
            self.writes.taken(len(leftovers))
            self.park(leftovers)
