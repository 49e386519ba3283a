"""Signing cross-shard anchors, and checking the shards against them (`verify`).

An anchor never launders a tamper: before a shard's head goes into a new anchor, the
shard must prove (RFC 9162 consistency proof) that its tree extends the head the last
anchor covering it recorded. A shard that cannot (rolled back, rewritten, deleted) or does
not answer is left out, with the reason, and its last good head stays the point it is
checked against. Anchors whose signature does not verify are never trusted as that point.
"""

import asyncio
import logging
import time

import aiohttp

from quipu.core.errors import Conflict, ProofError
from quipu.core.merkle import verify_consistency
from quipu.router.anchor import Anchor, AnchorEntry, Head, latest_heads
from quipu.router.shard_map import ShardInfo, ShardMap
from quipu.router.state import RouterState, expect

log = logging.getLogger("quipu.router")
EXPORT_TIMEOUT_SECS = 10.0


async def shard_head(state: RouterState, shard: ShardInfo, anchored: Head | None) -> Head:
    """The shard's current head, proven to extend `anchored`; Conflict when it does not."""
    head = expect(await state.call(shard, "GET", "/v1/admin/head"), shard.id)
    size = head["tree_size"]
    if anchored is None or anchored.tree_size == 0:
        return Head(shard.id, size, head["merkle_root"])
    if size < anchored.tree_size:
        raise Conflict(
            f"{shard.id}: tree size {size} is below the anchored {anchored.tree_size}: "
            "the shard was rolled back to an older copy or its store was deleted"
        )
    params = {"from": str(anchored.tree_size)}
    proof = expect(await state.call(shard, "GET", "/v1/proof/consistency", params=params), shard.id)
    try:
        path = [bytes.fromhex(h) for h in proof["proof"]]
        first, second = bytes.fromhex(anchored.merkle_root), bytes.fromhex(proof["merkle_root"])
        verify_consistency(anchored.tree_size, proof["second_size"], first, second, path)
    except (ProofError, ValueError, KeyError, TypeError) as err:
        raise Conflict(
            f"{shard.id}: its tree does not extend the anchored head of size {anchored.tree_size} "
            f"(records were rewritten or replaced): {err}"
        ) from err
    return Head(shard.id, proof["second_size"], proof["merkle_root"])


def trusted(state: RouterState, entries: list[AnchorEntry]) -> tuple[list[Anchor], list[str]]:
    """(anchors whose signature verifies, a problem for every line that does not)."""
    good, problems = [], []
    for entry in entries:
        if entry.anchor is None:
            problems.append(entry.problem or f"anchors log line {entry.line_no} is unreadable")
            continue
        public = state.config.anchor.keys.rsa_public(entry.anchor.key_version)
        if public is None:
            problems.append(f"anchors log line {entry.line_no}: signed with unknown key version")
        elif not entry.anchor.signature_valid(public):
            problems.append(f"anchors log line {entry.line_no}: the signature does not verify")
        else:
            good.append(entry.anchor)
    return good, problems


async def sign_anchor(state: RouterState) -> Anchor:
    """Sign, log (fsync) and export one anchor over every shard in the map."""
    loop = asyncio.get_running_loop()
    async with state.anchor_lock:  # one at a time: each builds on the one before
        shard_map: ShardMap = state.map()
        anchors, _ = trusted(state, await loop.run_in_executor(None, state.anchors.entries))
        anchored = latest_heads(anchors)
        results = await state.call_each(
            list(shard_map.shards.values()), lambda s: shard_head(state, s, anchored.get(s.id))
        )
        heads = tuple(r for r in results.values() if isinstance(r, Head))
        omitted = tuple((sid, str(r)) for sid, r in results.items() if not isinstance(r, Head))
        key = state.config.anchor.keys.signing_key()
        unsigned = Anchor(time.time_ns() // 1000, shard_map.manifest_hash, heads, omitted)
        anchor = unsigned.signed_with(key)
        await loop.run_in_executor(None, state.anchors.append, anchor)
    state.metrics.anchors_signed.inc()
    for sid, why in omitted:
        log.error("anchor left out %s: %s", sid, why)
    _export(state, anchor)
    return anchor


def _export(state: RouterState, anchor: Anchor) -> None:
    """Hand the anchor to the hook and the export URL. Best effort by design: the anchor is
    already durable in the log, and an exporter that fails must not stop the next one."""
    if state.export_hook is not None:
        try:
            state.export_hook(anchor)
        except Exception:
            state.metrics.export_failures.inc()
            log.exception("the anchor export hook failed")
    url = state.config.anchor.export_url
    if url is not None and state.export_session is not None:
        task = asyncio.create_task(_post(state, state.export_session, url, anchor))
        state.background.add(task)
        task.add_done_callback(state.background.discard)


async def _post(state: RouterState, session: aiohttp.ClientSession, url: str, anchor: Anchor) -> None:
    try:
        async with session.post(url, json=anchor.to_json()) as response:
            if response.status >= 300:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
    except (TimeoutError, aiohttp.ClientError) as err:
        state.metrics.export_failures.inc()
        log.warning("anchor export to the export_url failed: %s", type(err).__name__)


async def periodic_anchors(state: RouterState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sign_anchor(state)
        except Exception:  # a signing or disk error: log it and try again next interval
            state.metrics.anchor_failures.inc()
            log.exception("periodic anchor failed")
