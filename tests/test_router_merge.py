"""The merge and the multi-shard cursor, against shards simulated with the shard's own
rules (snapshot pinning, exclusive (ts, leaf) positions): paging gives every row of the
snapshot exactly once, in order, however rows are spread and whatever arrives between pages."""

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from quipu.core.query import Cursor, after
from quipu.core.row import make_log_id
from quipu.router.cursor import MultiCursor, Position
from quipu.router.merge import (
    ShardPage,
    access_key,
    advance_by_leaf,
    advance_by_skip,
    leaf_of,
    log_key,
    merge_rows,
    merge_streams,
)

QHASH = "0123456789abcdef"
ts_values = st.integers(0, 40)  # few values: plenty of equal timestamps within and across shards


class SimShard:
    """Rows as a shard holds them: (ts, leaf), leaf = append order; log_ids with a store tag."""

    def __init__(self, n: int, stamps: list[int]) -> None:
        self.tag = bytes([n, 0, 7])
        self.rows: list[dict] = []
        for ts in stamps:
            self.append(ts)

    def append(self, ts: int) -> None:
        self.rows.append({"occurred_at": ts, "log_id": make_log_id(ts, self.tag, len(self.rows))})

    def answer(self, pos: Position, order: str, limit: int) -> ShardPage:
        """What POST /v1/logs/query answers for the cursor `pos` stands for."""
        snap = pos.snap if pos.snap is not None else len(self.rows)
        text = pos.shard_cursor(order, QHASH)
        cursor = Cursor.decode(text, order, QHASH) if text else None
        hits = [r for r in self.rows if leaf_of(r["log_id"]) < snap]
        if cursor is not None:
            hits = [r for r in hits if after(cursor, r["occurred_at"], leaf_of(r["log_id"]))]
        hits.sort(key=lambda r: (r["occurred_at"], leaf_of(r["log_id"])), reverse=order == "desc")
        return ShardPage(hits[:limit], len(hits) > limit, snap)


def page_through(
    shards: dict[str, SimShard], order: str, limit: int, arrivals: list[list[int]]
) -> list[dict]:
    """Every page until the cursor is exhausted; before page n+1, arrivals[n] are appended
    (round robin over the shards)."""
    positions: dict[str, Position | None] = {sid: Position() for sid in shards}
    out: list[dict] = []
    for n in range(10_000):
        pages = {sid: shards[sid].answer(p, order, limit) for sid, p in positions.items() if p is not None}
        rows, taken = merge_rows(order, limit, pages, log_key)
        assert len(rows) <= limit
        out.extend(rows)
        for sid, page in pages.items():
            positions[sid] = advance_by_leaf(page, taken[sid], positions[sid])
        cursor = MultiCursor(order, QHASH, positions)
        if cursor.exhausted:
            return out
        positions = dict(MultiCursor.decode(cursor.encode(), order, QHASH, frozenset(shards)).positions)
        for i, ts in enumerate(arrivals[n] if n < len(arrivals) else []):
            list(shards.values())[i % len(shards)].append(ts)
    raise AssertionError("paging did not end")


@settings(max_examples=150, deadline=None)
@given(
    spread=st.lists(st.lists(ts_values, max_size=30), min_size=1, max_size=4),
    order=st.sampled_from(["desc", "asc"]),
    limit=st.integers(1, 9),
    arrivals=st.lists(st.lists(ts_values, max_size=6), max_size=8),
)
def test_paging_gives_every_snapshot_row_once_in_order(spread, order, limit, arrivals):
    shards = {f"shard-{n:04d}": SimShard(n, stamps) for n, stamps in enumerate(spread)}
    expected = sorted((r for s in shards.values() for r in s.rows), key=log_key, reverse=order == "desc")
    got = page_through(shards, order, limit, arrivals)
    assert [r["log_id"] for r in got] == [r["log_id"] for r in expected]


class SimAccessShard:
    """An access log: records in leaf order with non-decreasing `at`; a cursor (ts, leaf)
    as the shard's AccessLog uses it. No leaf in the records, as on the wire."""

    def __init__(self, name: str, stamps: list[int]) -> None:
        self.name = name
        self.records = [{"at": at, "leaf": n} for n, at in enumerate(sorted(stamps))]

    def answer(self, pos: Position, order: str, limit: int) -> ShardPage:
        snap = pos.snap if pos.snap is not None else len(self.records)
        text = pos.shard_cursor(order, QHASH)
        cursor = Cursor.decode(text, order, QHASH) if text else None
        leaves = range(snap - 1, -1, -1) if order == "desc" else range(snap)
        hits = [self.records[i] for i in leaves if cursor is None or after(cursor, self.records[i]["at"], i)]
        page = hits[: min(10_000, pos.skip + limit)]
        more = len(hits) > len(page)
        nxt = (page[-1]["at"], page[-1]["leaf"]) if more else None
        rows = [{"at": r["at"], "id": (r["leaf"], self.name)} for r in page[pos.skip :]]
        return ShardPage(rows, more, snap if (more or pos.snap is not None) else None, nxt)


@settings(max_examples=100, deadline=None)
@given(
    spread=st.lists(st.lists(ts_values, max_size=25), min_size=1, max_size=3),
    order=st.sampled_from(["desc", "asc"]),
    limit=st.integers(1, 7),
)
def test_access_paging_by_skip_gives_every_record_once(spread, order, limit):
    shards = {f"shard-{n:04d}": SimAccessShard(f"shard-{n:04d}", stamps) for n, stamps in enumerate(spread)}
    positions: dict[str, Position | None] = {sid: Position() for sid in shards}
    got = []
    for _ in range(10_000):
        pages = {sid: shards[sid].answer(p, order, limit) for sid, p in positions.items() if p is not None}
        rows, taken = merge_rows(order, limit, pages, access_key)
        got.extend((r["at"], *r["id"]) for r in rows)
        for sid, page in pages.items():
            positions[sid] = advance_by_skip(page, taken[sid], positions[sid])
        if all(p is None for p in positions.values()):
            break
    else:
        raise AssertionError("paging did not end")
    expected = [(r["at"], r["leaf"], sid) for sid, s in shards.items() for r in s.records]
    assert sorted(got) == sorted(expected)
    keys = [at for at, *_ in got]
    assert keys == sorted(keys, reverse=order == "desc")


def test_merge_stops_where_a_shard_with_more_rows_runs_out():
    """A shard that sent fewer rows than it holds must not be overtaken: its next row is
    unknown and may come first."""
    short = ShardPage([{"occurred_at": 9, "log_id": "b" * 32}], True, 1)
    other = ShardPage([{"occurred_at": t, "log_id": f"{t:032x}"} for t in (8, 7, 6)], False, 3)
    rows, taken = merge_rows("desc", 4, {"shard-0000": short, "shard-0001": other}, log_key)
    assert [r["occurred_at"] for r in rows] == [9]
    assert taken == {"shard-0000": 1, "shard-0001": 0}


def test_export_streams_merge_in_order_with_ties_kept():
    async def stream(keys):
        for k in keys:
            yield (k,), f"{k}\n".encode()

    async def run(desc):
        streams = [stream([5, 3, 3, 1] if desc else [1, 3, 3, 5]), stream([4, 3, 0] if desc else [0, 3, 4])]
        return [line async for line in merge_streams(streams, desc)]

    assert asyncio.run(run(True)) == [b"5\n", b"4\n", b"3\n", b"3\n", b"3\n", b"1\n", b"0\n"]
    assert asyncio.run(run(False)) == [b"0\n", b"1\n", b"3\n", b"3\n", b"3\n", b"4\n", b"5\n"]
