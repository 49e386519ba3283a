"""A small cluster on loopback for router tests: real shards (tests/shard_proc.py) that take
the cluster token, a shards.json, a token file, an anchor key, and a real
`quipu router serve` process. Writes go straight to the owning shard
(`ShardMap.route_write`), as the ingest front would send them.

    with RouterCluster.start(tmp_path, shards=3) as cluster:
        cluster.write("acme", append_request("alice"))
        cluster.flush()
        cluster.router.json("POST", "/v1/logs/query", {}, role="admin")
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import shard_proc
from shard_proc import Reply, ShardProcess, define_types, start_process, write_keys

from quipu.cluster.process_config import CLUSTER_GRANTS
from quipu.router.shard_map import ShardInfo, ShardMap
from quipu.shard.auth import new_token, token_digest

READY_PREFIX = "quipu router listening on "
SEED = "router-test"
GRANTS = {"admin": CLUSTER_GRANTS, "auditor": ["query"], "service": ["emit"], "nobody": []}
# The callers' tokens: name -> entry of the router's token file.
USERS = {
    "admin": {"role": "admin", "tenant": "*"},
    "auditor": {"role": "auditor", "tenant": "*"},
    "nobody": {"role": "nobody", "tenant": "*"},
    "acme": {"role": "auditor", "tenant": "acme"},
    "globex": {"role": "auditor", "tenant": "globex"},
    "acme-admin": {"role": "admin", "tenant": "acme"},
}


def cluster_shard(base: Path, cluster_token: str) -> ShardProcess:
    """A started shard taking the cluster token, with no per-token query cap (the router caps
    its callers), its port pinned for restarts."""
    return shard_proc.cluster_shard(base, cluster_token, max_concurrent_queries=None)


@dataclass
class RouterProcess(ShardProcess):
    """`quipu router serve` with QUIPU_CLUSTER_TOKEN in its environment; `request` as for a
    shard, with the router's users' tokens."""

    cluster_token: str = ""

    @property
    def config_path(self) -> Path:
        return self.base / "router.json"

    @property
    def log_path(self) -> Path:
        return self.base / "router.log"

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def launch(self) -> None:
        env = {**os.environ, "QUIPU_CLUSTER_TOKEN": self.cluster_token}
        command = [sys.executable, "-m", "quipu.cli.main", "router", "serve", str(self.config_path)]
        self.proc, self.url = start_process(command, self.log_path, ready_prefix=READY_PREFIX, env=env)


class LoopbackShards:
    """What the router's and the ingest front's test clusters share: started shards
    `shard-NNNN` (by their index in `shards`) under `base`, the shards.json over them, and a
    token file of the callers' tokens. `stop` stops `fronts()` first, then the shards."""

    base: Path
    shards: list[ShardProcess]

    @property
    def map_path(self) -> Path:
        return self.base / "shards.json"

    def info(self, shard: ShardProcess) -> ShardInfo:
        return ShardInfo(f"shard-{self.shards.index(shard):04d}", shard.url)

    def shard_map(self) -> ShardMap:
        return ShardMap.load(self.map_path)

    def shard(self, shard_id: str) -> ShardProcess:
        return self.shards[int(shard_id.removeprefix("shard-"))]

    def owner(self, tenant: str) -> ShardProcess:
        """The shard the map routes the tenant's writes to now."""
        return self.shard(self.shard_map().route_write(tenant).id)

    def write_map(self, seed: str) -> None:
        ShardMap.create(seed, [self.info(s) for s in self.shards]).save(self.map_path)

    def write_tokens_file(self, users: dict[str, dict], tokens: dict[str, str]) -> None:
        """tokens.json: each of `tokens` (users name -> token) with its `users` entry."""
        (self.base / "tokens.json").write_text(
            json.dumps({token_digest(t): users[name] for name, t in tokens.items()})
        )

    def fronts(self) -> list:
        """What answers the callers (each with `stop()`), stopped before the shards."""
        return []

    def stop(self) -> None:
        for front in self.fronts():
            front.stop()
        for shard in self.shards:
            shard.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def router_config(base: Path, **anchor: object) -> dict:
    keys = write_keys(base / "router-keys")
    return {
        "listen": "127.0.0.1:0",
        "shard_map": str(base / "shards.json"),
        "tokens_file": str(base / "tokens.json"),
        "grants": GRANTS,
        "max_concurrent_queries": 4,
        "anchor": {
            "private_key_pem_file": keys["private_key_pem_file"],
            "public_key_pem_file": keys["public_key_pem_file"],
            "log": str(base / "anchors.log"),
            "interval_secs": None,
            **anchor,
        },
        "limits": {"max_body_bytes": 1 << 20},
    }


@dataclass
class RouterCluster(LoopbackShards):
    base: Path
    cluster_token: str
    tokens: dict[str, str]  # USERS name -> token
    shards: list[ShardProcess] = field(default_factory=list)
    router: RouterProcess | None = None

    @classmethod
    def start(cls, base: Path, *, shards: int = 3, **anchor: object) -> "RouterCluster":
        """`anchor`: keys to add to the router config's anchor section."""
        tokens = {name: f"tok-{name}-{os.urandom(8).hex()}" for name in USERS}
        cluster = cls(base, new_token(), tokens)
        try:
            for n in range(shards):
                shard = cluster_shard(base / f"shard-{n:04d}", cluster.cluster_token)
                define_types(shard)
                cluster.shards.append(shard)
            cluster.write_map(SEED)
            cluster.write_tokens_file(USERS, tokens)
            router = RouterProcess(
                base, router_config(base, **anchor), tokens, cluster_token=cluster.cluster_token
            )
            router.write_config()
            router.launch()
            cluster.router = router
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def write(self, tenant: str, body: dict) -> None:
        """POST /v1/logs to the tenant's shard with the cluster token, as ingest does."""
        reply = self.owner(tenant).request(
            "POST", "/v1/logs", body, token=self.cluster_token, headers={"X-Quipu-Tenant": tenant}
        )
        assert reply.status == 202, (reply.status, reply.data)

    def write_batch(self, tenant: str, bodies: list[dict]) -> None:
        reply = self.owner(tenant).request(
            "POST", "/v1/logs/batch", bodies, token=self.cluster_token, headers={"X-Quipu-Tenant": tenant}
        )
        assert reply.status == 202 and reply.json()["queued"] == len(bodies), (reply.status, reply.data)

    def flush(self) -> None:
        for shard in self.shards:
            shard.flush()

    def query(self, body: dict, user: str = "admin", headers: dict | None = None) -> Reply:
        return self.router.request("POST", "/v1/logs/query", body, token=self.tokens[user], headers=headers)

    def page_all(self, body: dict, user: str = "admin", between=None) -> list[dict]:
        """Every row of a query through the router, page by page (`between()` runs between
        pages: writes while paging). A `cursor` in `body` starts from that page."""
        rows, cursor = [], body.get("cursor")
        while True:
            reply = self.query({**body, "cursor": cursor}, user)
            assert reply.status == 200, (reply.status, reply.data)
            rows.extend(reply.json())
            cursor = reply.header("X-Quipu-Next-Cursor")
            if cursor is None:
                return rows
            if between is not None:
                between()

    def copy_store(self, shard: ShardProcess, to: Path) -> None:
        shutil.copytree(shard.base / "store", to)

    def fronts(self) -> list:
        return [self.router] if self.router is not None else []
