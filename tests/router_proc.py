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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shard_proc import START_TIMEOUT, Reply, ShardProcess, define_types, write_keys

from quipu.router.shard_map import ShardInfo, ShardMap
from quipu.shard.auth import new_token, token_digest

READY_PREFIX = "quipu router listening on "
SEED = "router-test"
CLUSTER_ROLE = "cluster"
ALL_ACTIONS = ["emit", "query", "administer"]
GRANTS = {"admin": ALL_ACTIONS, "auditor": ["query"], "service": ["emit"], "nobody": []}
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
    """A started shard taking the cluster token (role cluster, tenant *, every action, no
    per-token query cap: the router caps its callers), its port pinned for restarts."""
    shard = ShardProcess.prepare(base)
    auth = shard.config["auth"]
    auth["tokens"][token_digest(cluster_token)] = {"role": CLUSTER_ROLE, "tenant": "*"}
    auth["grants"][CLUSTER_ROLE] = ALL_ACTIONS
    auth["max_concurrent_queries"] = None
    shard.tokens[CLUSTER_ROLE] = cluster_token
    shard.write_config()
    shard.launch()
    shard.config["listen"] = urlsplit(shard.url).netloc
    shard.write_config()
    return shard


@dataclass
class RouterProcess(ShardProcess):
    """`quipu router serve` with QUIPU_CLUSTER_TOKEN in its environment; `request` as for a
    shard, with the router's users' tokens."""

    cluster_token: str = ""

    @property
    def config_path(self) -> Path:
        return self.base / "router.json"

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def launch(self) -> None:
        env = {**os.environ, "QUIPU_CLUSTER_TOKEN": self.cluster_token}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quipu.cli.main", "router", "serve", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=open(self.base / "router.log", "ab"),  # noqa: SIM115 - the child owns it
            text=True,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                return
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"router did not start; log:\n{self.log()}")

    def log(self) -> str:
        return (self.base / "router.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


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
class RouterCluster:
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
            ShardMap.create(SEED, [cluster.info(s) for s in cluster.shards]).save(cluster.map_path)
            (base / "tokens.json").write_text(
                json.dumps({token_digest(t): USERS[name] for name, t in tokens.items()})
            )
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
        return self.shard(self.shard_map().route_write(tenant).id)

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

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for shard in self.shards:
            shard.stop()

    def __enter__(self) -> "RouterCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
