"""`quipu-cluster grow --add K`: new shards enter shards.json as *pending*; the supervisor
starts them, copies the types and columns onto them, freezes the old active shards and
commits the new generation; `grow` waits for that and prints the new map.

Every read-modify-write of shards.json (here and in the supervisor) holds an flock on
<data_dir>/shards.lock, so a grow and a commit never overwrite each other; readers need no
lock, since the file is replaced by rename. The old shards are frozen *before* the commit:
from the freeze on, a front with the old map gets 409 from the old owner, re-reads the map
and finds the new one once it is committed, so no write lands on an old shard after a
retry of it may have gone to the new one. With no supervisor running, the commit happens
at once and the shards start (empty) on the next `up`, which also freezes the old ones.
"""

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence

from quipu.cluster.config import ClusterConfig, url_address
from quipu.cluster.preflight import port_in_use
from quipu.core.errors import BadInput, Conflict
from quipu.router.shard_map import ShardInfo, ShardMap

GROW_TIMEOUT = 180.0  # how long `grow` waits for a running supervisor to commit


@contextlib.contextmanager
def map_lock(config: ClusterConfig) -> Iterator[None]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(config.shard_map_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_map(config: ClusterConfig) -> ShardMap:
    if not config.shard_map_path.exists():
        raise BadInput(
            f"{config.shard_map_path} does not exist: this cluster was never started; run "
            f"`quipu-cluster up {config.shown}` first"
        )
    return ShardMap.load(config.shard_map_path)


def add_pending(config: ClusterConfig, count: int) -> ShardMap:
    """Record `count` new shards as pending (next ids, next free ports); the new map."""
    if count < 1:
        raise BadInput("--add: expected a positive number of shards")
    load_map(config)  # refused before the lock file is made: a cluster never started stays untouched
    with map_lock(config):
        shard_map = load_map(config)
        if shard_map.pending:
            ids = ", ".join(p.id for p in shard_map.pending)
            raise Conflict(
                f"a grow is already pending ({ids}); a running supervisor applies it, or the next `up` does"
            )
        grown = shard_map.with_pending(next_shards(config, shard_map, count))
        grown.save(config.shard_map_path)
        return grown


def next_shards(config: ClusterConfig, shard_map: ShardMap, count: int) -> list[ShardInfo]:
    """Ids after the highest one; ports after the highest shard port, on its host, skipping
    the router's and ingest's ports and any port something already listens on."""
    existing = [*shard_map.shards.values(), *shard_map.pending]
    numbers = [int(s.id.split("-")[1]) for s in existing]
    width = max(len(s.id.split("-")[1]) for s in existing)
    host, port = max((url_address(s.url) for s in existing), key=lambda a: a[1])
    taken = {url_address(s.url)[1] for s in existing} | {config.router_listen[1], config.ingest_listen[1]}
    new = []
    for n in range(count):
        port += 1
        while port in taken or port_in_use((host, port)):
            port += 1
            if port > 65535:
                raise BadInput("grow: no free port above the highest shard port")
        taken.add(port)
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        new.append(ShardInfo(f"shard-{max(numbers) + 1 + n:0{width}d}", url))
    return new


def commit(config: ClusterConfig, expected: Sequence[ShardInfo]) -> ShardMap | None:
    """Commit the pending shards if they are still `expected` (under the lock); the new
    map, or None when someone else already committed or changed them."""
    with map_lock(config):
        shard_map = load_map(config)
        if tuple(shard_map.pending) != tuple(expected):
            return None
        committed = shard_map.commit_pending(freeze_previous=True)
        committed.save(config.shard_map_path)
        return committed


def wait_for_commit(config: ClusterConfig, pending: Sequence[ShardInfo], alive) -> ShardMap:
    """Poll shards.json until `pending` is committed; Conflict when the supervisor stops
    (`alive()` false) or the timeout passes, with where to look."""
    ids = {p.id for p in pending}
    deadline = time.monotonic() + GROW_TIMEOUT
    while time.monotonic() < deadline:
        shard_map = load_map(config)
        if ids <= set(shard_map.shards) and not ids & {p.id for p in shard_map.pending}:
            return shard_map
        if not alive():
            break
        time.sleep(0.2)
    raise Conflict(
        f"the supervisor has not committed the grow ({', '.join(sorted(ids))} still pending); "
        f"see {config.supervisor_log} or the up terminal; the next `up` applies it"
    )


def describe(shard_map: ShardMap) -> list[str]:
    """The map as `grow` and `status` print it."""
    lines = [f"generation {shard_map.generation} (shards.json sha256 {shard_map.manifest_hash[:16]}..)"]
    for info in shard_map.shards.values():
        state = "frozen" if info.id in shard_map.frozen else "active"
        lines.append(f"  {info.id}  {info.url:<28} {state}")
    lines += [f"  {p.id}  {p.url:<28} pending" for p in shard_map.pending]
    return lines
