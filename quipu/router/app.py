"""`make_app(config)`: the aiohttp application of the router.

The shard client's session, the anchor export session and the periodic anchor task open
and close in one cleanup context: teardown runs only if setup finished. The cluster token
comes from the environment (QUIPU_CLUSTER_TOKEN), never from argv or a file.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from quipu.core.errors import BadInput
from quipu.router import admin, cluster_api, reads
from quipu.router.anchor import AnchorLog
from quipu.router.anchoring import EXPORT_TIMEOUT_SECS, periodic_anchors
from quipu.router.config import RouterConfig
from quipu.router.openapi import OPENAPI_DOCUMENT, cluster_document_bytes
from quipu.router.shard_client import CLUSTER_TOKEN_ENV, ShardClient
from quipu.router.shard_map import ShardMapFile
from quipu.router.state import ROUTER, ExportHook, RouterState, shard_errors_middleware
from quipu.shard.http_edge import Handler, error_middleware
from quipu.shard.token_file import TokenFile

log = logging.getLogger("quipu.router")
CONFIG = web.AppKey("config", RouterConfig)
TOKEN = web.AppKey("cluster_token", str)
HOOK = web.AppKey[ExportHook | None]("export_hook")


def make_app(
    config: RouterConfig, *, cluster_token: str | None = None, export_hook: ExportHook | None = None
) -> web.Application:
    """`cluster_token` defaults to $QUIPU_CLUSTER_TOKEN; `export_hook` is called with every
    anchor signed (its failure is logged and counted, never raised)."""
    token = cluster_token if cluster_token is not None else os.environ.get(CLUSTER_TOKEN_ENV, "")
    if not token:
        raise BadInput(f"{CLUSTER_TOKEN_ENV} is not set: the router calls shards with the cluster token")
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[_count_requests(), error_middleware(process="router"), shard_errors_middleware()],
    )
    app[CONFIG] = config
    app[TOKEN] = token
    app[HOOK] = export_hook
    app[OPENAPI_DOCUMENT] = cluster_document_bytes()
    for module in (reads, admin, cluster_api):
        app.router.add_routes(module.routes)
    app.cleanup_ctx.append(router_context)
    return app


async def router_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    client = ShardClient(app[TOKEN], timeout=config.shard_timeout_secs)
    state = RouterState(
        config,
        ShardMapFile(config.shard_map),
        TokenFile(config.tokens_file, config.grants, config.max_concurrent_queries, service_token=app[TOKEN]),
        client,
        AnchorLog(config.anchor.log),
        export_hook=app[HOOK],
    )
    await client.start()
    if config.anchor.export_url is not None:
        state.export_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=EXPORT_TIMEOUT_SECS))
    app[ROUTER] = state
    interval = config.anchor.interval_secs
    anchoring = asyncio.create_task(periodic_anchors(state, interval)) if interval else None
    log.info("router up: %d shards in the map", len(state.map().shards))
    try:
        yield
    finally:
        for task in [anchoring, *state.background]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if state.export_session is not None:
            await state.export_session.close()
        await client.close()


def _count_requests() -> Callable:
    """requests_total by route template and status (never the path: it holds ids)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        route = request.match_info.route
        resource = route.resource if route is not None else None
        name = resource.canonical if resource is not None else "(no route)"
        if ROUTER in request.app:
            request.app[ROUTER].metrics.requests.inc(f"{name}|{response.status}")
        return response

    return middleware
