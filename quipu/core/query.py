"""Running a LogQuery over the `logs` table: candidates from the index, filters on its
columns, rows decoded only for the page that is returned.

Order is (occurred_at, leaf index), which within one store is the log_id order. A cursor
carries the position after the last hit, the snapshot tree size the first page was taken
at, and a hash of the query: later pages see exactly the rows of that snapshot (no
duplicates, no holes while rows are appended), and a cursor cannot be replayed against a
different query. Format in docs/format.md ("Cursors").
"""

import base64
import hashlib
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from quipu.core.errors import BadInput
from quipu.core.log_index import LogIndexSet, SegmentIndex, actor_key, target_key
from quipu.core.query_spec import LogQuery
from quipu.core.registry import Registry
from quipu.core.row import LogRow
from quipu.core.segment import Segment
from quipu.core.table import Table

CURSOR_VERSION = 1
Hit = tuple[int, int]  # (occurred_at, leaf index)


@dataclass(frozen=True)
class Page:
    logs: list[dict]
    next_cursor: str | None
    segments_scanned: int  # segments whose index was consulted (time range and early stop)
    rows_decoded: int  # rows read from disk: the matches rendered, plus url re-checks
    snapshot: int = 0  # the tree size this page and its cursor are pinned to

    def to_dict(self) -> dict:
        return {
            "logs": self.logs,
            "next_cursor": self.next_cursor,
            "segments_scanned": self.segments_scanned,
            "rows_decoded": self.rows_decoded,
            "snapshot": self.snapshot,
        }


@dataclass(frozen=True)
class Cursor:
    """The position after a page's last hit, in the snapshot the first page was taken at,
    bound to the query it came from (by `query_hash`)."""

    order: str
    ts: int
    leaf: int
    snap: int
    query_hash: str

    def encode(self) -> str:
        body = {"v": CURSOR_VERSION, "o": self.order, "ts": self.ts, "leaf": self.leaf, "snap": self.snap}
        body["q"] = self.query_hash
        return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, order: str, expected_hash: str) -> "Cursor":
        try:
            body = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            cursor = cls(body["o"], int(body["ts"]), int(body["leaf"]), int(body["snap"]), str(body["q"]))
            valid = body["v"] == CURSOR_VERSION
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            valid = False
        if not valid or cursor.order != order or cursor.query_hash != expected_hash:
            raise BadInput("cursor is not valid for this query; start again without a cursor")
        return cursor


def query_hash(query_json: dict) -> str:
    """What a cursor is bound to: the query's JSON form minus its page controls."""
    body = {k: v for k, v in query_json.items() if k not in ("cursor", "limit")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class LogSearch:
    def __init__(
        self, table: Table, indexes: LogIndexSet, registry: Registry, render: Callable[[LogRow], dict]
    ) -> None:
        self._table = table
        self._indexes = indexes
        self._registry = registry
        self._render = render

    def page(self, q: LogQuery) -> Page:
        cursor = Cursor.decode(q.cursor, q.order, query_hash(q.to_json())) if q.cursor else None
        snap = cursor.snap if cursor else self._indexes.indexed
        plan = _Plan(q, self._key_groups(q), snap, cursor)
        hits, scanned = self._collect(plan, stop_early=q.url is None)
        hits.sort(reverse=q.order == "desc")
        logs, last, decoded = [], None, 0
        for hit in hits:
            row = self._decode(hit[1])
            decoded += 1
            if q.url is not None and row.url != q.url:
                continue
            if len(logs) == q.limit:
                more = Cursor(q.order, last[0], last[1], snap, query_hash(q.to_json())).encode()
                return Page(logs, more, scanned, decoded, snap)
            logs.append(self._render(row))
            last = hit
        return Page(logs, None, scanned, decoded, snap)

    def count(self, q: LogQuery) -> int:
        plan = _Plan(q, self._key_groups(q), self._indexes.indexed, None)
        hits, _ = self._collect(plan, stop_early=False)
        if q.url is None:
            return len(hits)
        return sum(1 for _, leaf in hits if self._decode(leaf).url == q.url)

    def _decode(self, leaf: int) -> LogRow:
        return LogRow.decode(self._table.read(leaf).payload)

    def _key_groups(self, q: LogQuery) -> list[set[str]]:
        """Postings keys, one OR-group per condition; the groups AND together."""
        groups = []
        for flt in q.targets:
            past = q.include_past if flt.include_past is None else flt.include_past
            ids = self._registry.matching_entities(flt, past)
            groups.append({target_key(flt.entity_type, e) for e in ids})
        if q.actor_id is not None:
            if q.actor_type is None:
                raise BadInput("actor_id needs actor_type")
            groups.append({actor_key(q.actor_type, q.actor_id)})
        for flt in q.actor_filters:
            past = q.include_past if flt.include_past is None else flt.include_past
            ids = self._registry.matching_entities(flt, past)
            groups.append({actor_key(flt.entity_type, e) for e in ids})
        return groups

    def _collect(self, plan: "_Plan", stop_early: bool) -> tuple[list[Hit], int]:
        """Hits from every segment that can hold one. With stop_early, segments are visited
        newest-first (oldest-first for asc) and the walk stops once `limit + 1` hits beat
        anything the remaining segments could hold; only those hits are kept."""
        desc = plan.q.order == "desc"
        segments = [s for s in self._table.segments if plan.overlaps(s)]
        segments.sort(key=lambda s: _bound(s, desc), reverse=desc)
        want, scanned, hits = plan.q.limit + 1, 0, []
        best = _Best(want, desc)
        for seg in segments:
            if stop_early and best.full() and not best.reachable(_bound(seg, desc)):
                break
            scanned += 1
            found = plan.hits(self._indexes.for_segment(seg))
            if stop_early:
                best.offer(found)
            else:
                hits.extend(found)
        return (best.hits() if stop_early else hits), scanned


class _Best:
    """The `size` best hits seen so far: a heap whose root is the worst of them."""

    def __init__(self, size: int, desc: bool) -> None:
        self._size = size
        self._sign = 1 if desc else -1  # asc keeps negated keys, so the root is the largest
        self._heap: list[Hit] = []

    def offer(self, hits: list[Hit]) -> None:
        heap, sign = self._heap, self._sign
        for ts, leaf in hits:
            key = (sign * ts, sign * leaf)
            if len(heap) < self._size:
                heapq.heappush(heap, key)
            elif key > heap[0]:
                heapq.heapreplace(heap, key)

    def full(self) -> bool:
        return len(self._heap) >= self._size

    def reachable(self, bound: int) -> bool:
        """Could a segment whose nearest timestamp is `bound` still hold a better hit?"""
        worst_ts = self._sign * self._heap[0][0]
        return bound >= worst_ts if self._sign == 1 else bound <= worst_ts

    def hits(self) -> list[Hit]:
        return [(self._sign * t, self._sign * leaf) for t, leaf in self._heap]


class _Plan:
    """One query's conditions, ready to test a segment's index."""

    def __init__(self, q: LogQuery, groups: list[set[str]], snap: int, cursor: Cursor | None) -> None:
        self.q = q
        self.groups = groups
        self.snap = snap
        self.cursor = cursor

    def overlaps(self, seg: Segment) -> bool:
        """Segments entirely outside the time range are never opened."""
        lo, hi = _ts_range(seg)
        if lo is None or seg.header.base_index >= self.snap:
            return False
        q = self.q
        return (q.from_micros is None or hi >= q.from_micros) and (q.to_micros is None or lo < q.to_micros)

    def hits(self, idx: SegmentIndex) -> list[Hit]:
        q, base = self.q, idx.base
        n = min(len(idx.ts), self.snap - base)
        ordinals = self._ordinals(idx, n)
        wanted = [self._string_filter(idx, col, value) for col, value in self._string_columns(idx)]
        if any(w == -1 for _, w in wanted):
            return []
        ts, lo, hi = idx.ts, q.from_micros, q.to_micros
        cur = self.cursor
        out = []
        for o in ordinals:
            t = ts[o]
            if (lo is not None and t < lo) or (hi is not None and t >= hi):
                continue
            if any(column[o] != w for column, w in wanted):
                continue
            if cur is not None and not after(cur, t, base + o):
                continue
            out.append((t, base + o))
        return out

    def _ordinals(self, idx: SegmentIndex, n: int) -> Iterable[int]:
        if not self.groups:
            return range(n)
        found: set[int] | None = None
        for group in self.groups:
            union: set[int] = set()
            for key in group:
                posting = idx.postings.get(key)
                if posting is not None:
                    union.update(posting)
            found = union if found is None else found & union
            if not found:
                return ()
        return [o for o in found if o < n]

    def _string_columns(self, idx: SegmentIndex) -> list[tuple]:
        q = self.q
        pairs = [(idx.method, q.method), (idx.tenant, q.tenant), (idx.actor_type, q.actor_type)]
        return [(col, value) for col, value in pairs if value is not None]

    @staticmethod
    def _string_filter(idx: SegmentIndex, column, value: str) -> tuple:
        got = idx.string_id(value)
        return column, -1 if got is None else got


def after(cursor: Cursor, ts: int, leaf: int) -> bool:
    """Whether (ts, leaf) comes after the cursor in its order."""
    if cursor.order == "desc":
        return (ts, leaf) < (cursor.ts, cursor.leaf)
    return (ts, leaf) > (cursor.ts, cursor.leaf)


def _ts_range(seg: Segment) -> tuple[int | None, int | None]:
    info = seg.seal_info
    if info is not None:
        return (info.min_ts, info.max_ts) if info.record_count else (None, None)
    return seg.min_ts, seg.max_ts


def _bound(seg: Segment, desc: bool) -> int:
    lo, hi = _ts_range(seg)
    return (hi if desc else lo) or 0
