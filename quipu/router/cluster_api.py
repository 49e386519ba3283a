"""The cluster extensions under /v1/cluster/ (administer): status, anchor, anchors, verify.
`quipu-cluster status|anchor|verify` call these."""

import asyncio

from aiohttp import web

from quipu.core.errors import BadInput
from quipu.router.anchoring import sign_anchor
from quipu.router.shard_client import ShardDown
from quipu.router.shard_map import ShardInfo, ShardMap
from quipu.router.state import RouterState, expect, router_state, unbound_only
from quipu.router.verify import verify_cluster
from quipu.shard.http_edge import json_response
from quipu.shard.permissions import Action

routes = web.RouteTableDef()
DEFAULT_ANCHORS = 100
MAX_ANCHORS = 10_000


def _administrator(state: RouterState, request: web.Request) -> None:
    principal, _ = state.caller(request, Action.ADMINISTER)
    unbound_only(principal)


@routes.get("/v1/cluster/status")
async def cluster_status(request: web.Request) -> web.Response:
    """Per shard: where it stands in the map, whether it answers, and its figures."""
    state = router_state(request)
    _administrator(state, request)
    shard_map = state.map()
    results = await state.call_each(list(shard_map.shards.values()), lambda s: _shard_status(state, s))
    shards = []
    for shard in shard_map.shards.values():
        found = results[shard.id]
        row = {"id": shard.id, "url": shard.url, "state": _placement(shard_map, shard.id)}
        row["generation"] = next(n for n, g in enumerate(shard_map.generations) if shard.id in g)
        if isinstance(found, dict):
            row.update(found)
        else:
            row.update({"health": "down" if isinstance(found, ShardDown) else "error", "error": str(found)})
        shards.append(row)
    body = {
        "generation": shard_map.generation,
        "manifest_hash": shard_map.manifest_hash,
        "pending": [{"id": p.id, "url": p.url} for p in shard_map.pending],
        "shards": shards,
    }
    return json_response(body)


def _placement(shard_map: ShardMap, shard_id: str) -> str:
    if shard_id in shard_map.frozen:
        return "frozen"
    return "active" if shard_id in shard_map.active else "inactive"


async def _shard_status(state: RouterState, shard: ShardInfo) -> dict:
    health, head = await asyncio.gather(
        state.call(shard, "GET", "/v1/healthz"), state.call(shard, "GET", "/v1/admin/head")
    )
    figures = expect(head, shard.id)
    status = health.json().get("status", "unhealthy") if health.status in (200, 503) else "unhealthy"
    return {
        "health": status,
        "records": figures.get("records"),
        "tree_size": figures["tree_size"],
        "queue_depth": figures["queue_depth"],
        "dlq": figures["dlq"],
        "shard_frozen": figures.get("frozen"),
    }


@routes.post("/v1/cluster/anchor")
async def anchor_now(request: web.Request) -> web.Response:
    state = router_state(request)
    _administrator(state, request)
    return json_response((await sign_anchor(state)).to_json())


@routes.get("/v1/cluster/anchors")
async def list_anchors(request: web.Request) -> web.Response:
    """The newest `limit` anchors of the log, newest first."""
    state = router_state(request)
    _administrator(state, request)
    text = request.query.get("limit", str(DEFAULT_ANCHORS))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_ANCHORS:
        raise BadInput(f"limit: expected an integer in 1..{MAX_ANCHORS}")
    anchors = await asyncio.get_running_loop().run_in_executor(None, state.anchors.anchors)
    return json_response({"anchors": [a.to_json() for a in reversed(anchors[-int(text) :])]})


@routes.post("/v1/cluster/verify")
async def cluster_verify(request: web.Request) -> web.Response:
    state = router_state(request)
    _administrator(state, request)
    return json_response(await verify_cluster(state))
