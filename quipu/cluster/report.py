"""`status`, `verify` and `anchor`: the router's /v1/cluster/* endpoints, rendered for a
terminal.

They authenticate with the admin token in QUIPU_TOKEN (never an argument: argv is visible
to every user of the machine in the process list). `status` still prints what it can see
locally (pids, each process's health) when the router does not answer, and then exits
non-zero.
"""

import json
import os
from collections.abc import Mapping

from quipu.cluster.config import ClusterConfig
from quipu.cluster.daemon import running_supervisor
from quipu.cluster.grow import load_map
from quipu.cluster.http_client import Reply, Unreachable, call, healthy
from quipu.core.audit_store import rfc3339
from quipu.core.errors import BadInput, QuipuError

TOKEN_ENV = "QUIPU_TOKEN"
COLUMNS = ("SHARD", "STATE", "PID", "HEALTH", "RECORDS", "TREE SIZE", "QUEUE", "DLQ")


class RouterRefused(QuipuError):
    """The router answered a cluster call with an error."""


def admin_token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise BadInput(
            f"set {TOKEN_ENV} to an admin token: the first `up` printed one, and "
            "`quipu-cluster token --tenant '*' --role admin` issues another"
        )
    return token


def _router(config: ClusterConfig, method: str, path: str, timeout: float = 120.0) -> object:
    reply = call(config.router_url, method, path, token=admin_token(), timeout=timeout)
    return _answer(reply, path)


def _answer(reply: Reply, path: str) -> object:
    if reply.status >= 300:
        raise RouterRefused(f"the router refused {path} ({reply.error_text()})")
    return reply.json()


# --- status --------------------------------------------------------------------------------


def status(config: ClusterConfig) -> tuple[list[str], bool]:
    """The table and whether everything is healthy."""
    token = admin_token()
    pids = _pids(config)
    supervisor = running_supervisor(config)
    who = f"pid {supervisor}" if supervisor else "not running"
    lines = [f"supervisor: {who}; public URL {config.public_url}"]
    try:
        body = _answer(
            call(config.router_url, "GET", "/v1/cluster/status", token=token), "/v1/cluster/status"
        )
        shards, ok = _shard_rows(body, pids), True
        lines += _map_line(body)
    except Unreachable:
        lines.append("router: not reachable; showing what this host sees")
        shards, ok = _local_rows(config, pids), False
    rows = [COLUMNS, *shards]
    for name, pid in pids.items():
        if not name.startswith("shard-"):
            url = config.router_url if name == "router" else config.public_url
            up = healthy(url)
            ok = ok and up and pid is not None
            rows.append((name, "-", _text(pid), "ok" if up else "down", "", "", "", ""))
    ok = ok and all(row[3] in ("ok", "degraded") for row in shards)
    return [*lines, *_table(rows)], ok


def _map_line(body: object) -> list[str]:
    if not isinstance(body, dict) or "generation" not in body:
        return []
    pending = [p.get("id") for p in body.get("pending") or [] if isinstance(p, dict)]
    grow = f"; grow under way: {', '.join(map(str, pending))} pending" if pending else ""
    return [f"generation {body['generation']}{grow}"]


def _pids(config: ClusterConfig) -> dict[str, int | None]:
    try:
        return dict(json.loads(config.pids_file.read_text())["processes"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _shard_rows(body: object, pids: Mapping[str, int | None]) -> list[tuple[str, ...]]:
    shards = body.get("shards", []) if isinstance(body, dict) else []
    if isinstance(shards, dict):
        shards = [{"id": key, **value} for key, value in shards.items()]
    rows = []
    for shard in shards:
        state = shard.get("state") or ("frozen" if shard.get("frozen") else "active")
        health = shard.get("health")
        if isinstance(health, dict):
            health = health.get("status")
        rows.append(
            (
                str(shard.get("id")),
                str(state),
                _text(pids.get(shard.get("id"))),
                _text(health or ("down" if shard.get("error") else None)),
                *(_text(shard.get(key)) for key in ("records", "tree_size", "queue_depth", "dlq")),
            )
        )
    return rows


def _local_rows(config: ClusterConfig, pids: Mapping[str, int | None]) -> list[tuple[str, ...]]:
    shard_map = load_map(config)
    return [
        (
            info.id,
            "frozen" if info.id in shard_map.frozen else "active",
            _text(pids.get(info.id)),
            "ok" if healthy(info.url) else "down",
            *("?" * 4),
        )
        for info in shard_map.shards.values()
    ]


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


# --- verify and anchor ---------------------------------------------------------------------


def verify(config: ClusterConfig) -> tuple[list[str], bool]:
    """The router's cluster verify, one line per shard and per problem."""
    body = _router(config, "POST", "/v1/cluster/verify", timeout=600.0)
    if not isinstance(body, dict):
        raise RouterRefused("the router's verify answer is not an object")
    lines = []
    for shard_id, result in sorted((body.get("shards") or {}).items()):
        lines += _section(shard_id, result)
    lines += _section("anchors", body.get("anchors") or {}, detail=_anchor_count(body.get("anchors")))
    lines += _section("shard map", body.get("map") or {})
    ok = body.get("ok") is True
    lines.append("verify: OK, no problem found" if ok else "verify: PROBLEMS FOUND (see above)")
    return lines, ok


def _section(name: str, result: object, detail: str = "") -> list[str]:
    problems = result.get("problems", []) if isinstance(result, dict) else []
    ok = isinstance(result, dict) and result.get("ok", not problems) and not problems
    lines = [f"{name}: {'ok' if ok else 'PROBLEM'}{detail}"]
    lines += [f"  - {_problem(p)}" for p in problems]
    return lines


def _anchor_count(anchors: object) -> str:
    if isinstance(anchors, dict) and isinstance(anchors.get("checked"), int):
        return f" ({anchors['checked']} checked)"
    return ""


def _problem(problem: object) -> str:
    if isinstance(problem, str):
        return problem
    if isinstance(problem, dict):
        text = problem.get("message") or problem.get("problem") or problem.get("error")
        if isinstance(text, str):
            rest = {k: v for k, v in problem.items() if k not in ("message", "problem", "error")}
            return f"{text} {json.dumps(rest, sort_keys=True)}" if rest else text
    return json.dumps(problem, sort_keys=True)


def anchor(config: ClusterConfig) -> list[str]:
    body = _router(config, "POST", "/v1/cluster/anchor")
    if not isinstance(body, dict):
        raise RouterRefused("the router's anchor answer is not an object")
    signed_at = body.get("signed_at")
    when = rfc3339(signed_at) if isinstance(signed_at, int) else signed_at
    lines = [
        f"anchor signed at {when} (key version {body.get('key_version')})",
        f"shards.json sha256 {body.get('manifest_hash')}",
    ]
    rows = [("SHARD", "TREE SIZE", "MERKLE ROOT")]
    rows += [
        (str(h.get("shard")), str(h.get("tree_size")), str(h.get("merkle_root")))
        for h in body.get("heads", [])
    ]
    lines += _table(rows)
    for omitted in body.get("omitted", []) or []:
        lines.append(f"not covered: {json.dumps(omitted)}")
    return lines
