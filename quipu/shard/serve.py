"""`quipu shard serve CONFIG`: run one shard until SIGTERM or Ctrl-C.

SIGHUP re-reads the config file's `auth` section and swaps it in whole; requests in flight
finish under the config they started with. Shutdown drains the write queue and flushes the
store before the process exits, so an event answered `queued` is written when the shard is
stopped (a SIGKILL is another matter: only flushed events are durable).
"""

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from quipu.shard.app import make_app
from quipu.shard.config import ShardConfig, TlsSection, load_config
from quipu.shard.http_edge import ShardAccessLogger
from quipu.shard.state import SHARD

log = logging.getLogger("quipu.shard")


def serve(config_path: Path) -> None:
    config = load_config(config_path)
    asyncio.run(_serve(config, config_path))


async def _serve(config: ShardConfig, config_path: Path) -> None:
    app = make_app(config)
    runner = web.AppRunner(app, access_log_class=ShardAccessLogger, handle_signals=False)
    await runner.setup()
    try:
        host, port = config.listen
        site = web.TCPSite(runner, host, port, ssl_context=_tls(config.tls), reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, app[SHARD].reload_auth, config_path)
        scheme = "https" if config.tls else "http"
        bound = runner.addresses[0]
        print(f"quipu shard listening on {scheme}://{bound[0]}:{bound[1]}", flush=True)
        await stop.wait()
        log.info("stopping: draining the write queue and flushing the store")
    finally:
        await runner.cleanup()


def _tls(tls: TlsSection | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_pem_file, tls.key_pem_file)
    return context


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
