"""`POST /v1/cluster/verify`: every shard's integrity, every anchor's signature, every
shard's tree against its last anchored head, and the shard map against the latest anchor.

A tamper is a result (`ok: false` and a problem naming what and where), never an error:

- a record rewritten: the shard's own verify reports it (and its consistency proof fails);
- a shard restored from an older copy, or its store deleted: its tree is smaller than
  anchored ("rolled back or deleted"), or it does not answer;
- a shard rebuilt with other records: no consistency proof from the anchored head holds;
- `shards.json` edited: its hash differs from the one the latest anchor signed;
- the anchors log edited: a line no longer verifies under the router's key.
"""

import asyncio

from quipu.core.errors import Conflict
from quipu.router.anchor import Anchor, Head, latest_heads
from quipu.router.anchoring import shard_head, trusted
from quipu.router.shard_map import ShardInfo, ShardMap
from quipu.router.state import RouterState, expect


async def verify_cluster(state: RouterState) -> dict:
    shard_map = state.map()
    entries = await asyncio.get_running_loop().run_in_executor(None, state.anchors.entries)
    anchors, anchor_problems = trusted(state, entries)
    anchored = latest_heads(anchors)
    results = await state.call_each(
        list(shard_map.shards.values()), lambda s: _verify_shard(state, s, anchored.get(s.id))
    )
    shards = {sid: r if isinstance(r, dict) else _unverified(r) for sid, r in results.items()}
    for sid in sorted(set(anchored) - set(shard_map.shards)):
        shards[sid] = {"ok": False, "problems": [f"{sid} is anchored but missing from the shard map"]}
    map_report = _check_map(shard_map, anchors)
    ok = all(r["ok"] for r in shards.values()) and not anchor_problems and map_report["ok"]
    return {
        "ok": ok,
        "shards": shards,
        "anchors": {"checked": len(entries), "trusted": len(anchors), "problems": anchor_problems},
        "map": map_report,
    }


def _unverified(err: object) -> dict:
    """A shard that did not answer (or refused to verify) is a problem, not a pass."""
    return {"ok": False, "problems": [str(err)], "tree_size": None, "anchored_tree_size": None}


async def _verify_shard(state: RouterState, shard: ShardInfo, anchored: Head | None) -> dict:
    report = expect(await state.call(shard, "POST", "/v1/admin/verify"), shard.id)
    problems = [f"{shard.id}: integrity: {p}" for p in report.get("problems", [])]
    if not report.get("ok", False) and not problems:
        problems.append(f"{shard.id}: its integrity check failed")
    try:
        head = await shard_head(state, shard, anchored)
    except Conflict as err:
        problems.append(str(err))
        head = None
    return {
        "ok": not problems,
        "problems": problems,
        "tree_size": head.tree_size if head else None,
        "anchored_tree_size": anchored.tree_size if anchored else None,
    }


def _check_map(shard_map: ShardMap, anchors: list[Anchor]) -> dict:
    latest = anchors[-1] if anchors else None
    out = {
        "ok": True,
        "manifest_hash": shard_map.manifest_hash,
        "anchored_manifest_hash": latest.manifest_hash if latest else None,
        "problems": [],
    }
    if latest is not None and latest.manifest_hash != shard_map.manifest_hash:
        out["ok"] = False
        out["problems"].append(
            "shards.json differs from the map the latest anchor signed: edited by hand? "
            "(after a grow, the supervisor anchors the new map; anchor again if it did not)"
        )
    return out
