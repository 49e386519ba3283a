"""A token table in a file of its own, re-read when the file changes: how the cluster's
fronts (router, ingest workers) share one set of tokens that `quipu-cluster token` extends
without a restart.

The file has the shape of a shard config's `auth.tokens` (`"sha256:<hex>": {role, tenant,
expires}`), so it is never a credential. A file that cannot be read keeps the last good
table, as SIGHUP does for a shard.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from quipu.core.files import ReloadedFile
from quipu.shard.auth import ANY_TENANT, Principal, QueryLimiter, TokenTable, token_digest, token_id
from quipu.shard.config import read_config_file
from quipu.shard.permissions import Action, PermissionPolicy

log = logging.getLogger(__name__)
SERVICE_ROLE = "quipu:cluster"
RECHECK_SECS = 0.5  # a new token works within this long; one stat per interval at most


class TokenFile:
    """`service_token`, when given, is one more caller with every grant and every tenant:
    the cluster's own token, so the supervisor can ask the router for an anchor after a
    grow. Its role has a ":" in it, which no token file can name."""

    def __init__(
        self,
        path: Path,
        grants: Mapping[str, Sequence[str]],
        max_concurrent_queries: int | None = 4,
        service_token: str | None = None,
    ) -> None:
        self.path = path
        policy = PermissionPolicy.from_json(dict(grants), "grants")
        self.policy = policy.grant(SERVICE_ROLE, Action) if service_token else policy
        self.limiter = QueryLimiter(max_concurrent_queries)
        self._service = None
        if service_token:
            digest = token_digest(service_token)
            self._service = digest, Principal(SERVICE_ROLE, token_id(digest), ANY_TENANT, None)
        self._table = ReloadedFile(path, self._load, RECHECK_SECS)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller of an `Authorization` header; Unauthenticated (one message) otherwise."""
        return self._table.current().authenticate(authorization, time.time())

    def _load(self, path: Path) -> TokenTable:
        table, warnings = TokenTable.from_json(read_config_file(path), str(path))
        for warning in warnings:
            log.warning("%s", warning)
        return table if self._service is None else table.with_principal(*self._service)
