"""The v1 read API over every shard a read may touch: logs (query, count, export), types and
columns, entities and their history.

A tenant's reads go to `ShardMap.read_shards(tenant)`: the shards that owned it in some
generation, and no other. The tenant is the caller's (a bound token's own, or the one a
`*` token names in X-Quipu-Tenant) and is sent to every shard both as the query's tenant
condition and as X-Quipu-Tenant, so a shard scopes the read as the router does.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from urllib.parse import quote

import aiohttp
from aiohttp import web

from quipu.core.errors import BadInput, NotFound, QuipuError
from quipu.core.schema import ColumnDef, TypeSchema, validate_type_name
from quipu.router.merge import log_key, merge_streams
from quipu.router.paging import log_page, read_query
from quipu.router.shard_client import ShardReply
from quipu.router.state import RouterState, expect, router_state, shard_error, unbound_only
from quipu.shard.api import NEXT_CURSOR_HEADER
from quipu.shard.http_edge import cut_off, json_response, parse_json, read_json
from quipu.shard.permissions import Action

log = logging.getLogger("quipu.router")
routes = web.RouteTableDef()
EXPORT_WRITE_LINES = 500  # lines gathered per write to the caller


@routes.post("/v1/logs/query")
async def query_logs(request: web.Request) -> web.Response:
    state = router_state(request)
    principal, tenant = state.caller(request, Action.QUERY)
    q = read_query(await read_json(request), tenant)
    with state.limit(principal):
        rows, cursor = await log_page(state, q)
    return json_response(rows, headers={NEXT_CURSOR_HEADER: cursor} if cursor else None)


@routes.post("/v1/logs/count")
async def count_logs(request: web.Request) -> web.Response:
    state = router_state(request)
    principal, tenant = state.caller(request, Action.QUERY)
    q = read_query(await read_json(request), tenant)
    shards = state.map().read_shards(q.tenant)
    with state.limit(principal):
        replies = await state.call_all(shards, "POST", "/v1/logs/count", tenant=q.tenant, json=q.to_json())
    return json_response({"count": sum(expect(r, sid)["count"] for sid, r in replies.items())})


@routes.post("/v1/logs/export")
async def export_logs(request: web.Request) -> web.StreamResponse:
    """NDJSON merged from every shard's own export, a line at a time per shard: memory stays
    flat however many rows match. `limit` caps the total, as on a shard."""
    state = router_state(request)
    principal, tenant = state.caller(request, Action.QUERY)
    body = await read_json(request)
    q = read_query(body, tenant)
    total = q.limit if isinstance(body, dict) and "limit" in body else None
    shard_body = q.to_json()
    if total is None:
        del shard_body["limit"]  # a shard exports everything when the body has no limit
    shards = state.map().read_shards(q.tenant)
    with state.limit(principal):
        async with AsyncExitStack() as stack:
            answers = []
            for shard in shards:
                cm = state.client.stream(shard, "POST", "/v1/logs/export", tenant=q.tenant, json=shard_body)
                answers.append(await stack.enter_async_context(cm))
            for shard, answer in zip(shards, answers, strict=True):
                if answer.status != 200:
                    reply = ShardReply(answer.status, answer.headers, await answer.read())
                    raise shard_error(reply, shard.id)
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            streams = [_keyed_lines(a) for a in answers]
            try:
                await _send(response, merge_streams(streams, q.order == "desc"), total)
            except (QuipuError, aiohttp.ClientError, ValueError) as err:
                # Headers are out: a clean end would pass a short export off as whole.
                log.error("export cut off: a shard failed mid-stream (%s)", type(err).__name__)
                cut_off(request)
                return response
            await response.write_eof()
    return response


async def _send(response: web.StreamResponse, lines: AsyncIterator[bytes], total: int | None) -> None:
    batch: list[bytes] = []
    sent = 0
    async for line in lines:
        batch.append(line)
        sent += 1
        if len(batch) >= EXPORT_WRITE_LINES:
            await response.write(b"".join(batch))
            batch.clear()
        if total is not None and sent >= total:
            break
    if batch:
        await response.write(b"".join(batch))


async def _keyed_lines(answer: aiohttp.ClientResponse) -> AsyncIterator[tuple[tuple, bytes]]:
    """(merge key, line with its newline) for each NDJSON line of a shard's export. Split by
    hand: aiohttp's readline refuses lines over 64 KiB, and a LogView may be longer."""
    pending = b""
    async for chunk in answer.content.iter_any():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield log_key(parse_json(line, "a shard's export line")), line + b"\n"
    if pending.strip():
        raise ValueError("a shard's export ended in the middle of a line")


@routes.get("/v1/types")
async def list_types(request: web.Request) -> web.Response:
    """Every type any shard knows, once (a grow copies every type to the new shards)."""
    return json_response(await _union(request, "/v1/types", "type_name"))


@routes.get("/v1/columns")
async def list_columns(request: web.Request) -> web.Response:
    return json_response(await _union(request, "/v1/columns", "name"))


async def _union(request: web.Request, path: str, key: str) -> list[dict]:
    """The definitions every shard lists, each name once (the oldest shard's first)."""
    state = router_state(request)
    principal, _ = state.caller(request)
    state.tokens.policy.check_any(principal.role)
    replies = await state.call_all(list(state.map().shards.values()), "GET", path)
    seen: dict[str, dict] = {}
    for sid, reply in replies.items():
        for definition in expect(reply, sid):
            seen.setdefault(definition[key], definition)
    return list(seen.values())


@routes.post("/v1/types")
async def define_type(request: web.Request) -> web.Response:
    """To every shard, so any shard can take any tenant's events of this type."""
    state = router_state(request)
    principal, _ = state.caller(request, Action.ADMINISTER)
    unbound_only(principal)  # types are the whole cluster's, not one tenant's
    body = await read_json(request)
    TypeSchema.from_json(body)  # refused here, before any shard changes
    return await _to_every_shard(request, "/v1/types", body)


@routes.post("/v1/columns")
async def define_column(request: web.Request) -> web.Response:
    state = router_state(request)
    principal, _ = state.caller(request, Action.ADMINISTER)
    unbound_only(principal)
    body = await read_json(request)
    ColumnDef.from_json(body)
    return await _to_every_shard(request, "/v1/columns", body)


async def _to_every_shard(request: web.Request, path: str, body: object) -> web.Response:
    state = router_state(request)
    replies = await state.call_all(list(state.map().shards.values()), "POST", path, json=body)
    for sid, reply in replies.items():
        if reply.status != 204:
            raise shard_error(reply, sid)
    return web.Response(status=204)


@routes.get("/v1/entities/{type_name}")
async def list_entities(request: web.Request) -> web.Response:
    """Per shard registries, merged: an entity several shards know is shown once, as its
    most recently recorded version. Refused to tenant-bound tokens, as on a shard: a
    registry is not split by tenant."""
    state = router_state(request)
    principal, _ = state.caller(request, Action.QUERY)
    unbound_only(principal)
    type_name = validate_type_name(request.match_info["type_name"], "type_name")
    include_deleted = request.query.get("include_deleted", "false")
    if include_deleted not in ("true", "false"):
        raise BadInput("include_deleted: expected true or false")
    path = f"/v1/entities/{type_name}"
    found = await _known(state, path, {"include_deleted": include_deleted})
    latest: dict[str, dict] = {}
    for entity in (e for entities in found for e in entities):
        held = latest.get(entity["entity_id"])
        if held is None or entity["recorded_at"] > held["recorded_at"]:
            latest[entity["entity_id"]] = entity
    return json_response([latest[k] for k in sorted(latest)])


@routes.get("/v1/entities/{type_name}/{entity_id:[^/]+}/history")
async def entity_history(request: web.Request) -> web.Response:
    """Every version any shard recorded, oldest first."""
    state = router_state(request)
    principal, _ = state.caller(request, Action.QUERY)
    unbound_only(principal)
    type_name = validate_type_name(request.match_info["type_name"], "type_name")
    path = f"/v1/entities/{type_name}/{quote(request.match_info['entity_id'], safe='')}/history"
    versions = [v for found in await _known(state, path, None) for v in found]
    return json_response(sorted(versions, key=lambda v: v["recorded_at"]))


async def _known(state: RouterState, path: str, params: dict | None) -> list[list[dict]]:
    """The answers of the shards that know the thing; NotFound only when none does."""
    replies = await state.call_all(list(state.map().shards.values()), "GET", path, params=params)
    found, missing = [], None
    for sid, reply in replies.items():
        if reply.status == 404:
            missing = missing or shard_error(reply, sid)
        else:
            found.append(expect(reply, sid))
    if not found:
        raise missing or NotFound("not found on any shard")
    return found
