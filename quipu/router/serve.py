"""`quipu router serve CONFIG`: run the router until SIGTERM or Ctrl-C.

The config is JSON written by the supervisor (quipu/router/config.py); the cluster token
comes from QUIPU_CLUSTER_TOKEN. Stopping cancels the periodic anchor task and closes the
shard sessions; the router holds no store, so there is nothing to flush.
"""

import asyncio
from pathlib import Path

from quipu.router.app import make_app
from quipu.router.config import RouterConfig, load_router_config
from quipu.shard.serve import run_site


def serve(config_path: Path) -> None:
    config = load_router_config(config_path)
    asyncio.run(_serve(config))


async def _serve(config: RouterConfig) -> None:
    await run_site(make_app(config), config.listen, name="router", stopping="stopping the router")
