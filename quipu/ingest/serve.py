"""`quipu ingest serve CONFIG`: run one ingest worker until SIGTERM or Ctrl-C.

With `reuse_port` (the default) the socket is bound with SO_REUSEPORT, so several workers
started with one config share one port and the kernel spreads connections over them; a
worker that stops leaves the others serving. Stopping finishes the requests in flight
(each write is answered by a shard, so nothing is buffered here to lose).
"""

import asyncio
from pathlib import Path

from quipu.ingest.app import make_app
from quipu.ingest.config import IngestConfig, load_config
from quipu.shard.serve import run_site


def serve(config_path: Path) -> None:
    asyncio.run(_serve(load_config(config_path)))


async def _serve(config: IngestConfig) -> None:
    await run_site(
        make_app(config),
        config.listen,
        name="ingest",
        stopping="stopping: finishing the requests in flight",
        reuse_port=config.reuse_port,
    )
