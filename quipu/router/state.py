"""What a running router holds, and how handlers call the shards through it.

Built and torn down by `app.router_context`; handlers reach it through `app[ROUTER]`. The
router holds no store: the shard map and the token file are re-read when they change, so a
grow or a new token takes effect without a restart.

A shard's own 4xx answer is the caller's answer (the same query fails the same way on every
shard); a shard that cannot be reached is a 503 with Retry-After; a shard that answers in a
way the router cannot use (5xx, refusing the cluster token) is a 502 naming that shard.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from quipu.core.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    Overloaded,
    QuipuError,
    StorageFull,
    TooManyQueries,
)
from quipu.router.anchor import Anchor, AnchorLog
from quipu.router.config import RouterConfig
from quipu.router.metrics import RouterMetrics
from quipu.router.shard_client import ShardClient, ShardDown, ShardReply
from quipu.router.shard_map import ShardInfo, ShardMap, ShardMapFile
from quipu.shard.auth import ANY_TENANT, Principal
from quipu.shard.http_edge import status_middleware
from quipu.shard.permissions import Action
from quipu.shard.state import request_tenant
from quipu.shard.token_file import TokenFile

ExportHook = Callable[[Anchor], None]
# The shard's status -> the error the router raises, so http_edge's one table renders it.
# No 401 or 403: the router calls with the cluster token, which names any tenant, so a
# shard refusing it is the cluster's misconfiguration (502), never the caller's fault.
ERROR_BY_STATUS: Mapping[int, type[QuipuError]] = {
    400: BadInput,
    404: NotFound,
    409: Conflict,
    429: TooManyQueries,
    503: Overloaded,
    507: StorageFull,
}
NOT_PER_TENANT = "this path is not per tenant: a tenant-bound token may not use it"


class ShardFailed(QuipuError):
    """A shard answered, but not with anything the router can pass on (502)."""


@dataclass
class RouterState:
    config: RouterConfig
    shard_map: ShardMapFile
    tokens: TokenFile
    client: ShardClient
    anchors: AnchorLog
    export_hook: ExportHook | None = None
    export_session: aiohttp.ClientSession | None = None  # no cluster token: it calls outside
    metrics: RouterMetrics = field(default_factory=RouterMetrics)
    anchor_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task] = field(default_factory=set)

    def map(self) -> ShardMap:
        return self.shard_map.current()

    def caller(self, request: web.Request, action: Action | None = None) -> tuple[Principal, str | None]:
        """(who, which tenant it acts for). The grant is checked before the body is read."""
        principal = self.tokens.authenticate(request.headers.get("Authorization"))
        if action is not None:
            self.tokens.policy.check(principal.role, action)
        return principal, request_tenant(request, principal)

    def limit(self, principal: Principal):
        """The caller's query slot: at most max_concurrent_queries per token (429 beyond)."""
        return self.tokens.limiter.slot(principal.token_id)

    async def call(self, shard: ShardInfo, method: str, path: str, **kw: object) -> ShardReply:
        try:
            reply = await self.client.call(shard, method, path, **kw)
        except ShardDown:
            self.metrics.shard_calls.inc(f"{shard.id}|down")
            raise
        self.metrics.shard_calls.inc(f"{shard.id}|{reply.status}")
        return reply

    async def call_all(
        self, shards: Sequence[ShardInfo], method: str, path: str, **kw: object
    ) -> dict[str, ShardReply]:
        """The same call to every shard at once; the first ShardDown is raised (503)."""
        replies = await asyncio.gather(*(self.call(s, method, path, **kw) for s in shards))
        return {s.id: r for s, r in zip(shards, replies, strict=True)}

    async def call_each(
        self, shards: Sequence[ShardInfo], call: Callable[[ShardInfo], Awaitable[object]]
    ) -> dict[str, object]:
        """`call(shard)` for every shard at once, a QuipuError (ShardDown, ShardFailed, a
        shard's 4xx) kept as that shard's result: for reports that name each shard."""

        async def one(shard: ShardInfo) -> object:
            try:
                return await call(shard)
            except QuipuError as err:
                return err

        results = await asyncio.gather(*(one(s) for s in shards))
        return {s.id: r for s, r in zip(shards, results, strict=True)}


ROUTER = web.AppKey("router", RouterState)


def router_state(request: web.Request) -> RouterState:
    return request.app[ROUTER]


def unbound_only(principal: Principal) -> None:
    """Refuse a tenant-bound token where the answer is not split by tenant: it could show
    another tenant's entities, counts or records."""
    if principal.tenant not in (None, ANY_TENANT):
        raise Forbidden(NOT_PER_TENANT)


def expect(reply: ShardReply, shard: str, ok: int = 200) -> object:
    """The reply's JSON when its status is `ok`; otherwise the error it stands for."""
    if reply.status == ok:
        return reply.json()
    raise shard_error(reply, shard)


def shard_error(reply: ShardReply, shard: str) -> QuipuError:
    cls = ERROR_BY_STATUS.get(reply.status)
    message = _message(reply)
    if cls is None or message is None:
        return ShardFailed(f"{shard} answered {reply.status}; its log has the details")
    return cls(message)


def _message(reply: ShardReply) -> str | None:
    try:
        body = reply.json()
    except ValueError:
        return None
    return body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None


def shard_errors_middleware() -> Callable:
    """ShardDown -> 503 + Retry-After, ShardFailed -> 502; inside http_edge's error middleware,
    which renders every other error."""
    return status_middleware(statuses={ShardDown: 503, ShardFailed: 502})
