"""`quipu ingest serve CONFIG`: run one ingest worker until SIGTERM or Ctrl-C.

With `reuse_port` (the default) the socket is bound with SO_REUSEPORT, so several workers
started with one config share one port and the kernel spreads connections over them; a
worker that stops leaves the others serving. Stopping finishes the requests in flight
(each write is answered by a shard, so nothing is buffered here to lose).
"""

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from quipu.ingest.app import make_app
from quipu.ingest.config import IngestConfig, load_config
from quipu.shard.http_edge import ShardAccessLogger

log = logging.getLogger("quipu.ingest")


def serve(config_path: Path) -> None:
    asyncio.run(_serve(load_config(config_path)))


async def _serve(config: IngestConfig) -> None:
    runner = web.AppRunner(make_app(config), access_log_class=ShardAccessLogger, handle_signals=False)
    await runner.setup()
    try:
        host, port = config.listen
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=config.reuse_port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        bound = runner.addresses[0]
        print(f"quipu ingest listening on http://{bound[0]}:{bound[1]}", flush=True)
        await stop.wait()
        log.info("stopping: finishing the requests in flight")
    finally:
        await runner.cleanup()
