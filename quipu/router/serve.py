"""`quipu router serve CONFIG`: run the router until SIGTERM or Ctrl-C.

The config is JSON written by the supervisor (quipu/router/config.py); the cluster token
comes from QUIPU_CLUSTER_TOKEN. Stopping cancels the periodic anchor task and closes the
shard sessions; the router holds no store, so there is nothing to flush.
"""

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from quipu.router.app import make_app
from quipu.router.config import RouterConfig, load_router_config
from quipu.shard.http_edge import ShardAccessLogger

log = logging.getLogger("quipu.router")


def serve(config_path: Path) -> None:
    config = load_router_config(config_path)
    asyncio.run(_serve(config))


async def _serve(config: RouterConfig) -> None:
    app = make_app(config)
    runner = web.AppRunner(app, access_log_class=ShardAccessLogger, handle_signals=False)
    await runner.setup()
    try:
        host, port = config.listen
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        bound = runner.addresses[0]
        print(f"quipu router listening on http://{bound[0]}:{bound[1]}", flush=True)
        await stop.wait()
        log.info("stopping the router")
    finally:
        await runner.cleanup()
