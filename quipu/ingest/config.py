"""The ingest front's config file (JSON, written by the cluster supervisor) and the cluster
token it gets from the environment.

    {"listen": "127.0.0.1:7080", "shard_map": "/abs/data/shards.json",
     "router_url": "http://127.0.0.1:7100", "tokens_file": "/abs/data/tokens.yaml",
     "grants": {"admin": ["emit", "query", "administer"], "service": ["emit"]},
     "max_concurrent_queries": 4, "limits": {"max_body_bytes": 1048576}, "reuse_port": true}

Loaded as strictly as a shard's config (the same readers): an unknown key, a wrong type or
a missing key stops the worker with a message naming the key. The cluster token is never
in the file (a config file is not a credential): the supervisor passes it in
QUIPU_CLUSTER_TOKEN.
"""

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quipu.core.errors import BadInput
from quipu.router.shard_client import CLUSTER_TOKEN_ENV
from quipu.shard.config import parse_address, read_config_file
from quipu.shard.config_fields import Fields, type_name
from quipu.shard.permissions import PermissionPolicy

TOP_LEVEL = (
    *("listen", "shard_map", "router_url", "tokens_file", "grants", "max_concurrent_queries"),
    *("limits", "reuse_port"),
)
DEFAULT_MAX_BODY_BYTES = 1 << 20
_ROUTER_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}")  # no path: paths are forwarded
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what a bearer header can carry


@dataclass(frozen=True)
class IngestConfig:
    listen: tuple[str, int]
    shard_map: Path
    router_url: str
    tokens_file: Path
    grants: Mapping[str, Sequence[str]]
    max_concurrent_queries: int | None
    max_body_bytes: int
    reuse_port: bool
    cluster_token: str = field(repr=False)  # never in a repr, a log line or an error
    path: Path | None = None


def load_config(path: str | Path, environ: Mapping[str, str] = os.environ) -> IngestConfig:
    """Read and check the whole file; BadInput names the first key that is wrong. Relative
    paths are taken from the file's directory."""
    path = Path(path).absolute()
    top = Fields(read_config_file(path), "", TOP_LEVEL)
    limits = Fields(top.raw("limits"), "limits", ("max_body_bytes",))
    return IngestConfig(
        listen=parse_address(top.text("listen"), "listen", min_port=0),
        shard_map=top.file_path("shard_map", path.parent),
        router_url=_router_url(top.text("router_url")),
        tokens_file=top.file_path("tokens_file", path.parent),
        grants=_grants(top.raw("grants")),
        max_concurrent_queries=top.optional_integer("max_concurrent_queries", 4),
        max_body_bytes=limits.integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        reuse_port=top.boolean("reuse_port", True),
        cluster_token=cluster_token(environ),
        path=path,
    )


def cluster_token(environ: Mapping[str, str]) -> str:
    token = environ.get(CLUSTER_TOKEN_ENV, "")
    if not token:
        raise BadInput(
            f"{CLUSTER_TOKEN_ENV} is not set: the ingest front calls the shards with the cluster "
            "token, which the supervisor (quipu-cluster up) passes in the environment"
        )
    if not _TOKEN.fullmatch(token):
        raise BadInput(f"{CLUSTER_TOKEN_ENV}: expected visible ASCII without spaces (the value is not shown)")
    return token


def _router_url(text: str) -> str:
    url = text.rstrip("/")
    if not _ROUTER_URL.fullmatch(url):
        raise BadInput("router_url: expected http://HOST:PORT (no path), e.g. http://127.0.0.1:7100")
    return url


def _grants(obj: object) -> Mapping[str, Sequence[str]]:
    """Checked now (the error names the key) though TokenFile reads them again."""
    if obj is None:
        raise BadInput("grants: required key is missing (role -> list of emit, query, administer)")
    if not isinstance(obj, Mapping):
        raise BadInput(f"grants: expected an object of role -> list of actions, got {type_name(obj)}")
    PermissionPolicy.from_json(obj, "grants")
    return {str(role): list(actions) for role, actions in obj.items()}
