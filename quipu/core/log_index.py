"""The index of the `logs` table: per segment, who and what each row touches.

Each segment has postings (actor or target entity -> the row ordinals that name it) and
four columns (occurred_at, method, tenant, actor type per row). A query unions and
intersects postings, filters on the columns and decodes only the rows it returns, so its
work grows with its matches, not with the store. The active segment's index lives in
memory (rebuilt from its rows on open); a sealed segment's is written beside it as
`<seq>.qidx` (docs/format.md) and loaded on first use. An index is derived data: a missing
or unreadable one is rebuilt from its segment, and verify_integrity compares it.
"""

from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from quipu.core.files import replace_durably
from quipu.core.row import LogRow
from quipu.core.segment import Segment
from quipu.core.table import Table

MAGIC = b"QIDX"
VERSION = 1
SUFFIX = ".qidx"
SEP = "\x1f"  # unit separator: cannot occur in validated type names or entity ids


def actor_key(entity_type: str, entity_id: str) -> str:
    return f"a{SEP}{entity_type}{SEP}{entity_id}"


def target_key(entity_type: str, entity_id: str) -> str:
    return f"t{SEP}{entity_type}{SEP}{entity_id}"


@dataclass
class _Interned:
    """A small string table: columns store numbers, not repeated strings."""

    names: list = field(default_factory=list)
    ids: dict = field(default_factory=dict)

    def id_of(self, name: str | None) -> int:
        got = self.ids.get(name)
        if got is None:
            got = self.ids[name] = len(self.names)
            self.names.append(name)
        return got


@dataclass
class SegmentIndex:
    seq: int
    base: int  # global index of the segment's first row
    ts: array = field(default_factory=lambda: array("q"))
    method: array = field(default_factory=lambda: array("I"))
    tenant: array = field(default_factory=lambda: array("I"))
    actor_type: array = field(default_factory=lambda: array("I"))
    strings: _Interned = field(default_factory=_Interned)
    postings: dict[str, array] = field(default_factory=dict)

    def add(self, row: LogRow) -> None:
        ordinal, intern = len(self.ts), self.strings.id_of
        self.ts.append(row.occurred_at)
        self.method.append(intern(row.method))
        self.tenant.append(intern(row.tenant))
        self.actor_type.append(intern(row.actor.entity_type))
        keys = {actor_key(row.actor.entity_type, row.actor.entity_id)}
        keys.update(target_key(t.entity_type, t.entity_id) for t in row.targets)
        for key in keys:
            posting = self.postings.get(key)
            if posting is None:
                posting = self.postings[key] = array("I")
            posting.append(ordinal)

    def string_id(self, name: str | None) -> int | None:
        return self.strings.ids.get(name)

    def to_bytes(self) -> bytes:
        body = {
            "seq": self.seq,
            "base": self.base,
            "ts": self.ts.tolist(),
            "method": self.method.tolist(),
            "tenant": self.tenant.tolist(),
            "actor_type": self.actor_type.tolist(),
            "strings": self.strings.names,
            "postings": {k: v.tolist() for k, v in self.postings.items()},
        }
        return MAGIC + VERSION.to_bytes(2, "little") + orjson.dumps(body)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SegmentIndex":
        if raw[:4] != MAGIC or int.from_bytes(raw[4:6], "little") != VERSION:
            raise ValueError("not a version 1 log index")
        body = orjson.loads(raw[6:])
        strings = _Interned(body["strings"], {n: i for i, n in enumerate(body["strings"])})
        return cls(
            body["seq"],
            body["base"],
            array("q", body["ts"]),
            array("I", body["method"]),
            array("I", body["tenant"]),
            array("I", body["actor_type"]),
            strings,
            {k: array("I", v) for k, v in body["postings"].items()},
        )

    @classmethod
    def build(cls, segment: Segment) -> "SegmentIndex":
        index = cls(segment.header.seq, segment.header.base_index)
        for rec in segment.records():
            index.add(LogRow.decode(rec.payload))
        return index


def index_path(segment: Segment) -> Path:
    return segment.path.with_suffix(SUFFIX)


def load_or_build(segment: Segment) -> SegmentIndex:
    """A sealed segment's index from its file, rebuilt (and rewritten) when missing or stale."""
    path = index_path(segment)
    try:
        index = SegmentIndex.from_bytes(path.read_bytes())
        if index.seq == segment.header.seq and len(index.ts) == segment.count:
            return index
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index = SegmentIndex.build(segment)
    save(segment, index)
    return index


def stale_index_files(table: Table) -> list[str]:
    """Sealed segments whose `.qidx` differs from the index their rows give: a wrong index
    would hide rows from queries (never from verify), so verify_integrity names them."""
    stale = []
    for segment in table.segments[:-1]:
        path = index_path(segment)
        if path.exists() and path.read_bytes() != SegmentIndex.build(segment).to_bytes():
            stale.append(segment.path.name)
    return stale


def save(segment: Segment, index: SegmentIndex) -> None:
    replace_durably(index_path(segment), index.to_bytes())


class LogIndexSet:
    """The indexes of every retained `logs` segment: the active one in memory, sealed ones
    loaded on first use and cached (they never change)."""

    def __init__(self, table: Table) -> None:
        self._table = table
        active = table.segments[-1]
        self._active = SegmentIndex.build(active)
        self._sealed: dict[int, SegmentIndex] = {}
        # Rows indexed so far: a query's snapshot, never ahead of what its index can see.
        self.indexed = active.header.base_index + len(self._active.ts)

    def add_rows(self, first_leaf: int, rows: list[LogRow]) -> None:
        """Index rows just appended at first_leaf..; saves an index when its segment sealed."""
        segments = self._table.segments
        for offset, row in enumerate(rows):
            leaf = first_leaf + offset
            if leaf >= self._active.base + len(self._active.ts) and not self._holds(segments, leaf):
                self._roll(segments, leaf)
            self._active.add(row)
        self.indexed = first_leaf + len(rows)

    def _holds(self, segments: list[Segment], leaf: int) -> bool:
        """Whether `leaf` falls in the segment the active index covers."""
        pos = bisect_right(segments, leaf, key=lambda s: s.header.base_index) - 1
        return segments[pos].header.seq == self._active.seq

    def _roll(self, segments: list[Segment], leaf: int) -> None:
        done = self._active
        sealed = next((s for s in segments if s.header.seq == done.seq), None)
        if sealed is not None:
            save(sealed, done)
            self._sealed[done.seq] = done
        pos = bisect_right(segments, leaf, key=lambda s: s.header.base_index) - 1
        self._active = SegmentIndex(segments[pos].header.seq, segments[pos].header.base_index)

    def for_segment(self, segment: Segment) -> SegmentIndex:
        active = self._active
        if segment.header.seq == active.seq:
            return active
        index = self._sealed.get(segment.header.seq)
        if index is None:
            index = self._sealed[segment.header.seq] = load_or_build(segment)
        return index

    def forget(self, seqs: set[int]) -> None:
        """Drop cached indexes of segments retention removed."""
        for seq in seqs:
            self._sealed.pop(seq, None)
