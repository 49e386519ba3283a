"""What an ingest worker holds: the shard map file, the token file and two HTTP clients
(one for the shards, with the cluster token; one for the router, with the caller's own
headers). Nothing else: a worker can be killed and another started at any time."""

from dataclasses import dataclass

from aiohttp import web

from quipu.core.errors import BadInput
from quipu.ingest.config import IngestConfig
from quipu.ingest.forward import RouterProxy
from quipu.router.shard_client import ShardClient
from quipu.router.shard_map import ShardMapFile
from quipu.shard.auth import Principal
from quipu.shard.permissions import Action
from quipu.shard.state import TENANT_HEADER, request_tenant
from quipu.shard.token_file import TokenFile


@dataclass(frozen=True)
class IngestState:
    config: IngestConfig
    maps: ShardMapFile
    tokens: TokenFile
    shards: ShardClient
    router: RouterProxy

    def caller(self, request: web.Request, action: Action) -> Principal:
        """The caller, checked for `action` before its body is read: a caller without the
        grant learns nothing from how its input would have been judged."""
        principal = self.tokens.authenticate(request.headers.get("Authorization"))
        self.tokens.policy.check(principal.role, action)
        return principal


def write_tenant(request: web.Request, principal: Principal) -> str:
    """The tenant a write acts for: a bound token's own (a header naming another is 403), or
    the one a cluster-wide token names. A write is always for one tenant: it picks the shard."""
    tenant = request_tenant(request, principal)
    if tenant is None:
        raise BadInput(f"this token is not bound to a tenant: name the tenant with {TENANT_HEADER}")
    return tenant


INGEST = web.AppKey("ingest", IngestState)
