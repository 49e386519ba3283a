"""Every call that is not a write goes to the router unchanged: method, path and query
string as the caller sent them (still percent-encoded), headers including Authorization,
the body; the answer streams back as it arrives, so an NDJSON export of any size passes
through in flat memory. The router authenticates the caller; the front adds nothing.

Hop-by-hop headers (RFC 9110 §7.6.1) are the connection's, not the message's, and are not
forwarded either way. No cookie jar: one caller's Set-Cookie must never ride along on the
next caller's request. Bodies stay encoded (no auto-decompression), so Content-Encoding and
Content-Length pass through as the router set them.
"""

import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from quipu.core.errors import Overloaded
from quipu.shard.http_edge import cut_off

log = logging.getLogger("quipu.ingest")
HOP_BY_HOP = frozenset(
    (
        *("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection"),
        *("te", "trailer", "transfer-encoding", "upgrade", "expect", "host", "content-length"),
    )
)
NOT_RELAYED = HOP_BY_HOP | {"date", "server"}  # our own server writes these
# aiohttp adds these to a request unless told not to; a forwarded request carries the
# caller's own (or none), so e.g. a caller that did not ask for gzip never gets it.
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 300.0  # between two chunks of an answer: a long export keeps flowing


class RouterDown(Overloaded):
    """The router cannot be reached: 503 + Retry-After, like a full queue."""


class RouterProxy:
    """One client session to the router. Open with `start()`, close with `close()`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """The router's answer to `request`, streamed. RouterDown before any byte of an
        answer was sent; a failure after that cuts the connection, so the caller sees a
        truncated answer as truncated, never as a complete one."""
        body = await request.read()  # within the body limit (413), like every call here
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        url = URL(self.base_url + request.raw_path, encoded=True)
        try:
            async with self._client().request(
                request.method,
                url,
                data=body or None,
                headers=headers,
                allow_redirects=False,
                skip_auto_headers=NO_AUTO_HEADERS,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in NOT_RELAYED:
                        response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                return await _relay_body(request, upstream, response)
        except (TimeoutError, aiohttp.ClientConnectionError) as err:
            why = type(err).__name__
            raise RouterDown(f"the router is not reachable ({why}); retry after a moment") from err

    async def healthz(self) -> str:
        """The router's own health status, or `unreachable`."""
        try:
            async with self._client().get(
                self.base_url + "/v1/healthz", timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT)
            ) as r:
                body = await r.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return "unreachable"
        status = body.get("status") if isinstance(body, dict) else None
        return status if isinstance(status, str) else f"answered {r.status}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RouterProxy.start() was not awaited")
        return self._session


async def _relay_body(
    request: web.Request, upstream: aiohttp.ClientResponse, response: web.StreamResponse
) -> web.StreamResponse:
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError, ConnectionResetError) as err:
        # Headers are out (also where the caller went away: then there is no one to answer).
        log.warning("a forwarded answer broke off (%s); closing the caller's connection", type(err).__name__)
        cut_off(request)
        return response
    await response.write_eof()
    return response
