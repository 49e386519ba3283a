"""What a running shard holds: its store, pipeline, auth and the helpers around them.

Built and torn down by `app.shard_context`; handlers reach it through `app[SHARD]`. The
auth section is one immutable object swapped whole on SIGHUP, so a request sees either the
old or the new tokens and grants, never a mix.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from quipu.core.audit_store import AuditStore
from quipu.core.errors import BadInput, Forbidden, QuipuError, Unauthenticated
from quipu.core.event import validate_tenant
from quipu.shard.auth import AuthConfig, Principal, QueryLimiter
from quipu.shard.config import ShardConfig, load_auth
from quipu.shard.health import DiskProbe
from quipu.shard.permissions import Action, PermissionPolicy
from quipu.shard.pipeline import AuditHandle, AuditPipeline
from quipu.shard.syslog import SyslogMirror

log = logging.getLogger("quipu.shard")

TENANT_HEADER = "X-Quipu-Tenant"
SYSTEM_ROLE = "quipu:system"  # the shard's own periodic work; no token can carry it
ANY_TENANT = "*"


def pipeline_policy(auth: AuthConfig) -> PermissionPolicy:
    return auth.policy.grant(SYSTEM_ROLE, Action)


@dataclass
class ShardState:
    config: ShardConfig
    store: AuditStore
    pipeline: AuditPipeline
    probe: DiskProbe
    mirror: SyslogMirror | None
    auth: AuthConfig
    limiter: QueryLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = QueryLimiter(self.auth.max_concurrent_queries)

    def reload_auth(self, path: Path) -> bool:
        """Re-read the auth section (SIGHUP). A broken file keeps the current config."""
        try:
            auth = load_auth(path)
        except QuipuError as err:
            log.error("auth reload failed, keeping the current tokens and grants: %s", err)
            return False
        self.pipeline.policy = pipeline_policy(auth)
        self.limiter.limit = auth.max_concurrent_queries
        self.auth = auth
        for warning in auth.warnings:
            log.warning("%s", warning)
        log.info("auth reloaded: %d tokens", len(auth.tokens))
        return True

    def caller(self, request: web.Request) -> Principal:
        principal = self.auth.tokens.authenticate(request.headers.get("Authorization"), time.time())
        if principal.role == SYSTEM_ROLE:
            raise Unauthenticated("missing or invalid bearer token")
        return principal

    def handle(self, request: web.Request, action: Action | None = None) -> tuple[AuditHandle, Principal]:
        """The caller's handle. Naming the action checks the grant before the body is read:
        a caller without it learns nothing from how its input would have been judged."""
        principal = self.caller(request)
        if action is not None:
            self.pipeline.policy.check(principal.role, action)
        return self.pipeline.handle(principal.role, actor=principal.token_id), principal

    def system_handle(self, actor: str) -> AuditHandle:
        return self.pipeline.handle(SYSTEM_ROLE, actor=actor)

    def gauges(self) -> dict[str, float]:
        health = self.pipeline.health
        return {
            "quipu_queue_depth": self.pipeline.queue_depth,
            "quipu_dlq_entries": self.pipeline.dlq_count,
            "quipu_store_bytes": self.store.bytes_on_disk(),
            "quipu_disk_free_bytes": health.free_bytes,
            "quipu_disk_total_bytes": health.total_bytes,
            "quipu_writer_alive": int(self.pipeline.writer_alive),
            "quipu_disk_full": int(health.disk_full),
            "quipu_disk_low": int(health.low_disk),
        }


SHARD = web.AppKey("shard", ShardState)


def request_tenant(request: web.Request, principal: Principal) -> str | None:
    """The tenant a request acts for. A tenant-bound token acts for its own tenant (naming
    another is 403); a cluster-wide one (`*`, or none in the config) may name one in
    X-Quipu-Tenant; absent, it acts for no tenant in particular."""
    named = request.headers.get(TENANT_HEADER)
    if named is not None:
        named = validate_tenant(named, TENANT_HEADER)
    bound = principal.tenant
    if bound is None or bound == ANY_TENANT:
        return named
    if named is not None and named != bound:
        raise Forbidden("this token is bound to another tenant")
    return bound


def require_tenant_match(bound: str | None, requested: str | None) -> str | None:
    """A read's tenant condition: a bound caller always reads its own tenant only."""
    if bound is None:
        return requested
    if requested is not None and requested != bound:
        raise Forbidden("this token is bound to another tenant")
    return bound


def check_query_param(value: str | None, name: str) -> str:
    if value is None:
        raise BadInput(f"{name}: required query parameter is missing")
    return value
