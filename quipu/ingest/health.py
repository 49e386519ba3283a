"""`GET /v1/healthz` of an ingest worker: answered by the worker itself (it is not
forwarded), with whether the router and each shard of the map answer their own health
checks.

Always 200 while the worker runs: a load balancer asks whether to send callers to this
worker, and a worker that cannot reach one shard still serves every other shard's tenants
(the ones on the missing shard get 503 per request). The body says what is missing. Shards
are named by id, never by URL: the health check needs no token.
"""

import asyncio

from quipu.ingest.state import IngestState
from quipu.router.shard_client import ShardDown
from quipu.router.shard_map import ShardInfo

PROBE_TIMEOUT = 5.0


async def health_report(state: IngestState) -> dict:
    shard_map = state.maps.current()
    shards = list(shard_map.shards.values())
    router, *probed = await asyncio.gather(state.router.healthz(), *(_probe(state, s) for s in shards))
    by_shard = {s.id: status for s, status in zip(shards, probed, strict=True)}
    ok = router == "ok" and all(status == "ok" for status in by_shard.values())
    return {
        "status": "ok" if ok else "degraded",
        "router": router,
        "shards": by_shard,
        "generation": shard_map.generation,
    }


async def _probe(state: IngestState, shard: ShardInfo) -> str:
    try:
        reply = await asyncio.wait_for(state.shards.call(shard, "GET", "/v1/healthz"), PROBE_TIMEOUT)
        body = reply.json()
    except (ShardDown, TimeoutError, ValueError):
        return "unreachable"
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else f"answered {reply.status}"
