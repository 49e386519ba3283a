"""`quipu shard serve CONFIG`: run one shard until SIGTERM or Ctrl-C.

SIGHUP re-reads the config file's `auth` section and swaps it in whole; requests in flight
finish under the config they started with. Shutdown drains the write queue and flushes the
store before the process exits, so an event answered `queued` is written when the shard is
stopped (a SIGKILL is another matter: only flushed events are durable).

`run_site` is the serving loop the router and ingest fronts use too: one way to bind, to
print the "listening on" line the supervisor and tests wait for, and to stop.
"""

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from quipu.shard.app import make_app
from quipu.shard.config import ShardConfig, TlsSection, load_config
from quipu.shard.http_edge import ShardAccessLogger
from quipu.shard.state import SHARD


def serve(config_path: Path) -> None:
    config = load_config(config_path)
    asyncio.run(_serve(config, config_path))


async def _serve(config: ShardConfig, config_path: Path) -> None:
    app = make_app(config)

    def reload_auth() -> None:
        # Looked up when the signal comes: app[SHARD] exists only once the runner is set up.
        app[SHARD].reload_auth(config_path)

    await run_site(
        app,
        config.listen,
        name="shard",
        stopping="stopping: draining the write queue and flushing the store",
        ssl_context=_tls(config.tls),
        on_sighup=reload_auth,
    )


async def run_site(
    app: web.Application,
    listen: tuple[str, int],
    *,
    name: str,
    stopping: str,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool | None = None,
    on_sighup: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on `listen` until SIGTERM or SIGINT, then clean it up (its cleanup_ctx
    drains what the process holds). Once bound it prints `quipu NAME listening on URL` with
    the port actually bound (the caller may ask for port 0): the line a parent reads to
    learn the URL. `stopping` is logged to `quipu.NAME` when a signal arrives; `on_sighup`,
    if given, runs on SIGHUP once the app is set up."""
    runner = web.AppRunner(app, access_log_class=ShardAccessLogger, handle_signals=False)
    await runner.setup()
    try:
        host, port = listen
        site = web.TCPSite(
            runner, host, port, ssl_context=ssl_context, reuse_address=True, reuse_port=reuse_port
        )
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        if on_sighup is not None:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        scheme = "https" if ssl_context is not None else "http"
        bound = runner.addresses[0]
        print(f"quipu {name} listening on {scheme}://{bound[0]}:{bound[1]}", flush=True)
        await stop.wait()
        logging.getLogger(f"quipu.{name}").info(stopping)
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
