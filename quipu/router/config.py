"""The router's config file (JSON, written by the supervisor; docs/cluster.md).

    {"listen": "127.0.0.1:7100", "shard_map": "/abs/data/shards.json",
     "tokens_file": "/abs/data/tokens.yaml", "grants": {"admin": ["emit", "query", "administer"]},
     "max_concurrent_queries": 4,
     "anchor": {"private_key_pem_file": "...", "public_key_pem_file": "...",
                "log": "/abs/data/anchors.log", "interval_secs": 300, "export_url": null},
     "limits": {"max_body_bytes": 1048576}, "shard_timeout_secs": 30}

Relative paths are taken from the config file's directory. Every error names its key and
never the value found (the same strict readers as the shard's config). The cluster token
is not here: it comes from the environment (QUIPU_CLUSTER_TOKEN), never from a file.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm

from quipu.core.errors import BadInput
from quipu.core.keyring import KeyRing, RsaKey
from quipu.shard.config import parse_address, read_config_file
from quipu.shard.config_fields import Fields, read_named_file
from quipu.shard.permissions import PermissionPolicy

TOP_LEVEL = (
    "listen",
    "shard_map",
    "tokens_file",
    "grants",
    "max_concurrent_queries",
    "anchor",
    "limits",
    "shard_timeout_secs",
)
ANCHOR_KEYS = ("private_key_pem_file", "public_key_pem_file", "log", "interval_secs", "export_url")
ANCHOR_KEY_VERSION = 1
DEFAULT_MAX_BODY = 1 << 20


@dataclass(frozen=True)
class AnchorSection:
    keys: KeyRing  # one RSA version; the private half signs, the public half verifies
    log: Path
    interval_secs: float | None  # None: only on demand
    export_url: str | None


@dataclass(frozen=True)
class RouterConfig:
    listen: tuple[str, int]
    shard_map: Path
    tokens_file: Path
    grants: Mapping[str, list[str]]
    max_concurrent_queries: int | None
    anchor: AnchorSection
    max_body_bytes: int = DEFAULT_MAX_BODY
    shard_timeout_secs: float = 30.0


def load_router_config(path: str | Path) -> RouterConfig:
    path = Path(path).absolute()
    return router_config_from_json(read_config_file(path), path.parent)


def router_config_from_json(obj: object, base: Path) -> RouterConfig:
    top = Fields(obj, "", TOP_LEVEL)
    grants = top.raw("grants")
    PermissionPolicy.from_json({} if grants is None else grants, "grants")  # checked now, used by TokenFile
    limits = Fields(top.raw("limits"), "limits", ("max_body_bytes",))
    return RouterConfig(
        listen=parse_address(top.text("listen"), "listen", min_port=0),
        shard_map=top.file_path("shard_map", base),
        tokens_file=top.file_path("tokens_file", base),
        grants=dict(grants or {}),
        max_concurrent_queries=top.optional_integer("max_concurrent_queries", 4),
        anchor=_anchor(top.raw("anchor"), base),
        max_body_bytes=limits.integer("max_body_bytes", DEFAULT_MAX_BODY, minimum=1024),
        shard_timeout_secs=top.positive("shard_timeout_secs", 30.0),
    )


def _anchor(obj: object, base: Path) -> AnchorSection:
    if obj is None:
        raise BadInput("anchor: required section is missing (private_key_pem_file, log, ...)")
    f = Fields(obj, "anchor", ANCHOR_KEYS)
    export_url = f.optional_text("export_url")
    if export_url is not None and not export_url.startswith(("http://", "https://")):
        raise BadInput("anchor.export_url: expected an http:// or https:// URL, or null")
    return AnchorSection(
        keys=KeyRing([_signing_key(f, base)]),
        log=f.file_path("log", base),
        interval_secs=f.optional_positive("interval_secs", 300.0),
        export_url=export_url,
    )


def _signing_key(f: Fields, base: Path) -> RsaKey:
    private_path = f.file_path("private_key_pem_file", base)
    public_path = f.optional_file_path("public_key_pem_file", base)
    private_pem = read_named_file(private_path, f.path("private_key_pem_file"))
    public_pem = None if public_path is None else read_named_file(public_path, f.path("public_key_pem_file"))
    try:
        key = RsaKey.from_pem(ANCHOR_KEY_VERSION, public_pem, private_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm, BadInput) as err:
        raise BadInput(
            f"{f.path('private_key_pem_file')}: cannot load the RSA key pair (unencrypted PEM expected)"
        ) from err
    if key.private is not None and key.private.public_key().public_numbers() != key.public.public_numbers():
        raise BadInput("anchor: the public and the private key files are not one key pair")
    return key
