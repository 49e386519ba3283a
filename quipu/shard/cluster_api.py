"""What a shard offers the cluster beyond the v1 API: its tree head (for anchors and
`quipu-cluster status`), freezing after a grow, and the Idempotency-Key lookup a front
makes on a tenant's earlier shards before it writes a retry to the tenant's new shard.

A cluster front calls these with the cluster token; the tenant of a lookup is named in
X-Quipu-Tenant, as for every call a front makes.
"""

from aiohttp import web

from quipu.core.errors import BadInput
from quipu.core.event import validate_idempotency_key
from quipu.shard.api import off_loop, shard_state
from quipu.shard.batch import MAX_BATCH_EVENTS
from quipu.shard.http_edge import json_response, read_json
from quipu.shard.permissions import Action
from quipu.shard.state import request_tenant

routes = web.RouteTableDef()


@routes.get("/v1/admin/head")
async def tree_head(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    return json_response(await off_loop(handle.head))


@routes.post("/v1/admin/freeze")
async def freeze(request: web.Request) -> web.Response:
    """For good: a grow froze this shard's generation. Reads go on; every emit is a 409."""
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    await off_loop(handle.freeze)
    return web.Response(status=204)


@routes.post("/v1/idempotency/lookup")
async def lookup_keys(request: web.Request) -> web.Response:
    handle, principal = shard_state(request).handle(request, Action.EMIT)
    tenant = request_tenant(request, principal)
    body = await read_json(request)
    keys = body.get("keys") if isinstance(body, dict) and set(body) == {"keys"} else None
    if not isinstance(keys, list) or len(keys) > MAX_BATCH_EVENTS:
        raise BadInput(f'expected {{"keys": [...]}} with at most {MAX_BATCH_EVENTS} Idempotency-Keys')
    for key in keys:
        validate_idempotency_key(key, "keys[]")
    return json_response({"known": handle.known_keys(tenant, keys)})
