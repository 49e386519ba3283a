"""One merged page over several shards: ask each for up to `limit` rows from its position,
merge, take `limit`, and record every shard's new position in the multi-shard cursor.

Log rows carry their leaf index (in the log_id), so a shard's position is exact: the
(ts, leaf) after the last row taken from it, in the snapshot it is pinned to. Access
records carry none, so there the position stays at the shard cursor the rows came after
and counts the rows taken past it (`skip`), re-based on the shard's own next cursor.
"""

import asyncio
import dataclasses
from collections.abc import Callable

from quipu.core.errors import BadInput
from quipu.core.query import Cursor, query_hash
from quipu.core.query_spec import MAX_LIMIT, AccessQuery, LogQuery
from quipu.router.cursor import MultiCursor, Position
from quipu.router.merge import ShardPage, access_key, advance_by_leaf, advance_by_skip, log_key, merge_rows
from quipu.router.shard_map import ShardInfo
from quipu.router.state import RouterState, ShardFailed, expect
from quipu.shard.api import NEXT_CURSOR_HEADER, SNAPSHOT_HEADER
from quipu.shard.state import require_tenant_match

REBASE_SKIP = MAX_LIMIT // 2  # past this many skipped rows, fetch the shard's cursor for them


def read_query(body: object, tenant: str | None) -> LogQuery:
    """The LogQuery as the shards will see it: the caller's tenant is its tenant condition
    (a bound token naming another tenant is a 403, as on a shard)."""
    q = LogQuery.from_json(body)
    return dataclasses.replace(q, tenant=require_tenant_match(tenant, q.tenant))


def start_positions(
    cursor: str | None, order: str, qhash: str, shards: list[ShardInfo]
) -> dict[str, Position | None]:
    """Every shard at the start for a first page; else the cursor's positions. A shard the
    cursor does not name joined the map after the first page (a grow): at the snapshot the
    cursor stands for it held nothing, so it is left out."""
    if cursor is None:
        return {s.id: Position() for s in shards}
    return dict(MultiCursor.decode(cursor, order, qhash, frozenset(s.id for s in shards)).positions)


async def log_page(state: RouterState, q: LogQuery) -> tuple[list[dict], str | None]:
    shards = state.map().read_shards(q.tenant)
    qhash = query_hash(q.to_json())
    positions = start_positions(q.cursor, q.order, qhash, shards)
    asked = [s for s in shards if positions.get(s.id) is not None]
    pages = await asyncio.gather(*(_log_shard_page(state, s, q, positions[s.id], qhash) for s in asked))
    by_shard = dict(zip([s.id for s in asked], pages, strict=True))
    return _finish(q.order, q.limit, qhash, positions, by_shard, log_key, advance_by_leaf)


async def _log_shard_page(
    state: RouterState, shard: ShardInfo, q: LogQuery, pos: Position, qhash: str
) -> ShardPage:
    body = dataclasses.replace(q, cursor=pos.shard_cursor(q.order, qhash)).to_json()
    reply = await state.call(shard, "POST", "/v1/logs/query", tenant=q.tenant, json=body)
    rows = expect(reply, shard.id)
    return ShardPage(rows, NEXT_CURSOR_HEADER in reply.headers, _snapshot(reply.headers, shard))


async def access_page(state: RouterState, q: AccessQuery) -> tuple[list[dict], str | None]:
    shards = list(state.map().shards.values())
    qhash = query_hash(q.to_json())
    positions = start_positions(q.cursor, q.order, qhash, shards)
    asked = [s for s in shards if positions.get(s.id) is not None]
    pages = await asyncio.gather(*(_access_shard_page(state, s, q, positions[s.id], qhash) for s in asked))
    for sid, page in zip([s.id for s in asked], pages, strict=True):
        positions[sid] = page[0]  # a re-based position
    by_shard = {s.id: page for s, (_, page) in zip(asked, pages, strict=True)}
    return _finish(q.order, q.limit, qhash, positions, by_shard, access_key, advance_by_skip)


async def _access_shard_page(
    state: RouterState, shard: ShardInfo, q: AccessQuery, pos: Position, qhash: str
) -> tuple[Position, ShardPage]:
    if pos.skip > REBASE_SKIP:  # the shard's own cursor after the skipped rows replaces them
        page = await _access_call(state, shard, q, pos, qhash, pos.skip)
        if page.next_position is None:
            return pos, ShardPage([], False, page.snap)  # nothing after them: done
        pos = Position(page.snap, *page.next_position, 0)
    page = await _access_call(state, shard, q, pos, qhash, min(MAX_LIMIT, pos.skip + q.limit))
    return pos, dataclasses.replace(page, rows=page.rows[pos.skip :])


async def _access_call(
    state: RouterState, shard: ShardInfo, q: AccessQuery, pos: Position, qhash: str, limit: int
) -> ShardPage:
    body = dataclasses.replace(q, cursor=pos.shard_cursor(q.order, qhash), limit=limit).to_json()
    reply = await state.call(shard, "POST", "/v1/access/query", json=body)
    page = expect(reply, shard.id)
    records = [r | {"shard": shard.id} for r in page["records"]]
    nxt = page.get("next_cursor")
    snap, after = pos.snap, None
    if nxt is not None:
        try:
            cursor = Cursor.decode(nxt, q.order, qhash)
        except BadInput as err:
            raise ShardFailed(f"{shard.id} answered a cursor for another query") from err
        snap, after = cursor.snap, (cursor.ts, cursor.leaf)
    if SNAPSHOT_HEADER in reply.headers:
        snap = _snapshot(reply.headers, shard)
    return ShardPage(records, nxt is not None, snap, after)


def _snapshot(headers, shard: ShardInfo) -> int:
    text = headers.get(SNAPSHOT_HEADER, "")
    if not text.isascii() or not text.isdigit():
        raise ShardFailed(f"{shard.id} did not name its snapshot ({SNAPSHOT_HEADER}); upgrade it")
    return int(text)


def _finish(
    order: str,
    limit: int,
    qhash: str,
    positions: dict[str, Position | None],
    pages: dict[str, ShardPage],
    key: Callable[[dict], tuple],
    advance: Callable[[ShardPage, int, Position], Position | None],
) -> tuple[list[dict], str | None]:
    rows, taken = merge_rows(order, limit, pages, key)
    after = dict(positions)
    for sid, page in pages.items():
        after[sid] = advance(page, taken[sid], positions[sid])
    cursor = MultiCursor(order, qhash, after)
    return rows, None if cursor.exhausted else cursor.encode()
