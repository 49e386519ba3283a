"""Writes: to the shard that owns the tenant now, with the event's Idempotency-Key, after
asking the shards that owned the tenant before whether they already hold the key.

Why the look-up: a client retries a write whose answer it never saw. Before a grow that
retry reaches the same shard, whose duplicate window catches it. After a grow the tenant's
writes go to a new shard, which never saw the key; the old owner (now frozen) did. So a
tenant with previous owners has each asked `POST /v1/idempotency/lookup` first, and a key
one of them knows is answered `duplicate` without a write. A previous owner that does not
answer makes the write wait (503/retry): recording it might record it twice.

Why a second try: a front reads the map at most every 0.2 s, and the supervisor freezes the
old shards before it commits the new map. A shard answering 409 "frozen" therefore means
"your map is old or about to be": the map is re-read at once and the write tried once more
on the new owner (with the look-up, now including the frozen shard). If the map has not
changed yet, the caller gets 503 + Retry-After and retries with the same key.
"""

import asyncio
import logging

import orjson
from aiohttp import web

from quipu.core.errors import Overloaded, QuipuError
from quipu.ingest.batch import BatchResults, KeyedBatch
from quipu.ingest.state import IngestState
from quipu.router.shard_client import CLUSTER_TOKEN_ENV, ShardClient, ShardDown, ShardReply
from quipu.router.shard_map import ShardInfo
from quipu.shard.api import IDEMPOTENCY_HEADER
from quipu.shard.batch import MAX_BATCH_EVENTS
from quipu.shard.http_edge import RETRY_AFTER_SECONDS, json_response
from quipu.shard.pipeline import FROZEN_MESSAGE

log = logging.getLogger("quipu.ingest")
LOOKUP_PATH = "/v1/idempotency/lookup"
BATCH_PATH = "/v1/logs/batch"
FROZEN_PREFIX = FROZEN_MESSAGE.partition(":")[0]  # how a frozen shard's 409 error starts
JSON_BODY = {"Content-Type": "application/json"}


async def write_one(state: IngestState, tenant: str, key: str, body: bytes) -> web.Response:
    """POST /v1/logs for one event: the owner's answer, passed through (202, the shard's
    4xx), `duplicate` when a previous owner holds the key, 503 when the owner is down."""
    tried: ShardInfo | None = None
    for fresh in (False, True):
        shard_map = state.maps.current(fresh=fresh)
        owner = shard_map.route_write(tenant)
        if tried is not None and owner.id == tried.id:
            break  # the map has not changed yet: the caller retries later
        tried = owner
        if key in await known_keys(state.shards, shard_map.previous_owners(tenant), tenant, [key]):
            return _with_key(json_response({"status": "duplicate"}, 202), key)
        headers = {IDEMPOTENCY_HEADER: key, **JSON_BODY}
        reply = await state.shards.call(owner, "POST", "/v1/logs", tenant=tenant, body=body, headers=headers)
        if not is_frozen(reply):
            return _with_key(relay(reply, owner), key)
    raise _still_frozen(tried)


async def write_batch(state: IngestState, tenant: str, batch: KeyedBatch) -> web.Response:
    """POST /v1/logs/batch: keys a previous owner knows answer `duplicate` here, the rest go
    to the owner in one call (split only if the shard finds the body too large); per-event
    results in the caller's order. A shard that is down makes its events `retry`."""
    results = BatchResults(batch.keys)
    todo = list(range(len(batch.items)))
    tried: ShardInfo | None = None
    for fresh in (False, True):
        shard_map = state.maps.current(fresh=fresh)
        owner = shard_map.route_write(tenant)
        if tried is not None and owner.id == tried.id:
            break
        tried = owner
        try:
            known = await known_keys(
                state.shards, shard_map.previous_owners(tenant), tenant, [batch.keys[i] for i in todo]
            )
        except ShardDown as err:
            results.mark(todo, "retry", str(err))
            return results.response()
        results.mark([i for i in todo if batch.keys[i] in known], "duplicate")
        todo = [i for i in todo if batch.keys[i] not in known]
        todo = await _send_batch(state.shards, owner, tenant, batch, todo, results) if todo else []
        if not todo:
            return results.response()
    results.mark(todo, "retry", str(_still_frozen(tried)))
    return results.response()


async def _send_batch(
    client: ShardClient,
    owner: ShardInfo,
    tenant: str,
    batch: KeyedBatch,
    todo: list[int],
    results: BatchResults,
) -> list[int]:
    """Send the events `todo` to `owner`, fill their results; returns those it refused as
    frozen. A body the shard finds too large (its limit can be lower than ours, and added
    keys make a batch longer) is sent again in halves."""
    body = orjson.dumps(batch.body(todo))
    try:
        reply = await client.call(owner, "POST", BATCH_PATH, tenant=tenant, body=body, headers=JSON_BODY)
    except ShardDown as err:
        results.mark(todo, "retry", str(err))
        return []
    if reply.status == 413 and len(todo) > 1:
        half = len(todo) // 2
        first = await _send_batch(client, owner, tenant, batch, todo[:half], results)
        return first + await _send_batch(client, owner, tenant, batch, todo[half:], results)
    if is_frozen(reply):
        return todo
    per_event = _batch_results(reply, len(todo))
    if per_event is not None:
        results.fill(todo, per_event)
        return []
    _refuse_bad_cluster_token(reply, owner)
    retry = reply.status >= 500 or reply.status == 429
    results.mark(todo, "retry" if retry else "rejected", error_text(reply, owner))
    return []


def _batch_results(reply: ShardReply, count: int) -> list[dict] | None:
    """The shard's per-event results (its 202, or its 503 when all are to be retried)."""
    if reply.status not in (202, 503):
        return None
    body = _json(reply)
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return None
    return results if all(isinstance(r, dict) for r in results) else None


async def known_keys(
    client: ShardClient, shards: list[ShardInfo], tenant: str, keys: list[str | None]
) -> set[str]:
    """The keys any of `shards` has recorded or queued for the tenant (one call per shard
    per 10,000 keys, the shards asked at once). ShardDown if one cannot answer."""
    wanted = sorted({k for k in keys if k is not None})
    if not shards or not wanted:
        return set()
    chunks = [wanted[i : i + MAX_BATCH_EVENTS] for i in range(0, len(wanted), MAX_BATCH_EVENTS)]
    # Every answer awaited (return_exceptions): a shard that is down costs one error, and
    # no look-up is left running unobserved behind it.
    answers = await asyncio.gather(
        *(_lookup(client, s, tenant, chunk) for s in shards for chunk in chunks), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return set().union(*answers)


async def _lookup(client: ShardClient, shard: ShardInfo, tenant: str, keys: list[str]) -> set[str]:
    reply = await client.call(shard, "POST", LOOKUP_PATH, tenant=tenant, json={"keys": keys})
    body = _json(reply) if reply.status == 200 else None
    known = body.get("known") if isinstance(body, dict) else None
    if not isinstance(known, list):
        _refuse_bad_cluster_token(reply, shard)
        log.error("%s answered the idempotency look-up with %d", shard.id, reply.status)
        raise ShardDown(shard, f"idempotency look-up answered {reply.status}")
    return {k for k in known if isinstance(k, str)}


def is_frozen(reply: ShardReply) -> bool:
    if reply.status != 409:
        return False
    body = _json(reply)
    return isinstance(body, dict) and str(body.get("error", "")).startswith(FROZEN_PREFIX)


def relay(reply: ShardReply, shard: ShardInfo) -> web.Response:
    """The shard's answer to one write, for the caller: as it is (202, a 4xx that judges the
    event, 507), except what is about the cluster rather than the caller's request."""
    _refuse_bad_cluster_token(reply, shard)
    if reply.status in (502, 504):  # a proxy in front of the shard could not reach it
        raise ShardDown(shard, f"answered {reply.status}")
    headers = {"Content-Type": reply.headers.get("Content-Type", "application/json")}
    if reply.status in (429, 503):
        headers["Retry-After"] = reply.headers.get("Retry-After", RETRY_AFTER_SECONDS)
    return web.Response(body=reply.body, status=reply.status, headers=headers)


def _refuse_bad_cluster_token(reply: ShardReply, shard: ShardInfo) -> None:
    """A shard's 401/403 to the front is about the cluster token, not the caller's: passing
    it on would tell a caller with a good token that its token is bad."""
    if reply.status in (401, 403):
        raise QuipuError(
            f"{shard.id} refused the cluster token ({reply.status}); check {CLUSTER_TOKEN_ENV} "
            "and the shard's auth.tokens and grants (role cluster: emit, query, administer)"
        )


def error_text(reply: ShardReply, shard: ShardInfo) -> str:
    body = _json(reply)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return f"{shard.id} answered {reply.status}"


def _json(reply: ShardReply) -> object:
    try:
        return reply.json()
    except orjson.JSONDecodeError:
        return None


def _with_key(response: web.Response, key: str) -> web.Response:
    """Every write answer names its key, so a caller that sent none can retry with it."""
    response.headers[IDEMPOTENCY_HEADER] = key
    return response


def _still_frozen(shard: ShardInfo | None) -> Overloaded:
    name = shard.id if shard is not None else "the tenant's shard"
    return Overloaded(
        f"{name} is frozen and the new shard map is not in place yet (a grow is under way); retry"
    )
