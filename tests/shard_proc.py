"""A real shard process on loopback for tests: config and keys written to a temp dir,
`quipu shard serve` started as a child, its printed URL read back.

    with ShardProcess.start(tmp_path) as shard:
        shard.post("/v1/logs", body, token=shard.tokens["service"])
"""

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quipu.cluster.process_config import CLUSTER_GRANTS, CLUSTER_ROLE
from quipu.core.schema import default_actor_type, default_target_type
from quipu.shard.auth import token_digest

ROLES = {
    "admin": ["emit", "query", "administer"],
    "auditor": ["query"],
    "service": ["emit"],
    "nobody": [],
}
READY_PREFIX = "quipu shard listening on "
START_TIMEOUT = 30.0


def write_keys(directory: Path) -> dict:
    """An HMAC secret and a 2048-bit RSA pair, as the `keys` section of a shard config (or of
    a cluster.yaml, which takes the same three files)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hmac.key").write_bytes(secrets.token_bytes(32))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "rsa.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / "rsa.pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {
        "hmac_key_file": str(directory / "hmac.key"),
        "public_key_pem_file": str(directory / "rsa.pub.pem"),
        "private_key_pem_file": str(directory / "rsa.pem"),
    }


def shard_config(base: Path, tokens: dict[str, str], **sections: object) -> dict:
    """A complete config: one token per role in ROLES (plus `expired`), keys, a store under
    `base`. Keyword arguments replace or add whole sections."""
    config: dict = {
        "listen": "127.0.0.1:0",
        "store": {"root": str(base / "store"), "access_log": True},
        "keys": write_keys(base / "keys"),
        "auth": {
            "tokens": {token_digest(tokens[role]): role for role in ROLES},
            "grants": ROLES,
            "max_concurrent_queries": 4,
        },
        "limits": {"max_body_bytes": 256 * 1024},
    }
    config["auth"]["tokens"][token_digest(tokens["expired"])] = {
        "role": "admin",
        "expires": "2001-01-01T00:00:00Z",
    }
    config.update(sections)
    return config


def start_process(
    command: list[str], log_path: Path, *, ready_prefix: str = READY_PREFIX, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start `command` (stderr appended to `log_path`) and wait for the `ready_prefix` + URL
    line that `quipu shard|router|ingest serve` print once bound: the process and that URL.
    The URL says which port a `listen` of port 0 got. A process that exits or stays silent
    for START_TIMEOUT is stopped and the error carries its log."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=open(log_path, "ab"),  # noqa: SIM115 - the child owns it
        text=True,
        env=env,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(ready_prefix):
            return proc, line[len(ready_prefix) :].strip()
        if not line and proc.poll() is not None:
            break
    stop_process(proc)
    name = ready_prefix.removesuffix(" listening on ")
    raise RuntimeError(f"{name} did not start; log:\n{log_path.read_text(errors='replace')}")


def stop_process(proc: subprocess.Popen) -> int:
    """SIGTERM, so the process drains and flushes, and wait; SIGKILL if that takes over 30 s.
    Its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    data: bytes

    def json(self) -> object:
        return json.loads(self.data)

    def header(self, name: str) -> str | None:
        """A response header by case-insensitive name."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def error(self, status: int) -> str:
        """Check for `status` with a JSON `{"error": "<text>"}` body; returns the text."""
        assert self.status == status, (self.status, self.data[:300])
        assert (self.header("Content-Type") or "").startswith("application/json"), self.headers
        body = self.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert isinstance(body["error"], str) and body["error"], body
        return body["error"]


def http_request(
    url: str,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 60,
) -> Reply:
    """One HTTP request on a fresh connection (so SO_REUSEPORT spreads them over workers):
    `body` sent as JSON unless `raw` bytes are given, `token` as a bearer token."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return Reply(r.status, dict(r.getheaders()), r.read())
    finally:
        conn.close()


@dataclass
class ShardProcess:
    base: Path
    config: dict
    tokens: dict[str, str]
    proc: subprocess.Popen | None = None
    url: str = ""

    @classmethod
    def start(cls, base: Path, **sections: object) -> "ShardProcess":
        shard = cls.prepare(base, **sections)
        shard.launch()
        return shard

    @classmethod
    def prepare(cls, base: Path, **sections: object) -> "ShardProcess":
        """Config and keys written, no process yet: adjust `config` (e.g. `add_token`), then
        `write_config()` and `launch()`."""
        tokens = {role: f"tok-{role}-{secrets.token_hex(8)}" for role in [*ROLES, "expired"]}
        shard = cls(base, shard_config(base, tokens, **sections), tokens)
        shard.write_config()
        return shard

    def add_token(self, name: str, entry: str | dict = "admin") -> str:
        """A new token `tokens[name]` with a config entry (a role, or {role, tenant, expires});
        takes effect after `write_config()` and a launch or SIGHUP."""
        token = f"tok-{name}-{secrets.token_hex(8)}"
        self.tokens[name] = token
        self.config["auth"]["tokens"][token_digest(token)] = entry
        return token

    def remove_token(self, name: str) -> None:
        """Drop `tokens[name]` from the config (the token string stays in `tokens`)."""
        del self.config["auth"]["tokens"][token_digest(self.tokens[name])]

    @property
    def config_path(self) -> Path:
        return self.base / "shard.yaml"

    def write_config(self) -> None:
        tmp = self.base / "shard.yaml.tmp"
        tmp.write_text(yaml.safe_dump(self.config))
        os.replace(tmp, self.config_path)

    @property
    def log_path(self) -> Path:
        return self.base / "shard.log"

    def launch(self) -> None:
        """Start the process and wait for its 'listening on' line (the bound port)."""
        command = [sys.executable, "-m", "quipu.cli.main", "shard", "serve", str(self.config_path)]
        self.proc, self.url = start_process(command, self.log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        role: str | None = "admin",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> "Reply":
        token = token if token is not None else (self.tokens[role] if role else None)
        return http_request(self.url, method, path, body, token=token, headers=headers, raw=raw)

    def json(self, method: str, path: str, body: object = None, **kw: object) -> tuple[int, object]:
        r = self.request(method, path, body, **kw)
        return r.status, (json.loads(r.data) if r.data else None)

    def flush(self) -> None:
        """POST /v1/admin/flush: everything accepted so far is written and durable."""
        r = self.request("POST", "/v1/admin/flush")
        if r.status != 204:
            raise AssertionError(f"flush answered {r.status}: {r.data!r}")

    def count(self, query: dict | None = None, **kw: object) -> int:
        """POST /v1/logs/count with `query` (default: everything)."""
        status, body = self.json("POST", "/v1/logs/count", query or {}, **kw)
        if status != 200:
            raise AssertionError(f"count answered {status}: {body!r}")
        return body["count"]

    def export(self, query: dict, **kw: object) -> list[dict]:
        """POST /v1/logs/export, one parsed LogView per NDJSON line."""
        r = self.request("POST", "/v1/logs/export", query, **kw)
        if r.status != 200 or not (r.header("Content-Type") or "").startswith("application/x-ndjson"):
            raise AssertionError(f"export answered {r.status} {r.header('Content-Type')}: {r.data[:300]!r}")
        if r.data and not r.data.endswith(b"\n"):
            raise AssertionError("the export's last line is cut off")
        return [json.loads(line) for line in r.data.splitlines()]

    def kill(self) -> None:
        """SIGKILL: no flush, no cleanup (what a crash looks like)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.launch()

    def __enter__(self) -> "ShardProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_shard(
    base: Path, cluster_token: str, entries: dict[str, object] | None = None, **auth: object
) -> ShardProcess:
    """A started shard that also takes the cluster token as the supervisor configures it
    (CLUSTER_ROLE, tenant *, every action) and `entries` (token -> config entry); `auth`
    replaces keys of its auth section.
    Its port is then pinned in its config, so a restart keeps the URL the shard map names."""
    shard = ShardProcess.prepare(base)
    section = shard.config["auth"]
    section["tokens"][token_digest(cluster_token)] = {"role": CLUSTER_ROLE, "tenant": "*"}
    shard.tokens[CLUSTER_ROLE] = cluster_token
    for token, entry in (entries or {}).items():
        section["tokens"][token_digest(token)] = entry
    section["grants"][CLUSTER_ROLE] = CLUSTER_GRANTS
    section.update(auth)
    shard.write_config()
    shard.launch()
    shard.config["listen"] = urlsplit(shard.url).netloc
    shard.write_config()
    return shard


def append_request(
    actor_id: str,
    *,
    actor_type: str = "default_actor",
    method: str = "PUT",
    url: str = "/api/docs/1",
    content: str = "saved",
    targets: list[tuple[str, str, str]] = (),
    occurred_at: int | None = None,
    custom: dict | None = None,
) -> dict:
    """A v1 AppendRequest body; `targets` are (entity_type, entity_id, name) triples."""
    body: dict = {
        "actor_type": actor_type,
        "actor": {"entity_id": actor_id, "fields": {"name": {"Text": f"actor {actor_id}"}}},
        "method": method,
        "url": url,
        "content": {"Text": content},
        "targets": [
            {"entity_type": t, "input": {"entity_id": eid, "fields": {"name": {"Text": name}}}}
            for t, eid, name in targets
        ],
    }
    if occurred_at is not None:
        body["occurred_at"] = occurred_at
    if custom is not None:
        body["custom"] = custom
    return body


def define_types(shard: ShardProcess, *schemas: dict) -> None:
    """POST /v1/types for each TypeSchema JSON (default_actor and default_target if none)."""
    if not schemas:
        schemas = (default_actor_type().to_json(), default_target_type().to_json())
    for schema in schemas:
        r = shard.request("POST", "/v1/types", schema)
        if r.status != 204:
            raise AssertionError(f"defining {schema['type_name']} answered {r.status}: {r.data!r}")


def actor_query(actor_id: str, actor_type: str = "default_actor", **more: object) -> dict:
    """A LogQuery for the rows of one actor (tests keep apart by writing as their own actor)."""
    return {"actor_type": actor_type, "actor_id": actor_id, **more}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll `check` until true; fail after `timeout` seconds (a bound, never a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    if not check():
        raise AssertionError(f"not within {timeout}s: {what}")
