"""What the supervisor asks of shards with the cluster token: flush, freeze, and copying the
entity types and custom columns onto shards that lack them.

A shard a grow adds starts with only the default types; an event of a type its shard does
not know parks in the dead-letter queue. So before a new shard takes writes it gets every
type and column the older shards have. The same copy runs on every `up`, which also
covers a grow committed while no supervisor ran.
"""

import logging
from collections.abc import Sequence

from quipu.cluster.http_client import Reply, Unreachable, call
from quipu.core.errors import QuipuError
from quipu.router.shard_map import ShardInfo

log = logging.getLogger("quipu.cluster")
FLUSH_TIMEOUT = 120.0  # a flush waits for the shard's queue to drain


class ShardRefused(QuipuError):
    """A shard answered an admin call with an error."""


def _checked(shard: ShardInfo, reply: Reply, what: str) -> Reply:
    if reply.status >= 300:
        raise ShardRefused(f"{shard.id} refused {what} ({reply.error_text()})")
    return reply


def flush(shard: ShardInfo, token: str) -> None:
    reply = call(shard.url, "POST", "/v1/admin/flush", token=token, timeout=FLUSH_TIMEOUT)
    _checked(shard, reply, "the flush")


def freeze(shard: ShardInfo, token: str) -> None:
    """POST /v1/admin/freeze: persistent on the shard, so repeating it is harmless."""
    _checked(shard, call(shard.url, "POST", "/v1/admin/freeze", token=token), "the freeze")


def sync_schema(shards: Sequence[ShardInfo], token: str) -> int:
    """Define on each shard the types (by name, the oldest shard's version) and columns it
    lacks or holds differently; returns how many definitions were sent. Oldest first, since
    every type was defined on the first shards first."""
    sent = 0
    for path, key in (("/v1/types", "type_name"), ("/v1/columns", "name")):
        held: dict[str, dict[str, object]] = {}
        for shard in shards:
            defs = _definitions(shard, path, key, token)
            if defs is None:
                break  # a shard that cannot list them: nothing is copied rather than a guess
            held[shard.id] = defs
        if len(held) < len(shards):
            continue
        wanted: dict[str, object] = {}
        for defs in held.values():
            for name, body in defs.items():
                wanted.setdefault(name, body)
        for shard in shards:
            for name, body in wanted.items():
                if held[shard.id].get(name) != body:
                    _checked(shard, call(shard.url, "POST", path, token=token, body=body), f"{path} {name}")
                    sent += 1
    return sent


def _definitions(shard: ShardInfo, path: str, key: str, token: str) -> dict[str, object] | None:
    try:
        reply = call(shard.url, "GET", path, token=token)
    except Unreachable as err:
        raise ShardRefused(f"{shard.id} did not list {path} ({err})") from err
    if reply.status in (404, 405):
        log.warning("%s does not list %s (GET answered %d); not copied", shard.id, path, reply.status)
        return None
    body = _checked(shard, reply, f"GET {path}").json()
    if isinstance(body, dict):  # {"columns": [...]} or {"types": [...]}
        body = next((v for v in body.values() if isinstance(v, list)), [])
    return {item[key]: item for item in body if isinstance(item, dict) and key in item}
