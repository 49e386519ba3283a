"""The embedded audit store: what an application calls to record and search its audit log.

    store = AuditStore.open(StoreConfig("./audit-data", keys=KeyRing.generate()))
    store.define_type(default_actor_type())
    store.define_type(default_target_type())
    log_id = store.append(AuditEvent("default_actor", EntityInput("svc-1").text("name", "billing"),
                                     "PUT", "/api/docs/42", Content("Text", "saved"))
                          .target(TargetSpec("default_target", EntityInput("42").text("name", "doc-42"))))
    page = store.query(LogQuery(targets=(TargetFilter.exact("default_target", "name", "doc-42"),)))

Three tables of one Ledger: `logs` (one row per event), `registry` (types, columns and
entity versions) and, opt-in, `access` (the meta-audit). Appends are single-writer;
queries run on other threads against a snapshot and never take the write lock.
"""

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from quipu.core.access import AccessLog, AccessPage
from quipu.core.checkpoint import AnchorHook, Checkpoint
from quipu.core.errors import BadInput, Conflict, NotFound
from quipu.core.event import AuditEvent
from quipu.core.integrity import IntegrityReport
from quipu.core.keyring import KeyRing
from quipu.core.ledger import Ledger
from quipu.core.log_index import LogIndexSet, stale_index_files
from quipu.core.query import LogSearch, Page
from quipu.core.query_spec import AccessQuery, LogQuery, query_shape
from quipu.core.registry import Registry
from quipu.core.retention import RetentionPolicy
from quipu.core.row import EntityRef, LogRow, canonical_log_id, make_log_id, parse_log_id
from quipu.core.schema import ColumnDef, TypeSchema, default_actor_type, default_target_type
from quipu.core.sync import SyncPolicy
from quipu.core.table import TableConfig, now_micros

LOGS, REGISTRY, ACCESS = "logs", "registry", "access"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EMBEDDED = "embedded"  # the actor recorded when the caller names none


@dataclass(frozen=True)
class StoreConfig:
    root: str | os.PathLike
    keys: KeyRing = field(default_factory=KeyRing)
    sync: SyncPolicy = field(default_factory=lambda: SyncPolicy.every_n_or_interval(1000, 0.02))
    max_segment_bytes: int = 16 << 20
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    plaintext_cache: bool = False
    anchor: AnchorHook | None = None
    access_log: bool = False  # opt-in meta-audit of every query and admin operation
    access_retention: RetentionPolicy = field(default_factory=RetentionPolicy)


class AuditStore:
    """Open with `AuditStore.open(StoreConfig(...))`."""

    def __init__(self, config: StoreConfig, ledger: Ledger, registry: Registry) -> None:
        self.config = config
        self._ledger = ledger
        self._logs = ledger.table(LOGS)
        self._registry_table = ledger.table(REGISTRY)
        self._registry = registry
        self._write = threading.Lock()
        self._indexes = LogIndexSet(self._logs)
        self._search = LogSearch(self._logs, self._indexes, registry, self._render)
        # A row must never be durable before the registry versions it pins.
        self._logs.before_sync = self._registry_table.flush
        self._access = AccessLog(ledger.table(ACCESS)) if config.access_log else None

    def _audit(self, actor: str, operation: str, shape: dict | None = None) -> None:
        """One access record per query or admin call (when the access log is on)."""
        if self._access is not None:
            self._access.record(actor, operation, shape)

    @classmethod
    def open(cls, config: StoreConfig) -> "AuditStore":
        tables = {
            LOGS: TableConfig(config.max_segment_bytes, config.sync, config.retention),
            REGISTRY: TableConfig(config.max_segment_bytes, config.sync),
        }
        if config.access_log:
            tables[ACCESS] = TableConfig(config.max_segment_bytes, config.sync, config.access_retention)
        ledger = Ledger.open(Path(config.root), tables, keys=config.keys, anchor=config.anchor)
        try:
            registry = Registry(config.keys, config.plaintext_cache)
            for rec in ledger.table(REGISTRY).records():
                registry.replay(rec.payload)
            registry.fill_plaintext_cache()
            return cls(config, ledger, registry)
        except BaseException:
            ledger.close()
            raise

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tree_size(self) -> int:
        """Rows appended to `logs` so far (buffered ones included): after a failed batch
        the difference tells a writer how many of its events are in."""
        return self._logs.tree_size

    @property
    def retained_rows(self) -> int:
        """Rows of `logs` still on disk (retention drops the oldest segments)."""
        return self._logs.record_count

    def head(self) -> tuple[int, bytes]:
        """(tree size, Merkle root) of `logs`, one consistent pair: what an anchor signs."""
        size = self._logs.tree_size  # read once: the tree only grows, so root(size) exists
        return size, self._logs.root(size)

    def bytes_on_disk(self) -> int:
        """Segment bytes of every table (what retention by size counts)."""
        return sum(table.bytes_on_disk() for table in self._ledger.tables.values())

    @property
    def root(self) -> Path:
        return self._ledger.root

    # --- definitions ----------------------------------------------------------------

    def define_type(self, schema: TypeSchema, *, actor: str = EMBEDDED) -> None:
        """Define a type, or redefine it additively (BadInput names the field and rule)."""
        self._audit(actor, "define_type", {"type_name": schema.type_name})
        with self._write:
            record = self._registry.define_type(schema)
            if record is not None:
                self._registry_table.append(record)

    def define_default_types(self) -> None:
        """`default_actor` and `default_target`, where no type of that name exists yet: what
        a server offers out of the box. A redefined (extended) default is left as it is."""
        with self._write:
            defined = {schema.type_name for schema in self._registry.entity_types()}
            for schema in (default_actor_type(), default_target_type()):
                if schema.type_name not in defined:
                    self._registry_table.append(self._registry.define_type(schema))

    def define_column(self, column: ColumnDef, *, actor: str = EMBEDDED) -> None:
        self._audit(actor, "define_column", {"name": column.name})
        with self._write:
            record = self._registry.define_column(column)
            if record is not None:
                self._registry_table.append(record)

    # --- writing --------------------------------------------------------------------

    def append(self, event: AuditEvent) -> str:
        """Record one event; returns its log_id. Durable per the sync policy (flush())."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[str]:
        """Record events in one batch: one sync decision, the shard writer's fast path.
        Every event is checked first; a bad one records none of the batch."""
        events = list(events)
        with self._write:
            now, leaf = now_micros(), self._logs.tree_size
            with self._registry.batch():  # a rejected event leaves no version behind
                for event in events:
                    self._check_custom(event)
                prepared = [self._row(e, now, leaf + i) for i, e in enumerate(events)]
            rows = [row for row, _ in prepared]
            registry_records = [r for _, records in prepared for r in records]
            if registry_records:
                self._registry_table.append_many(registry_records, now)
            try:
                self._logs.append_stamped((row.occurred_at, row.encode()) for row in rows)
            finally:
                # On a full disk the rows that got an index stay buffered and will be
                # written: they must be searchable like any other row.
                self._indexes.add_rows(leaf, rows[: self._logs.tree_size - leaf])
            return [row.log_id for row in rows]

    def _row(self, event: AuditEvent, now: int, leaf: int) -> tuple[LogRow, list[bytes]]:
        occurred = now if event.occurred_at is None else event.occurred_at
        records: list[bytes] = []

        def pin(entity_type: str, entity, where: str, deleted: bool | None) -> EntityRef:
            version, record = self._registry.upsert(
                entity_type, entity.entity_id, entity.fields, occurred, deleted, where
            )
            if record is not None:
                records.append(record)
            return EntityRef(entity_type, entity.entity_id, version)

        primary = _deletion(event.method)
        actor = pin(event.actor_type, event.actor, "actor", None)
        targets = tuple(
            pin(t.entity_type, t.input, f"targets[{i}]", primary if i == 0 else None)
            for i, t in enumerate(event.targets)
        )
        custom = {name: value.to_json() for name, value in event.custom.items()}
        log_id = make_log_id(occurred, self._ledger.store_id, leaf)
        row = LogRow(
            log_id,
            occurred,
            event.tenant,
            actor,
            event.method,
            event.url,
            event.content.to_json(),
            targets,
            custom,
            event.idempotency_key,
        )
        return row, records

    def _check_custom(self, event: AuditEvent) -> None:
        columns = self._registry.columns
        for name, value in event.custom.items():
            col = columns.get(name)
            if col is None:
                raise BadInput(f"custom.{name}: unknown column; register it first (define_column)")
            if value.kind != col.kind:
                raise BadInput(f"custom.{name}: column is {col.kind}, got {value.kind}")
        missing = [c.name for c in columns.values() if c.required and c.name not in event.custom]
        if missing:
            raise BadInput(f"custom: required column(s) {', '.join(missing)} are missing")

    def check_event(self, event: AuditEvent) -> None:
        """Refuse an event that cannot fit the schema as defined now, before it is queued:
        custom values against the columns, entity fields against their defined types. An
        undefined type is not refused here: it may be defined before the writer gets to it."""
        self._check_custom(event)
        self._registry.check_fields(event.actor_type, event.actor.fields, "actor.fields")
        for i, target in enumerate(event.targets):
            self._registry.check_fields(target.entity_type, target.input.fields, f"targets[{i}].input.fields")

    def recent_idempotency_keys(self, window: int) -> list[tuple[str | None, str]]:
        """(tenant, key) of the keyed rows among the last `window` retained rows, oldest
        first: what a restarted shard rebuilds its duplicate window from."""
        logs, keys = self._logs, []
        for index in range(max(0, logs.tree_size - window), logs.tree_size):
            try:
                row = LogRow.decode(logs.read(index).payload)
            except NotFound:
                continue  # purged by retention
            if row.idempotency_key is not None:
                keys.append((row.tenant, row.idempotency_key))
        return keys

    def flush(self, *, actor: str = EMBEDDED) -> None:
        self._audit(actor, "flush")
        self._ledger.flush()

    # --- reading --------------------------------------------------------------------

    def query(self, q: LogQuery, *, actor: str = EMBEDDED) -> Page:
        self._audit(actor, "query", query_shape(q))
        return self._search.page(q)

    def count(self, q: LogQuery, *, actor: str = EMBEDDED) -> int:
        self._audit(actor, "count", query_shape(q))
        return self._search.count(q)

    def query_access(self, q: AccessQuery, *, actor: str = EMBEDDED) -> AccessPage:
        """Read the meta-audit (the caller must hold administer); the read is recorded once."""
        if self._access is None:
            raise Conflict("the access log is off; open the store with access_log=True")
        return self._access.query(q, actor)

    def entity_types(self, *, actor: str = EMBEDDED) -> list[TypeSchema]:
        self._audit(actor, "entity_types")
        return self._registry.entity_types()

    def custom_columns(self, *, actor: str = EMBEDDED) -> list[ColumnDef]:
        self._audit(actor, "custom_columns")
        return list(self._registry.columns.values())

    def list_entities(
        self, type_name: str, include_deleted: bool = False, *, actor: str = EMBEDDED
    ) -> list[dict]:
        """The latest version of every entity of a type."""
        self._audit(actor, "list_entities", {"type_name": type_name, "include_deleted": include_deleted})
        out = []
        for eid in self._registry.entity_ids(type_name):
            latest = self._registry.versions(type_name, eid)[-1]
            if include_deleted or not latest.deleted:
                out.append(self._registry.render(type_name, eid, latest.version))
        return out

    def entity_history(self, type_name: str, entity_id: str, *, actor: str = EMBEDDED) -> list[dict]:
        """Every version of one entity, oldest first (the id is a value: not recorded)."""
        self._audit(actor, "entity_history", {"type_name": type_name})
        versions = self._registry.versions(type_name, entity_id)
        return [self._registry.render(type_name, entity_id, v.version) for v in versions]

    def _render(self, row: LogRow) -> dict:
        reg = self._registry
        return {
            "log_id": row.log_id,
            "occurred_at": row.occurred_at,
            "timestamp": rfc3339(row.occurred_at),
            "tenant": row.tenant,
            "actor": reg.render(row.actor.entity_type, row.actor.entity_id, row.actor.version),
            "method": row.method,
            "url": row.url,
            "content": row.content,
            "targets": [reg.render(t.entity_type, t.entity_id, t.version) for t in row.targets],
            "custom": row.custom,
        }

    # --- integrity ------------------------------------------------------------------

    def prove_inclusion(self, log_id: str, *, tenant: str | None = None, actor: str = EMBEDDED) -> dict:
        """The audit path of one row; with `tenant`, only of that tenant's rows (another
        tenant's answers exactly as an unknown id does)."""
        self._audit(actor, "prove_inclusion")
        leaf = parse_log_id(log_id, self._ledger.store_id)
        if leaf < 0 or leaf >= self._logs.tree_size:
            raise NotFound(f"log {log_id} is not in this store")
        try:
            row = LogRow.decode(self._logs.read(leaf).payload)
        except NotFound:
            # A purged row's tenant is unknown: a tenant-scoped caller learns nothing of it.
            gone = "is not in this store" if tenant is not None else "is not retained (purged by retention)"
            raise NotFound(f"log {log_id} {gone}") from None
        if row.log_id != canonical_log_id(log_id) or (tenant is not None and row.tenant != tenant):
            raise NotFound(f"log {log_id} is not in this store")
        return {"log_id": row.log_id, **self._logs.prove_inclusion(leaf).to_dict()}

    def prove_consistency(self, first_size: int, *, actor: str = EMBEDDED) -> dict:
        self._audit(actor, "prove_consistency", {"first_size": first_size})
        return self._logs.prove_consistency(first_size).to_dict()

    def checkpoint(self, *, actor: str = EMBEDDED) -> Checkpoint | None:
        """Checkpoint every table; returns the `logs` one (None without a private key)."""
        self._audit(actor, "checkpoint")
        for name in self._ledger.tables:
            if name != LOGS:
                self._ledger.checkpoint(name)
        return self._ledger.checkpoint(LOGS)

    def verify_integrity(self, *, actor: str = EMBEDDED) -> IntegrityReport:
        self._audit(actor, "verify_integrity")
        report = self._ledger.verify_integrity()
        for name in stale_index_files(self._logs):
            report.problem(
                f"logs: the index of segment {name} does not match its rows (delete the .qidx to rebuild)"
            )
        return report

    def run_retention(self, *, actor: str = EMBEDDED) -> int:
        """Drop expired sealed segments (logs, and access by its own window); returns how
        many `logs` segments went."""
        self._audit(actor, "run_retention")
        before = {s.header.seq for s in self._logs.segments}
        dropped = self._ledger.run_retention().get(LOGS, 0)
        self._indexes.forget(before - {s.header.seq for s in self._logs.segments})
        return dropped

    def close(self) -> None:
        self._ledger.close()


def _deletion(method: str) -> bool | None:
    """What an event says about its first target, the resource the call acts on: DELETE
    deletes it, a write (re)creates it, anything else leaves it as it is. Other targets are
    context (the folder of a deleted document) and never change state."""
    method = method.upper()
    if method == "DELETE":
        return True
    return False if method in ("POST", "PUT", "PATCH") else None


def rfc3339(micros: int) -> str:
    """Exact to the microsecond (integer arithmetic: a float of the seconds rounds the last
    microsecond of year 9999 into year 10000)."""
    return (_EPOCH + timedelta(microseconds=micros)).isoformat().replace("+00:00", "Z")
