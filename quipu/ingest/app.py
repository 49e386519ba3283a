"""`make_app(config)`: the aiohttp application of one ingest worker.

Handlers parse only what routing needs (the caller, the tenant, the Idempotency-Key, a
batch's items) and leave judging events to the shard, whose answer the caller gets. The
shard map and the token table are files re-read when they change, so a grow or a new token
reaches a running worker without a restart.
"""

from collections.abc import AsyncIterator

from aiohttp import web

from quipu.core.event import validate_idempotency_key
from quipu.ingest.batch import KeyedBatch, new_key
from quipu.ingest.config import IngestConfig
from quipu.ingest.forward import RouterProxy
from quipu.ingest.health import health_report
from quipu.ingest.state import INGEST, IngestState, write_tenant
from quipu.ingest.writes import write_batch, write_one
from quipu.router.shard_client import ShardClient, ShardDown
from quipu.router.shard_map import ShardMapFile
from quipu.shard.api import IDEMPOTENCY_HEADER
from quipu.shard.batch import parse_batch
from quipu.shard.http_edge import error_middleware, json_response, status_middleware
from quipu.shard.permissions import Action
from quipu.shard.token_file import TokenFile

CONFIG = web.AppKey("ingest_config", IngestConfig)
routes = web.RouteTableDef()


def make_app(config: IngestConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        # A shard that cannot be reached is a 503 + Retry-After for this request only.
        middlewares=[error_middleware(process="ingest"), status_middleware(statuses={ShardDown: 503})],
    )
    app[CONFIG] = config
    app.router.add_routes(routes)
    # Registered last: the routes above answer their own paths, everything else under /v1
    # (and /metrics) is the router's.
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    app.router.add_route("*", "/metrics", forward)
    app.cleanup_ctx.append(ingest_context)
    return app


async def ingest_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    maps = ShardMapFile(config.shard_map)  # read now: a worker without a map cannot start
    tokens = TokenFile(config.tokens_file, config.grants, config.max_concurrent_queries)
    shards = ShardClient(config.cluster_token)
    router = RouterProxy(config.router_url)
    await shards.start()
    try:
        await router.start()
        app[INGEST] = IngestState(config, maps, tokens, shards, router)
        yield
    finally:
        await router.close()
        await shards.close()


@routes.post("/v1/logs")
async def append_log(request: web.Request) -> web.Response:
    state = request.app[INGEST]
    tenant = write_tenant(request, state.caller(request, Action.EMIT))
    key = request.headers.get(IDEMPOTENCY_HEADER)
    key = new_key() if key is None else validate_idempotency_key(key, IDEMPOTENCY_HEADER)
    return await write_one(state, tenant, key, await request.read())


@routes.post("/v1/logs/batch")
async def append_batch(request: web.Request) -> web.Response:
    state = request.app[INGEST]
    tenant = write_tenant(request, state.caller(request, Action.EMIT))
    batch = KeyedBatch.of(parse_batch(await request.read()))
    return await write_batch(state, tenant, batch)


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response(await health_report(request.app[INGEST]))


async def forward(request: web.Request) -> web.StreamResponse:
    return await request.app[INGEST].router.forward(request)
