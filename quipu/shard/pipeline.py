"""The shard write pipeline: a bounded queue, one writer thread, the dead-letter queue.

    pipeline = AuditPipeline.start(store, PermissionPolicy.allow_all())
    handle = pipeline.handle("app")
    handle.emit(event)          # "queued" (or "duplicate" for a known Idempotency-Key)
    handle.flush()              # everything emitted before is durable
    pipeline.close()            # drain, flush, stop the writer; the caller closes the store

`emit` only checks and queues, so a request never waits for a disk; one writer thread
(`quipu.shard.writer`, which also says what becomes of an accepted event) does every
append, flush and redrive in queue order. This module decides what is admitted (role,
event, duplicate, capacity) and waits, bounded, for the markers it queues.
"""

import gc
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import orjson

from quipu.core.access import AccessPage
from quipu.core.audit_store import AuditStore
from quipu.core.checkpoint import Checkpoint
from quipu.core.errors import BadInput, Conflict, Overloaded, QuipuError, StorageFull
from quipu.core.event import AuditEvent
from quipu.core.files import replace_durably
from quipu.core.integrity import IntegrityReport
from quipu.core.query import Page
from quipu.core.query_spec import AccessQuery, LogQuery
from quipu.core.schema import ColumnDef, TypeSchema
from quipu.core.table import now_micros
from quipu.shard.dlq import DeadLetterQueue, ParkedEvent
from quipu.shard.health import DiskProbe, HealthState
from quipu.shard.idempotency import IdempotencyWindow
from quipu.shard.metrics import PipelineMetrics
from quipu.shard.permissions import Action, PermissionPolicy
from quipu.shard.writer import DISK_FULL, WRITER_ACTOR, Marker, WriteQueue, Writer

__all__ = [
    "DEFAULTS",
    "DENY_ALL",
    "DISK_FULL",
    "DLQ_DIR",
    "FROZEN_FILE",
    "FROZEN_MESSAGE",
    "WRITER_ACTOR",
    "AuditHandle",
    "AuditPipeline",
    "PipelineConfig",
]
DLQ_DIR = "dlq"
FROZEN_FILE = "FROZEN"  # beside the store's files: this shard takes no more writes
# The ingest front recognises a frozen shard's 409 by this start and re-reads the shard map.
FROZEN_MESSAGE = "this shard is frozen: the cluster grew, and writes go to the active shards"


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


class AuditPipeline:
    """Start with `AuditPipeline.start(store, ...)`; reach it through `handle(role)`.

    `policy` is a plain attribute: a reload swaps the whole (immutable) policy and every
    handle sees the new one on its next call."""

    def __init__(self, store: AuditStore, policy: PermissionPolicy, config: PipelineConfig) -> None:
        self.store, self.policy, self.config = store, policy, config
        self.metrics, self.health = PipelineMetrics(), HealthState()
        self.dlq = DeadLetterQueue(store.root / DLQ_DIR)
        self.window = IdempotencyWindow(config.idempotency_window)
        self._writes = WriteQueue()
        self._frozen = (store.root / FROZEN_FILE).exists()
        self._verifying = threading.Lock()
        self._writer: Writer  # built by start(), with the hooks

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
        pipeline._writer = Writer(
            pipeline._writes,
            store,
            dlq=pipeline.dlq,
            window=pipeline.window,
            config=config,
            metrics=pipeline.metrics,
            health=pipeline.health,
            fallback=fallback,
            on_written=on_written,
            probe=probe,
        )
        pipeline._writes.start_accepting()
        pipeline.health.writer_alive = True
        pipeline._writer.start()
        # The cyclic GC walking the open store's registry costs ~1/3 of append time: freeze it out.
        gc.freeze()
        return pipeline

    def handle(self, role: str, actor: str | None = None) -> "AuditHandle":
        """A handle for one caller; `actor` (default: the role) is what the access log records."""
        return AuditHandle(self, role, role if actor is None else actor)

    @property
    def queue_depth(self) -> int:
        return self._writes.depth

    @property
    def dlq_count(self) -> int:
        return self.dlq.count()

    @property
    def writer_alive(self) -> bool:
        return self._writer.is_alive() and self.health.writer_alive

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, let the writer drain the queue and flush the store, stop it.
        The store stays open: whoever opened it closes it."""
        self._writes.stop_accepting()
        if self._writer.is_alive():
            self._writes.put_stop(Marker("stop", WRITER_ACTOR))
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise Overloaded(
                f"the writer did not drain its queue ({self._writes.depth} events) within {timeout}s; "
                "call close() again to keep waiting"
            )

    # --- called by handles --------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Persist the frozen mark first: a shard restarted after a grow must stay frozen."""
        replace_durably(self.store.root / FROZEN_FILE, orjson.dumps({"frozen_at": now_micros()}))
        self._frozen = True

    def check_not_frozen(self) -> None:
        if self._frozen:
            raise Conflict(FROZEN_MESSAGE)

    def _admit(self, event: AuditEvent) -> str:
        self.check_not_frozen()
        if event.occurred_at is None:  # the accept time is the occurrence time, kept in the DLQ too
            event = replace(event, occurred_at=now_micros())
        self.store.check_event(event)
        key = event.idempotency_key
        if key is not None and not self.window.claim(event.tenant, key):
            return "duplicate"
        refusal = self._writes.admit(event, self._refusal)
        if refusal is None:
            return "queued"
        if key is not None:
            self.window.forget(event.tenant, key)
        self.metrics.emit_rejected.inc(refusal[0])
        raise refusal[1]

    def _refusal(self, accepting: bool, depth: int) -> tuple[str, QuipuError] | None:
        """Why an event is refused (metric label, error), or None; runs under the queue's lock."""
        if not accepting:
            return "writer_stopped", Overloaded(
                "the writer is not running, so events are not persisted; check the shard's health and log"
            )
        if self.health.disk_full and self.config.reject_emit_when_disk_full:
            return "disk_full", StorageFull("the store's disk is full; free space, then retry")
        if depth >= self.config.queue_capacity:
            return "queue_full", Overloaded(
                f"the write queue is full ({self.config.queue_capacity} events); retry after a backoff"
            )
        return None

    def _run_marker(self, kind: str, actor: str) -> int:
        """Queue a flush or redrive behind everything emitted so far and wait (bounded)."""
        marker = Marker(kind, actor)
        if not self._writes.put_marker(marker):
            raise Conflict(f"the pipeline is closed or its writer stopped; no {kind} can run")
        if not marker.done.wait(self.config.wait_timeout):
            raise Overloaded(
                f"the writer has not finished this {kind} within {self.config.wait_timeout}s "
                f"({self._writes.depth} events queued); it still runs: call {kind}() again to wait"
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
        """Per event: "queued", "duplicate", or the error that refused it (the rest go on).
        A frozen shard refuses the whole batch: its events belong on another shard."""
        self._check(Action.EMIT)
        self.pipeline.check_not_frozen()
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

    def freeze(self) -> None:
        """Refuse every later emit, for good (the cluster grew past this shard)."""
        self._check(Action.ADMINISTER)
        self.pipeline.freeze()

    def head(self) -> dict:
        """The signed-tree head an anchor needs, with the figures `quipu-cluster status` shows."""
        self._check(Action.ADMINISTER)
        p = self.pipeline
        size, root = p.store.head()
        return {
            "tree_size": size,
            "merkle_root": root.hex(),
            "records": p.store.retained_rows,
            "queue_depth": p.queue_depth,
            "dlq": p.dlq_count,
            "frozen": p.frozen,
            "writer_alive": p.writer_alive,
        }

    def known_keys(self, tenant: str | None, keys: Sequence[str]) -> list[str]:
        """Which of `keys` this shard has accepted for `tenant` (queued, parked or recorded):
        after a grow, the front asks a tenant's earlier shards before it writes a retry."""
        self._check(Action.EMIT)
        return [k for k in keys if self.pipeline.window.state(tenant, k) is not None]

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

    def prove_inclusion(self, log_id: str, tenant: str | None = None) -> dict:
        return self._check(Action.QUERY).prove_inclusion(log_id, tenant=tenant, actor=self.actor)

    def prove_consistency(self, first_size: int) -> dict:
        return self._check(Action.QUERY).prove_consistency(first_size, actor=self.actor)

    def entity_types(self) -> list[TypeSchema]:
        """Any role granted at least one action: emitters need the types to build events."""
        return self._any_grant().entity_types(actor=self.actor)

    def custom_columns(self) -> list[ColumnDef]:
        """As entity_types: emitters need the columns too."""
        return self._any_grant().custom_columns(actor=self.actor)

    def _any_grant(self) -> AuditStore:
        self.pipeline.policy.check_any(self.role)
        return self.pipeline.store
