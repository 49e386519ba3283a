"""`make_app(config)`: the aiohttp application of one shard.

The store, the pipeline's writer thread, the syslog mirror and the periodic verify open and
close in one cleanup context: teardown runs only if setup finished, and it drains the queue
and flushes the store before the store's lock is released.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from importlib import resources

import orjson
from aiohttp import web

from quipu.core.audit_store import AuditStore
from quipu.shard import api, cluster_api
from quipu.shard.config import ShardConfig
from quipu.shard.health import DiskProbe, HealthState
from quipu.shard.http_edge import error_middleware
from quipu.shard.pipeline import AuditPipeline, PipelineConfig
from quipu.shard.state import SHARD, ShardState, pipeline_policy
from quipu.shard.syslog import SyslogMirror

log = logging.getLogger("quipu.shard")
CONFIG = web.AppKey("config", ShardConfig)
OPENAPI = web.AppKey("openapi", bytes)
ROUTE_TABLES = (api.routes, cluster_api.routes)  # the v1 API, then what the cluster adds


def make_app(config: ShardConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[error_middleware()])
    app[CONFIG] = config
    app[OPENAPI] = resources.files("quipu.shard").joinpath("openapi.json").read_bytes()
    for table in ROUTE_TABLES:
        app.router.add_routes(table)
    app.router.add_get("/v1/openapi.json", _openapi)
    app.cleanup_ctx.append(shard_context)
    return app


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def pipeline_config(config: ShardConfig) -> PipelineConfig:
    return PipelineConfig(
        queue_capacity=config.pipeline.queue_capacity,
        batch_max=config.pipeline.batch_max,
        max_retries=config.pipeline.max_retries,
        idempotency_window=config.idempotency_window,
        reject_emit_when_disk_full=config.health.reject_emit_when_disk_full,
    )


async def shard_context(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    for warning in config.auth.warnings:
        log.warning("%s", warning)
    store = AuditStore.open(config.store_config())
    try:
        store.define_default_types()
        state = _start(config, store)
    except BaseException:
        store.close()
        raise
    app[SHARD] = state
    verifier = asyncio.create_task(_periodic_verify(state)) if config.verify_interval else None
    log.info("shard store %s open; %d rows", config.store.root, store.tree_size)
    try:
        yield
    finally:
        if verifier is not None:
            verifier.cancel()
        await asyncio.get_running_loop().run_in_executor(None, _stop, state)


def _start(config: ShardConfig, store: AuditStore) -> ShardState:
    health = HealthState()
    probe = DiskProbe(store.root, health, config.health.min_free_bytes, config.health.min_free_ratio)
    probe.run()
    mirror = None
    if config.sink is not None:
        mirror = SyslogMirror(config.sink.address, config.sink.app_name, config.sink.queue_capacity).start()
    pipeline = AuditPipeline.start(
        store,
        pipeline_policy(config.auth),
        pipeline_config(config),
        on_written=mirror.offer if mirror is not None else None,
        health=health,
        probe=probe,
    )
    return ShardState(config, store, pipeline, probe, mirror, config.auth)


def _stop(state: ShardState) -> None:
    try:
        state.pipeline.close()
    finally:
        if state.mirror is not None:
            state.mirror.close()
        state.store.close()


async def _periodic_verify(state: ShardState) -> None:
    handle = state.system_handle("periodic-verify")
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(state.config.verify_interval)
        try:
            report = await loop.run_in_executor(None, handle.verify)
        except Exception as err:  # a verify already running (409) or a store error: try next time
            log.warning("periodic verify skipped: %s", err)
            continue
        if report.ok:
            log.info("periodic verify ok: %d records", report.records)
        else:
            log.error("periodic verify FAILED: %s", orjson.dumps(report.problems).decode())
