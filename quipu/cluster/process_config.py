"""The config file of each process the supervisor starts, written under <data_dir>/run/.

Shards get a complete shard config (docs/config.md) whose only token is the digest of
this `up`'s cluster token; the router and ingest configs follow the plan in docs/cluster.md.
None of them holds a secret: the cluster token itself reaches the router and the ingest
workers only through their environment (QUIPU_CLUSTER_TOKEN), never a file or argv.
"""

import json
from pathlib import Path

from quipu.cluster.config import ClusterConfig, address_url
from quipu.core.files import replace_durably
from quipu.router.shard_map import ShardInfo

CLUSTER_ROLE = "cluster"  # the fronts' role on every shard
CLUSTER_GRANTS = ["emit", "query", "administer"]


def shard_config(config: ClusterConfig, shard: ShardInfo, cluster_token_digest: str) -> dict:
    host_port = shard.url.removeprefix("http://")
    return {
        "listen": host_port,
        "store": {"root": str(config.shard_root(shard.id)), **config.store},
        "keys": config.keys.as_shard_section(),
        "auth": {
            "tokens": {cluster_token_digest: {"role": CLUSTER_ROLE, "tenant": "*"}},
            "grants": {CLUSTER_ROLE: CLUSTER_GRANTS},
            # Every user query reaches a shard under the one cluster token: a per-token cap
            # here would cap the whole cluster. The fronts cap each user token instead.
            "max_concurrent_queries": None,
        },
        "limits": {"max_body_bytes": config.max_body_bytes},
        **config.shard_sections,
    }


def router_config(config: ClusterConfig) -> dict:
    return {
        **_front_config(config, config.router_listen),
        "anchor": {
            "private_key_pem_file": str(config.keys.private_key_pem_file),
            "public_key_pem_file": str(config.keys.public_key_pem_file),
            "log": str(config.anchors_log),
            "interval_secs": config.anchor_interval_secs,
            "export_url": config.anchor_export_url,
        },
    }


def ingest_config(config: ClusterConfig) -> dict:
    return {
        **_front_config(config, config.ingest_listen),
        "router_url": address_url(config.router_listen),
        "reuse_port": True,  # every worker binds the one public port
    }


def _front_config(config: ClusterConfig, listen: tuple[str, int]) -> dict:
    """What the router's and the ingest workers' configs share: both authenticate the users'
    tokens (one token file, one set of grants and query cap) and read the one shard map."""
    host, port = listen
    return {
        "listen": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "shard_map": str(config.shard_map_path),
        "tokens_file": str(config.tokens_file),
        "grants": dict(config.grants),
        "max_concurrent_queries": config.max_concurrent_queries,
        "limits": {"max_body_bytes": config.max_body_bytes},
    }


def write_config(path: Path, body: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(path, json.dumps(body, indent=2).encode() + b"\n")
    return path
