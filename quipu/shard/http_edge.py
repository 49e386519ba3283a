"""Where the engine's errors become HTTP answers: one status table, JSON error bodies, the
body reader with its size limit, and an access logger that never writes a query value.

Every error leaves as `{"error": "..."}`. The message is the engine's, which says what to
do next and never holds a secret; an unexpected exception becomes a bare 500 (its detail
goes to the shard's log, not to the caller).
"""

import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from quipu.core.errors import (
    BadInput,
    Conflict,
    CorruptStore,
    Forbidden,
    NotFound,
    Overloaded,
    QuipuError,
    StorageFull,
    StoreLocked,
    TooManyQueries,
    Unauthenticated,
)

# Most specific first: the first class an error is an instance of decides.
STATUS_BY_ERROR: tuple[tuple[type[QuipuError], int], ...] = (
    (BadInput, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (TooManyQueries, 429),
    (Overloaded, 503),  # the write queue is full: retry after a backoff
    (StoreLocked, 503),
    (StorageFull, 507),
    (CorruptStore, 500),
)
RETRY_AFTER_SECONDS = "1"


def error_status(err: QuipuError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(err, cls):
            return status
    return 500


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, message: str) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return json_response({"error": message}, status, headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware(*, process: str = "shard") -> Callable:
    """Turn every failure into a JSON error; aiohttp's own (404 route, 405, 413) included.
    `process` names whose log holds an unexpected failure's details (shard, router, ingest)."""
    where = logging.getLogger(f"quipu.{process}")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except QuipuError as err:
            status = error_status(err)
            if status == 500:
                where.error("%s %s failed: %s", request.method, _route(request), err)
            return error_response(status, str(err))
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body is larger than {request.client_max_size} bytes")
        except web.HTTPException as err:
            if err.status < 400:
                raise
            response = error_response(err.status, err.reason)
            if "Allow" in err.headers:  # a 405 must say what is allowed (RFC 9110 §15.5.6)
                response.headers["Allow"] = err.headers["Allow"]
            return response
        except Exception:
            where.exception("%s %s failed", request.method, _route(request))
            return error_response(500, f"internal error; the {process} log has the details")

    return middleware


def status_middleware(*, statuses: Mapping[type[Exception], int]) -> Callable:
    """Answer each error class in `statuses` (checked in order) with its status. For the
    errors the router and ingest fronts raise about shards (ShardDown, ShardFailed), which
    live in quipu/router, so STATUS_BY_ERROR here cannot name them. Placed inside
    error_middleware, which renders every other error."""
    caught = tuple(statuses)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except caught as err:
            status = next(status for cls, status in statuses.items() if isinstance(err, cls))
            return error_response(status, str(err))

    return middleware


def cut_off(request: web.Request) -> None:
    """End a streamed answer that failed after its headers went out, when no error answer
    is possible: abort the connection, so that no chunked terminator makes the part sent
    look like the whole answer."""
    if request.transport is not None:
        request.transport.abort()


async def read_json(request: web.Request) -> object:
    """The body as JSON; a body over the limit raises 413 before it is read in full."""
    raw = await request.read()
    return parse_json(raw, "request body")


def parse_json(raw: bytes, what: str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise BadInput(f"{what} is not valid JSON ({err.msg} at byte {err.pos})") from None


def _route(request: web.Request) -> str:
    """The route's template (/v1/entities/{type_name}), never the path: paths carry entity
    ids and log ids, which are values."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "(no route)"


class ShardAccessLogger(AbstractAccessLogger):
    """One line per request: method, route template, status, time. No path values, no query
    string, no Authorization: the access log is read by more people than the audit log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = _route(request) if isinstance(request, web.Request) else "(no route)"
        self.logger.info("%s %s %d %.1fms", request.method, route, response.status, time * 1000)
