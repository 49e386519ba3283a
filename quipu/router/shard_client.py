"""How the cluster's fronts call shards: one aiohttp session, the cluster token, a tenant
named per call.

The router and the ingest fronts hold no store; every shard call goes through here, so the
cluster token is added in one place and a shard that cannot be reached is one error
(`ShardDown`) that each caller turns into a 503 with Retry-After for that shard's tenants.
"""

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import orjson

from quipu.core.errors import QuipuError
from quipu.router.shard_map import ShardInfo
from quipu.shard.state import TENANT_HEADER

CLUSTER_TOKEN_ENV = "QUIPU_CLUSTER_TOKEN"  # the fronts' credential for the shards, never argv


class ShardDown(QuipuError):
    """The shard did not answer (refused, reset, timed out); its tenants retry later."""

    def __init__(self, shard: ShardInfo, why: str) -> None:
        super().__init__(f"{shard.id} is not reachable ({why}); retry after a moment")
        self.shard = shard


@dataclass(frozen=True)
class ShardReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body) if self.body else None


class ShardClient:
    """Open with `start()` (inside a running loop), close with `close()`."""

    def __init__(self, token: str, timeout: float = 30.0, connections: int = 64) -> None:
        self._auth = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._connections)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        shard: ShardInfo,
        method: str,
        path: str,
        *,
        tenant: str | None = None,
        json: object = None,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ShardReply:
        """One request, its whole answer read. ShardDown when the shard cannot be reached."""
        async with self.stream(
            shard, method, path, tenant=tenant, json=json, body=body, params=params, headers=headers
        ) as response:
            try:
                data = await response.read()
            except (TimeoutError, aiohttp.ClientError) as err:
                raise ShardDown(shard, type(err).__name__) from err
            return ShardReply(response.status, response.headers, data)

    @asynccontextmanager
    async def stream(
        self,
        shard: ShardInfo,
        method: str,
        path: str,
        *,
        tenant: str | None = None,
        json: object = None,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, its body unread: for NDJSON export, read line by line."""
        if self._session is None:
            raise RuntimeError("ShardClient.start() was not awaited")
        sent = {"Authorization": self._auth, **(headers or {})}
        if tenant is not None:
            sent[TENANT_HEADER] = tenant
        if json is not None:
            body = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        try:
            async with self._session.request(
                method, shard.url + path, data=body, params=params, headers=sent
            ) as response:
                yield response
        except (TimeoutError, aiohttp.ClientConnectionError) as err:
            raise ShardDown(shard, type(err).__name__) from err
