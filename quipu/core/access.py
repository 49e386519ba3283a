"""The meta-audit: who queried or administered the store, and how: never with what values.

Opt-in. Each query and admin operation appends one record to the `access` table (its own
chain, Merkle tree, checkpoints and retention, all covered by verify_integrity). A record
keeps the query's shape (conditions, match modes, time range), never a probe value, so a
protected field's plaintext cannot leak into it. Recording is a plain append that never
goes through a query path, so it cannot recurse: reading the access log is itself one
recorded access, exactly once.
"""

from dataclasses import dataclass

import orjson

from quipu.core.errors import CorruptStore
from quipu.core.query import Cursor, after, query_hash
from quipu.core.query_spec import AccessQuery
from quipu.core.table import Table, now_micros

RECORD_VERSION = 1


@dataclass(frozen=True)
class AccessPage:
    records: list[dict]
    next_cursor: str | None
    snapshot: int = 0  # the tree size this page and its cursor are pinned to

    def to_dict(self) -> dict:
        return {"records": self.records, "next_cursor": self.next_cursor}


class AccessLog:
    def __init__(self, table: Table) -> None:
        self._table = table

    def record(self, actor: str, operation: str, shape: dict | None = None) -> None:
        at = now_micros()
        body = {
            "v": RECORD_VERSION,
            "at": at,
            "actor": actor,
            "op": operation,
            "shape": shape or {},
        }
        payload = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        self._table.append_stamped([(at, payload)])

    def query(self, q: AccessQuery, actor: str) -> AccessPage:
        """Records matching `q`; this read is recorded too (after the snapshot is taken,
        so a page never shows the record of its own read)."""
        expected = query_hash(q.to_json())
        cursor = Cursor.decode(q.cursor, q.order, expected) if q.cursor else None
        snap = cursor.snap if cursor else self._table.tree_size
        self.record(actor, "query_access", {"from_micros": q.from_micros, "to_micros": q.to_micros})
        records, last = [], None
        for leaf in self._leaves(q.order, snap):
            rec = self._read(leaf)
            if cursor is not None and not after(cursor, rec["at"], leaf):
                continue
            if not _matches(rec, q):
                continue
            if len(records) == q.limit:
                more = Cursor(q.order, last[0], last[1], snap, expected).encode()
                return AccessPage(records, more, snap)
            records.append(rec)
            last = (rec["at"], leaf)
        return AccessPage(records, None, snap)

    def _leaves(self, order: str, snap: int) -> range:
        first = self._table.first_index
        return range(snap - 1, first - 1, -1) if order == "desc" else range(first, snap)

    def _read(self, leaf: int) -> dict:
        try:
            rec = orjson.loads(self._table.read(leaf).payload)
        except orjson.JSONDecodeError as err:
            raise CorruptStore(f"access record {leaf} is not readable: {err}") from err
        rec.pop("v", None)
        return rec


def _matches(rec: dict, q: AccessQuery) -> bool:
    at = rec["at"]
    return (
        (q.from_micros is None or at >= q.from_micros)
        and (q.to_micros is None or at < q.to_micros)
        and (q.operation is None or rec["op"] == q.operation)
        and (q.actor is None or rec["actor"] == q.actor)
    )
