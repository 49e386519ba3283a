"""The multi-shard cursor: where a merged page left off, on every shard it reads.

A merged query pins each shard to the snapshot (tree size) its first answer was taken at
and keeps, per shard, the position after the last row taken from it. The next page asks
each shard from there with the shard's own cursor (`quipu.core.query.Cursor`), rebuilt
here, so every shard sees exactly the rows of its snapshot: no duplicates and no holes
while writes continue. Format in docs/format.md ("Multi-shard cursor").

The cursor is bound to the query (by `query_hash`, tenant included) and names the shards
it covers; it carries a checksum so a mangled cursor is refused rather than half-read. The
checksum is not a secret MAC, and needs not be: a forged position only moves the page
within the caller's own query, whose tenant the router enforces on every call.
"""

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from quipu.core.errors import BadInput
from quipu.core.query import Cursor

VERSION = 1
VERSION_KEY = "mc"  # a shard's own cursor has "v" instead: the two are never mistaken
# A shard cursor at the start of a pinned snapshot: desc takes hits < (ts, leaf), asc > it.
START = {"desc": (1 << 63, 0), "asc": (-1, 0)}
INVALID = "cursor is not valid for this query; start again without a cursor"


@dataclass(frozen=True)
class Position:
    """One shard's place: its pinned snapshot (None until it answered once), the (ts, leaf)
    after the last row taken from it (None: nothing taken yet), and `skip`, rows already
    taken past that point (for reads whose rows carry no leaf index: the access log)."""

    snap: int | None = None
    ts: int | None = None
    leaf: int | None = None
    skip: int = 0

    def shard_cursor(self, order: str, query_hash: str) -> str | None:
        """The shard's own cursor for this position; None means "ask without a cursor"."""
        if self.snap is None:
            return None
        ts, leaf = (self.ts, self.leaf) if self.ts is not None else START[order]
        return Cursor(order, ts, leaf, self.snap, query_hash).encode()

    def to_json(self) -> list:
        return [self.snap, self.ts, self.leaf, self.skip]

    @classmethod
    def from_json(cls, obj: object) -> "Position":
        if not isinstance(obj, list) or len(obj) != 4:
            raise ValueError("a position is [snap, ts, leaf, skip]")
        snap, ts, leaf, skip = obj
        if not _opt_int(snap) or not _opt_int(ts) or not _opt_int(leaf) or not _opt_int(skip, False):
            raise ValueError("a position holds integers")
        if (ts is None) != (leaf is None) or (snap is None and ts is not None) or skip < 0:
            raise ValueError("a position is inconsistent")
        return cls(snap, ts, leaf, skip)


@dataclass(frozen=True)
class MultiCursor:
    """Per shard id: its Position, or None once it has nothing more to give."""

    order: str
    query_hash: str
    positions: Mapping[str, Position | None]

    @property
    def exhausted(self) -> bool:
        return all(p is None for p in self.positions.values())

    def encode(self) -> str:
        body = self._body()
        body["c"] = _check(body)
        return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")

    def _body(self) -> dict:
        shards = {sid: None if p is None else p.to_json() for sid, p in sorted(self.positions.items())}
        return {VERSION_KEY: VERSION, "o": self.order, "q": self.query_hash, "p": shards}

    @classmethod
    def decode(cls, text: str, order: str, query_hash: str, shard_ids: frozenset[str]) -> "MultiCursor":
        """The cursor a previous page returned, for this query over these shards; BadInput
        for anything else (another query or order, a shard this read does not cover, a
        shard's own cursor, a mangled string)."""
        try:
            body = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            check = body.pop("c")
            valid = body[VERSION_KEY] == VERSION and check == _check(body)
            positions = {
                str(sid): None if p is None else Position.from_json(p) for sid, p in body["p"].items()
            }
            cursor = cls(body["o"], body["q"], positions)
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
            valid = False
        if not valid or cursor.order != order or cursor.query_hash != query_hash:
            raise BadInput(INVALID)
        if not set(cursor.positions) <= shard_ids:
            raise BadInput("cursor names a shard this read does not cover; start again without a cursor")
        return cursor


def _check(body: dict) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _opt_int(value: object, nullable: bool = True) -> bool:
    if value is None:
        return nullable
    return isinstance(value, int) and not isinstance(value, bool)
