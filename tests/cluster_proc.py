"""A real `quipu-cluster` on loopback for tests: a cluster.yaml with free ports written to a
temp dir, `up` run as a child process in the foreground, its printed URL and admin token
read back.

    cluster = Cluster.prepare(tmp_path)
    with cluster.up():
        cluster.post("/v1/logs", body, token=cluster.admin_token, tenant="acme")
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from shard_proc import Reply, http_request, wait_until

from quipu.cluster.tokens import issue_token, token_entry

UP_PREFIX = "quipu-cluster: up at "
TOKEN_PREFIX = "  export QUIPU_TOKEN="
START_TIMEOUT = 120.0  # a bound on `up`, never a measurement
CLI = (sys.executable, "-m", "quipu.cluster.cli")


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for port 0, all bound at once so they differ."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def cluster_yaml(shards: int = 3, workers: int = 2, **sections: object) -> dict:
    """A cluster.yaml body on free loopback ports; keyword arguments replace whole keys."""
    ports = free_ports(shards + 2)
    body: dict = {
        "version": 1,
        "seed": f"test-{secrets.token_hex(4)}",
        "data_dir": "./data",
        "shards": [{"id": f"shard-{n:04d}", "url": f"http://127.0.0.1:{ports[n]}"} for n in range(shards)],
        "router": {"listen": f"127.0.0.1:{ports[shards]}", "anchor_interval_secs": 300},
        "ingest": {"listen": f"127.0.0.1:{ports[shards + 1]}", "workers": workers},
        "store": {"sync_policy": "every_n_or_interval:200:0.01", "retention_days": None},
    }
    body.update(sections)
    return body


@dataclass
class Cluster:
    base: Path
    config: dict
    proc: subprocess.Popen | None = None
    url: str = ""
    admin_token: str = ""
    runs: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def prepare(cls, base: Path, **kwargs: object) -> "Cluster":
        base.mkdir(parents=True, exist_ok=True)
        cluster = cls(base, cluster_yaml(**kwargs))
        cluster.write_config()
        return cluster

    # --- files --------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.base / "cluster.yaml"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def issue_tokens(self, entries: dict[str, dict]) -> dict[str, str]:
        """Tokens written to the token file before the first `up` (which then generates
        none), so every front knows them from its start; `admin` becomes `admin_token`."""
        tokens_file = self.data / "tokens.yaml"
        if not self.admin_token:
            entries = {"admin": {"role": "admin", "tenant": "*"}, **entries}
        tokens = {name: issue_token(tokens_file, token_entry(**entry))[0] for name, entry in entries.items()}
        self.admin_token = tokens.get("admin", self.admin_token)
        return tokens

    def shard_map(self) -> dict:
        return json.loads((self.data / "shards.json").read_text())

    def pids(self) -> dict[str, int | None]:
        return json.loads((self.data / "run" / "pids.json").read_text())["processes"]

    def output(self) -> str:
        return (self.base / f"up{self.runs}.out").read_text(errors="replace")

    def errors(self) -> str:
        return (self.base / f"up{self.runs}.err").read_text(errors="replace")

    # --- commands -----------------------------------------------------------------------

    def cli(self, *args: str, token: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """`quipu-cluster ARGS` in the cluster's directory (QUIPU_TOKEN set when given)."""
        env = {k: v for k, v in os.environ.items() if k != "QUIPU_TOKEN"} | self.env
        if token is not None:
            env["QUIPU_TOKEN"] = token
        return subprocess.run(
            [*CLI, *args], cwd=self.base, env=env, capture_output=True, text=True, timeout=timeout
        )

    def up(self, *args: str) -> "Cluster":
        """`up` in the foreground as a child; returns once it printed its up line."""
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if k != "QUIPU_TOKEN"} | self.env
        with (
            open(self.base / f"up{self.runs}.out", "wb") as out,
            open(self.base / f"up{self.runs}.err", "wb") as err,
        ):
            self.proc = subprocess.Popen([*CLI, "up", *args], cwd=self.base, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            lines = self.output().splitlines()
            up = next((line for line in lines if line.startswith(UP_PREFIX)), None)
            if up is not None and any(line.startswith(("  export", "tokens:")) for line in lines):
                self.url = up[len(UP_PREFIX) :].split()[0]
                token = next((line for line in lines if line.startswith(TOKEN_PREFIX)), None)
                if token is not None:
                    self.admin_token = token[len(TOKEN_PREFIX) :].strip()
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"up exited with {self.proc.returncode}:\n{self.output()}\n{self.errors()}"
                )
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"up did not finish starting:\n{self.output()}\n{self.errors()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 300) -> int:
        """Signal the foreground supervisor and wait for it; its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    # --- HTTP ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        tenant: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        url: str | None = None,
    ) -> Reply:
        """One call to the public URL (or `url`), with `token` (default: the admin token; ""
        for none)."""
        hdrs = dict(headers or {})
        if tenant is not None:
            hdrs["X-Quipu-Tenant"] = tenant
        token = self.admin_token if token is None else token
        return http_request(
            url or self.url, method, path, body, token=token or None, headers=hdrs, raw=raw, timeout=120
        )

    def healthy(self, url: str) -> bool:
        try:
            return self.request("GET", "/v1/healthz", token="", url=url).status == 200
        except OSError:
            return False

    def wait_healthy(self, url: str, what: str) -> None:
        wait_until(lambda: self.healthy(url), what, timeout=60)
