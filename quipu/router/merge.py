"""Merging shard answers into one ordered answer: pure functions, no I/O.

Each shard answers rows already in the query's order. The merge is greedy: it repeatedly
takes the best head among the shards (ties broken by the shards' order), so stopping after
`limit` rows and resuming later from each shard's remaining rows continues exactly the same
sequence. That is what lets a page hold at most `limit` rows from each shard: no shard can
contribute more than `limit` to a page of `limit`. A shard that has more rows than it sent
stops the merge once its rows run out, since its next row could come before anyone else's.
"""

import heapq
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from quipu.router.cursor import Position

RowKey = Callable[[dict], tuple]


@dataclass(frozen=True)
class ShardPage:
    """What one shard answered for its part of a page."""

    rows: list[dict]  # in the query's order, after the shard's position
    more: bool  # the shard holds matching rows beyond these (it sent a next cursor)
    snap: int | None  # the snapshot the shard's answer is pinned to
    next_position: tuple[int, int] | None = None  # (ts, leaf) of the shard's next cursor


def log_key(row: dict) -> tuple:
    """Log rows merge by (occurred_at, log_id): within one store that is its own order."""
    return (row["occurred_at"], row["log_id"])


def access_key(record: dict) -> tuple:
    return (record["at"],)


def leaf_of(log_id: str) -> int:
    """A log_id's leaf index: its last 5 bytes (quipu.core.row.make_log_id)."""
    return int(log_id[-10:], 16)


def merge_rows(
    order: str, limit: int, pages: Mapping[str, ShardPage], key: RowKey
) -> tuple[list[dict], dict[str, int]]:
    """The first `limit` rows of the merge and how many came from each shard."""
    desc = order == "desc"
    ids = sorted(pages)
    heads: list[tuple] = []
    for n, sid in enumerate(ids):
        _push(heads, pages[sid].rows, 0, n, key, desc)
    out: list[dict] = []
    taken = dict.fromkeys(ids, 0)
    while heads and len(out) < limit:
        _, n, i, row = heapq.heappop(heads)
        sid = ids[n]
        out.append(row)
        taken[sid] = i + 1
        if i + 1 < len(pages[sid].rows):
            _push(heads, pages[sid].rows, i + 1, n, key, desc)
        elif pages[sid].more:
            break  # this shard's next row is unknown and may beat every other head
    return out, taken


def _push(heap: list, rows: list[dict], i: int, n: int, key: RowKey, desc: bool) -> None:
    if i < len(rows):
        k = key(rows[i])
        heapq.heappush(heap, (_Desc(k) if desc else k, n, i, rows[i]))


class _Desc:
    """A key that sorts in reverse, for a min-heap that pops the newest first."""

    __slots__ = ("key",)

    def __init__(self, key: tuple) -> None:
        self.key = key

    def __lt__(self, other: "_Desc") -> bool:
        return self.key > other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key


def advance_by_leaf(page: ShardPage, taken: int, before: Position) -> Position | None:
    """A shard's position after `taken` of its log rows went into the page (None: done)."""
    if taken == len(page.rows) and not page.more:
        return None
    if taken == 0:
        return Position(page.snap, before.ts, before.leaf)
    last = page.rows[taken - 1]
    return Position(page.snap, last["occurred_at"], leaf_of(last["log_id"]))


def advance_by_skip(page: ShardPage, taken: int, before: Position) -> Position | None:
    """The same for rows without a leaf index (access records): the position stays at the
    shard cursor the rows came after and counts the rows taken past it, until a page uses
    up everything the shard sent and its own next cursor becomes the position."""
    if taken == len(page.rows):
        if not page.more:
            return None
        if page.next_position is not None:
            ts, leaf = page.next_position
            return Position(page.snap, ts, leaf, 0)
    return Position(page.snap, before.ts, before.leaf, before.skip + taken)


async def merge_streams(
    streams: Sequence[AsyncIterator[tuple[tuple, bytes]]], desc: bool
) -> AsyncIterator[bytes]:
    """k-way merge of (key, line) streams, each already in order: for NDJSON export, which
    holds one line per shard in memory however long the export."""
    heap: list[tuple] = []
    for n, stream in enumerate(streams):
        await _pull(heap, stream, n, desc)
    while heap:
        _, n, line = heapq.heappop(heap)
        yield line
        await _pull(heap, streams[n], n, desc)


async def _pull(heap: list, stream: AsyncIterator[tuple[tuple, bytes]], n: int, desc: bool) -> None:
    item = await anext(stream, None)
    if item is not None:
        key, line = item
        heapq.heappush(heap, (_Desc(key) if desc else key, n, line))
