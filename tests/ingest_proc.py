"""A small cluster on loopback for ingest tests: real shards (tests/shard_proc.py) that take
the cluster token, a shards.json, a token file, and `quipu ingest serve` workers sharing one
port (SO_REUSEPORT).

    with IngestCluster.start(tmp_path, shards=2) as cluster:
        cluster.front.request("POST", "/v1/logs", body, token=cluster.tokens["ops"],
                              headers={"X-Quipu-Tenant": "acme"})
        cluster.owner("acme").flush()
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import shard_proc
from router_proc import LoopbackShards
from shard_proc import Reply, ShardProcess, http_request, start_process, stop_process

from quipu.cluster.process_config import CLUSTER_GRANTS

READY_PREFIX = "quipu ingest listening on "
SEED = "ingest-test"
# The callers' tokens: name -> entry of the token file (and of every shard's config, so a
# read forwarded to a shard standing in for the router is answered with the same tokens).
USERS = {
    "ops": {"role": "admin", "tenant": "*"},
    "auditor": {"role": "auditor", "tenant": "*"},
    "acme": {"role": "service", "tenant": "acme"},
    "globex": {"role": "service", "tenant": "globex"},
    "acme-auditor": {"role": "auditor", "tenant": "acme"},
}
USER_GRANTS = {"admin": CLUSTER_GRANTS, "auditor": ["query"], "service": ["emit"]}


def cluster_shard(base: Path, cluster_token: str, users: dict[str, str]) -> ShardProcess:
    """A started shard that takes the cluster token and the users' tokens (USERS name ->
    token), its port pinned so a restart keeps the URL of the map."""
    return shard_proc.cluster_shard(base, cluster_token, {t: USERS[name] for name, t in users.items()})


@dataclass
class IngestWorker:
    proc: subprocess.Popen
    url: str

    @classmethod
    def launch(cls, config_path: Path, cluster_token: str, log_path: Path) -> "IngestWorker":
        env = {**os.environ, "QUIPU_CLUSTER_TOKEN": cluster_token}
        command = [sys.executable, "-m", "quipu.cli.main", "ingest", "serve", str(config_path)]
        return cls(*start_process(command, log_path, ready_prefix=READY_PREFIX, env=env))

    def stop(self) -> int:
        return stop_process(self.proc)


@dataclass
class IngestFront:
    """N workers started from one config on one port: the first binds port 0, the others
    the port it got."""

    base: Path
    config: dict
    cluster_token: str
    workers: list[IngestWorker] = field(default_factory=list)
    url: str = ""

    @property
    def config_path(self) -> Path:
        return self.base / "ingest.json"

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config))

    def launch(self, count: int) -> None:
        for _ in range(count):
            self.write_config()
            worker = IngestWorker.launch(self.config_path, self.cluster_token, self.base / "ingest.log")
            self.workers.append(worker)
            self.url = worker.url
            self.config["listen"] = urlsplit(worker.url).netloc

    def log(self) -> str:
        return (self.base / "ingest.log").read_text(errors="replace")

    def request(self, method: str, path: str, body: object = None, **kw: object) -> Reply:
        return http_request(self.url, method, path, body, **kw)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@dataclass
class IngestCluster(LoopbackShards):
    base: Path
    cluster_token: str
    tokens: dict[str, str]  # USERS name -> token
    shards: list[ShardProcess]
    front: IngestFront

    @classmethod
    def start(
        cls, base: Path, *, shards: int = 2, workers: int = 2, router: str | None = None, **limits: int
    ) -> "IngestCluster":
        """`router`: the URL forwarded calls go to (default: the first shard's)."""
        cluster_token = f"qp_cluster-{os.urandom(8).hex()}"
        tokens = {name: f"tok-{name}-{os.urandom(8).hex()}" for name in USERS}
        cluster = cls(base, cluster_token, tokens, [], IngestFront(base, {}, cluster_token))
        try:
            for n in range(shards):
                cluster.shards.append(cluster_shard(base / f"shard-{n:04d}", cluster_token, tokens))
            cluster.write_map(SEED)
            cluster.write_tokens_file(USERS, tokens)
            cluster.front.config = {
                "listen": "127.0.0.1:0",
                "shard_map": str(cluster.map_path),
                "router_url": router or cluster.shards[0].url,
                "tokens_file": str(base / "tokens.json"),
                "grants": USER_GRANTS,
                "limits": {"max_body_bytes": limits.get("max_body_bytes", 1 << 20)},
                "reuse_port": True,
            }
            cluster.front.launch(workers)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def grow(self, add: int) -> list[ShardProcess]:
        """What a grow does, in the supervisor's order: start the new shards, freeze the
        active ones, then commit the new generation (the fronts pick it up from the file)."""
        new = self.add_shards(add)
        self.freeze_active()
        self.commit(new)
        return new

    def add_shards(self, count: int) -> list[ShardProcess]:
        """New shards, started, not yet in the map."""
        start = len(self.shards)
        for n in range(count):
            self.shards.append(
                cluster_shard(self.base / f"shard-{start + n:04d}", self.cluster_token, self.tokens)
            )
        return self.shards[start:]

    def freeze_active(self) -> None:
        shard_map = self.shard_map()
        for shard_id in shard_map.active:
            shard = next(s for s in self.shards if s.url == shard_map.url(shard_id))
            reply = shard.request("POST", "/v1/admin/freeze")
            assert reply.status == 204, (reply.status, reply.data)

    def commit(self, new: list[ShardProcess]) -> None:
        """A new generation of `new`; the previous active shards are frozen in the map."""
        self.shard_map().with_pending([self.info(s) for s in new]).commit_pending().save(self.map_path)

    def write(self, tenant: str, body: dict, key: str | None = None, token: str = "ops") -> Reply:
        """POST /v1/logs through the front as `token` (a `*` token names the tenant)."""
        headers = {"X-Quipu-Tenant": tenant}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.front.request("POST", "/v1/logs", body, token=self.tokens[token], headers=headers)

    def recorded(self, tenant: str, query: dict | None = None) -> dict[str, int]:
        """shard id -> how many of the tenant's rows (matching `query`) it holds, flushed."""
        counts = {}
        for shard in self.shards:
            if shard.proc is not None and shard.proc.poll() is None:
                shard.flush()
                counts[self.info(shard).id] = shard.count(query or {}, headers={"X-Quipu-Tenant": tenant})
        return counts

    def fronts(self) -> list:
        return [self.front]
