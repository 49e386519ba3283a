"""Proofs, administration, the access log, health and metrics, over every shard.

Admin calls go to every shard in the map (frozen ones too: they still hold records) and
answer the cluster's total plus each shard's own figure. Proofs are per store: inclusion is
answered by the shard whose store holds the log_id, consistency needs the shard named.
"""

from aiohttp import web

from quipu.core.errors import BadInput, NotFound
from quipu.core.query_spec import AccessQuery
from quipu.core.row import canonical_log_id
from quipu.router.openapi import OPENAPI_DOCUMENT
from quipu.router.paging import access_page
from quipu.router.shard_client import ShardDown
from quipu.router.state import expect, router_state, unbound_only
from quipu.shard.http_edge import error_response, json_response, read_json
from quipu.shard.permissions import Action

routes = web.RouteTableDef()
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WRITES_ELSEWHERE = "writes go to the ingest front (POST /v1/logs there), not to the router"


@routes.get("/v1/proof/inclusion/{log_id}")
async def prove_inclusion(request: web.Request) -> web.Response:
    """Asked of every shard the caller's tenant may have written to, with that tenant named:
    a shard answers another tenant's record exactly as an unknown one, and so does the
    router, whichever shard it is on."""
    state = router_state(request)
    _, tenant = state.caller(request, Action.QUERY)
    log_id = canonical_log_id(request.match_info["log_id"])
    shards = state.map().read_shards(tenant)
    replies = await state.call_all(shards, "GET", f"/v1/proof/inclusion/{log_id}", tenant=tenant)
    for sid, reply in replies.items():
        if reply.status != 404:
            return json_response(expect(reply, sid))
    raise NotFound(f"log {log_id} is not in this cluster")


@routes.get("/v1/proof/consistency")
async def prove_consistency(request: web.Request) -> web.Response:
    """`?shard=ID&from=N`: a consistency proof is about one shard's tree."""
    state = router_state(request)
    principal, _ = state.caller(request, Action.QUERY)
    unbound_only(principal)
    shard_id = request.query.get("shard")
    if shard_id is None:
        raise BadInput("shard: name the shard (?shard=shard-0000): each shard has its own tree")
    shard = state.map().shards.get(shard_id)
    if shard is None:
        raise NotFound("shard: no such shard in the shard map")
    params = {"from": request.query.get("from", "")}
    reply = await state.call(shard, "GET", "/v1/proof/consistency", params=params)
    return json_response(expect(reply, shard.id))


async def _every_shard(request: web.Request, method: str, path: str, ok: int = 200) -> dict[str, object]:
    state = router_state(request)
    principal, _ = state.caller(request, Action.ADMINISTER)
    unbound_only(principal)
    replies = await state.call_all(list(state.map().shards.values()), method, path)
    return {sid: expect(reply, sid, ok) for sid, reply in replies.items()}


def _summed(per_shard: dict[str, object], key: str) -> dict:
    return {key: sum(r[key] for r in per_shard.values()), "shards": {s: r[key] for s, r in per_shard.items()}}


@routes.post("/v1/admin/flush")
async def admin_flush(request: web.Request) -> web.Response:
    await _every_shard(request, "POST", "/v1/admin/flush", ok=204)
    return web.Response(status=204)


@routes.post("/v1/admin/redrive")
async def admin_redrive(request: web.Request) -> web.Response:
    return json_response(_summed(await _every_shard(request, "POST", "/v1/admin/redrive"), "redriven"))


@routes.post("/v1/admin/retention")
async def admin_retention(request: web.Request) -> web.Response:
    per_shard = await _every_shard(request, "POST", "/v1/admin/retention")
    return json_response(_summed(per_shard, "segments_dropped"))


@routes.get("/v1/admin/dlq")
async def admin_dlq(request: web.Request) -> web.Response:
    return json_response(_summed(await _every_shard(request, "GET", "/v1/admin/dlq"), "parked"))


@routes.post("/v1/admin/verify")
async def admin_verify(request: web.Request) -> web.Response:
    """Each shard's own integrity report; `ok` only when every one is ok."""
    per_shard = await _every_shard(request, "POST", "/v1/admin/verify")
    return json_response({"ok": all(r["ok"] for r in per_shard.values()), "shards": per_shard})


@routes.post("/v1/access/query")
async def query_access(request: web.Request) -> web.Response:
    """Every shard's access log merged by time; each record names its shard."""
    state = router_state(request)
    principal, _ = state.caller(request, Action.ADMINISTER)
    unbound_only(principal)
    q = AccessQuery.from_json(await read_json(request))
    with state.limit(principal):
        records, cursor = await access_page(state, q)
    return json_response({"records": records, "next_cursor": cursor})


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    """ok only when every shard answers ok; any shard down or unhealthy makes it a 503."""
    state = router_state(request)
    shards = list(state.map().shards.values())
    results = await state.call_each(shards, lambda s: state.call(s, "GET", "/v1/healthz"))
    per_shard: dict[str, str] = {}
    for sid, reply in results.items():
        if isinstance(reply, ShardDown):
            per_shard[sid] = "down"
        elif isinstance(reply, Exception) or reply.status not in (200, 503):
            per_shard[sid] = "unhealthy"
        else:
            per_shard[sid] = reply.json().get("status", "unhealthy")
    states = set(per_shard.values())
    status = "ok" if states <= {"ok"} else "degraded" if states <= {"ok", "degraded"} else "unhealthy"
    return json_response({"status": status, "shards": per_shard}, 503 if status == "unhealthy" else 200)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """The router's own counters (scrape each shard for its figures). Needs administer."""
    state = router_state(request)
    principal, _ = state.caller(request, Action.ADMINISTER)
    unbound_only(principal)
    shard_map = state.map()
    gauges = {
        "quipu_router_shards": ("Shards in the shard map.", len(shard_map.shards)),
        "quipu_router_active_shards": ("Shards that take writes now.", len(shard_map.active)),
        "quipu_router_generation": ("Index of the shard map's newest generation.", shard_map.generation),
    }
    text = state.metrics.render(gauges)
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The cluster's document (quipu/router/openapi.py), built when the app was made."""
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


@routes.post("/v1/logs")
@routes.post("/v1/logs/batch")
async def refuse_write(request: web.Request) -> web.Response:
    return error_response(404, WRITES_ELSEWHERE)
