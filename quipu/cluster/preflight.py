"""Checks `up` makes before it starts or writes anything: ports free, stores not held.

A port in use or a store held by another process would otherwise surface as one child
failing after the others started, with the reason in its log. Checked first, each is one
line naming the process and the key, and a refused `up` changes nothing. A check cannot
rule out a race (another process may take the port a moment later); the supervisor still
reports a child that fails at start by its own last error line.
"""

import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from quipu.cluster.config import ClusterConfig, url_address
from quipu.core.errors import BadInput, StoreLocked
from quipu.core.lock import LOCK_NAME
from quipu.router.shard_map import ShardMap


@dataclass(frozen=True)
class Listener:
    name: str  # "shard-0001", "router", "ingest"
    address: tuple[str, int]
    where: str  # the key that sets it: "shards[1].url", or "shard-0004 in data/shards.json"


def listeners(config: ClusterConfig, shard_map: ShardMap) -> list[Listener]:
    """Every address this host's processes will bind: the map's shards (grown ones too)."""
    where = {entry.info.id: f"{entry.where}.url" for entry in config.shards}
    found = [
        Listener(info.id, url_address(info.url), where.get(info.id, f"{info.id} in {config.shard_map_path}"))
        for info in [*shard_map.shards.values(), *shard_map.pending]
    ]
    found.append(Listener("router", config.router_listen, "router.listen"))
    found.append(Listener("ingest", config.ingest_listen, "ingest.listen"))
    return found


def port_in_use(address: tuple[str, int]) -> bool:
    """True when binding the address fails because something listens on it. With
    SO_REUSEADDR, as the children bind: connections of a stopped cluster still in TIME_WAIT
    do not count as in use (they would not stop the child either)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            if err.errno == errno.EADDRNOTAVAIL:
                raise BadInput(
                    f"{host}:{port}: {host} is not an address of this machine; every process of "
                    "cluster.yaml runs on this host"
                ) from err
            raise
    return False


def check_ports(config: ClusterConfig, shard_map: ShardMap) -> None:
    for listener in listeners(config, shard_map):
        try:
            busy = port_in_use(listener.address)
        except BadInput as err:
            raise BadInput(f"{config.shown}: {listener.where}: {err}") from err
        if busy:
            host, port = listener.address
            raise BadInput(
                f"{config.shown}: {listener.where}: port {port} on {host} is in use by another "
                f"process (wanted by {listener.name}); stop it or choose another port"
            )


def check_store_locks(config: ClusterConfig, shard_map: ShardMap) -> None:
    """StoreLocked (the shard's own message) for a store another process holds. Only an
    existing LOCK file is opened, so a first `up` creates nothing here."""
    for shard_id in [*shard_map.shards, *(p.id for p in shard_map.pending)]:
        root = config.shard_root(shard_id)
        held_by = store_holder(root)
        if held_by is not False:
            raise StoreLocked(str(root), held_by)


def store_holder(root: Path) -> int | bool | None:
    """False when nobody holds the store; else the holder's pid as its LOCK records it
    (None when unreadable)."""
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
