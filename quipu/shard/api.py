"""The v1 HTTP API of one shard (reference/quipu-server-v1-openapi.json, plus the batch,
count, access-query and metrics endpoints). Handlers parse, call one pipeline-handle method,
render; store calls that read or scan run on the thread pool, never on the event loop.

Tenant-bound tokens read only their own tenant's rows. The registry (entity lists and
histories) and proofs are per shard, not per tenant, so those paths refuse a tenant-bound
token rather than risk showing another tenant's entities.
"""

import asyncio
import dataclasses
import functools
import re
from collections.abc import Callable
from typing import TypeVar

import orjson
from aiohttp import web

from quipu.core.errors import BadInput, Forbidden, Overloaded, QuipuError
from quipu.core.event import AuditEvent, validate_idempotency_key
from quipu.core.query_spec import MAX_LIMIT, AccessQuery, LogQuery
from quipu.core.schema import ColumnDef, TypeSchema, validate_type_name
from quipu.shard.batch import BATCH_KEY_FIELD, parse_batch
from quipu.shard.http_edge import error_status, json_response, read_json
from quipu.shard.metrics import render_prometheus
from quipu.shard.permissions import Action
from quipu.shard.state import (
    ANY_TENANT,
    SHARD,
    ShardState,
    check_query_param,
    request_tenant,
    require_tenant_match,
)

routes = web.RouteTableDef()
T = TypeVar("T")
NEXT_CURSOR_HEADER = "X-Quipu-Next-Cursor"
SNAPSHOT_HEADER = "X-Quipu-Snapshot"  # the tree size a page is pinned to: a router merges by it
IDEMPOTENCY_HEADER = "Idempotency-Key"
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() also takes "²"
EXPORT_PAGE = 500
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def shard_state(request: web.Request) -> ShardState:
    return request.app[SHARD]


async def off_loop(fn: Callable[[], T]) -> T:
    """Run a store call on the default thread pool: scans and fsyncs must not stall the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _unbound_only(principal) -> None:
    if principal.tenant not in (None, ANY_TENANT):
        raise Forbidden("this path is per shard, not per tenant: a tenant-bound token may not use it")


# --- writing ----------------------------------------------------------------------------


@routes.post("/v1/logs")
async def append_log(request: web.Request) -> web.Response:
    handle, principal = shard_state(request).handle(request, Action.EMIT)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        validate_idempotency_key(key, IDEMPOTENCY_HEADER)
    event = AuditEvent.from_json(await read_json(request), request_tenant(request, principal), key)
    return json_response({"status": handle.emit(event)}, 202)


@routes.post("/v1/logs/batch")
async def append_batch(request: web.Request) -> web.Response:
    """A JSON array or NDJSON of AppendRequests, each optionally with `idempotency_key`.
    Every event gets its own outcome; one bad event does not refuse the others."""
    handle, principal = shard_state(request).handle(request, Action.EMIT)
    tenant = request_tenant(request, principal)
    items = parse_batch(await request.read())
    events: list[AuditEvent | None] = []
    results: list[dict] = []
    for i, item in enumerate(items):
        try:
            events.append(_batch_event(item, tenant))
            results.append({"index": i})
        except BadInput as err:
            events.append(None)
            results.append({"index": i, "status": "rejected", "error": str(err)})
    accepted = [e for e in events if e is not None]
    outcomes = iter(handle.emit_many(accepted) if accepted else [])
    for event, result in zip(events, results, strict=True):
        if event is not None:
            _batch_outcome(result, next(outcomes))
    status = 503 if accepted and all(r["status"] == "retry" for r in results) else 202
    counts = {s: sum(r["status"] == s for r in results) for s in ("queued", "duplicate", "rejected", "retry")}
    return json_response({"results": results, **counts}, status)


def _batch_event(item: object, tenant: str | None) -> AuditEvent:
    if not isinstance(item, dict):
        raise BadInput("each batch item must be a JSON object (an AppendRequest)")
    item = dict(item)
    key = item.pop(BATCH_KEY_FIELD, None)
    if key is not None:
        validate_idempotency_key(key, BATCH_KEY_FIELD)
    return AuditEvent.from_json(item, tenant, key)


def _batch_outcome(result: dict, outcome: str | QuipuError) -> None:
    if isinstance(outcome, str):
        result["status"] = outcome
    else:
        retry = isinstance(outcome, Overloaded) or error_status(outcome) >= 500
        result["status"] = "retry" if retry else "rejected"
        result["error"] = str(outcome)


# --- reading ----------------------------------------------------------------------------


def _read_query(body: object, tenant: str | None) -> LogQuery:
    q = LogQuery.from_json(body)
    return dataclasses.replace(q, tenant=require_tenant_match(tenant, q.tenant))


def _read_tenant(request: web.Request, principal) -> str | None:
    """A read is scoped to the caller's tenant when it is bound to one, or names one."""
    return request_tenant(request, principal)


@routes.post("/v1/logs/query")
async def query_logs(request: web.Request) -> web.Response:
    state = shard_state(request)
    handle, principal = state.handle(request, Action.QUERY)
    q = _read_query(await read_json(request), _read_tenant(request, principal))
    with state.limiter.slot(principal.token_id):
        page = await off_loop(lambda: handle.query(q))
    headers = {SNAPSHOT_HEADER: str(page.snapshot)}
    if page.next_cursor:
        headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return json_response(page.logs, headers=headers)


@routes.post("/v1/logs/count")
async def count_logs(request: web.Request) -> web.Response:
    state = shard_state(request)
    handle, principal = state.handle(request, Action.QUERY)
    q = _read_query(await read_json(request), _read_tenant(request, principal))
    with state.limiter.slot(principal.token_id):
        count = await off_loop(lambda: handle.count(q))
    return json_response({"count": count})


@routes.post("/v1/logs/export")
async def export_logs(request: web.Request) -> web.StreamResponse:
    """NDJSON, one LogView per line, fetched a page at a time: memory stays flat however
    many rows match. `limit` caps the total; without it everything matching is exported."""
    state = shard_state(request)
    handle, principal = state.handle(request, Action.QUERY)
    body = await read_json(request)
    q = _read_query(body, _read_tenant(request, principal))
    total = q.limit if isinstance(body, dict) and "limit" in body else None
    with state.limiter.slot(principal.token_id):
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        page_q = dataclasses.replace(q, limit=min(EXPORT_PAGE, total or MAX_LIMIT))
        page = await off_loop(functools.partial(handle.query, page_q))
        await response.prepare(request)
        sent = 0
        while True:
            lines = page.logs if total is None else page.logs[: total - sent]
            if lines:
                await response.write(b"".join(orjson.dumps(v) + b"\n" for v in lines))
            sent += len(lines)
            if page.next_cursor is None or (total is not None and sent >= total):
                break
            page_q = dataclasses.replace(page_q, cursor=page.next_cursor)
            page = await off_loop(functools.partial(handle.query, page_q))
        await response.write_eof()
    return response


@routes.get("/v1/types")
async def list_types(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request)
    return json_response([schema.to_json() for schema in handle.entity_types()])


@routes.post("/v1/types")
async def define_type(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    schema = TypeSchema.from_json(await read_json(request))
    await off_loop(lambda: handle.define_type(schema))
    return web.Response(status=204)


@routes.get("/v1/columns")
async def list_columns(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request)
    return json_response([column.to_json() for column in handle.custom_columns()])


@routes.post("/v1/columns")
async def define_column(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    column = ColumnDef.from_json(await read_json(request))
    await off_loop(lambda: handle.define_column(column))
    return web.Response(status=204)


@routes.get("/v1/entities/{type_name}")
async def list_entities(request: web.Request) -> web.Response:
    handle, principal = shard_state(request).handle(request, Action.QUERY)
    _unbound_only(principal)
    type_name = validate_type_name(request.match_info["type_name"], "type_name")
    include_deleted = _bool_param(request.query.get("include_deleted", "false"), "include_deleted")
    return json_response(await off_loop(lambda: handle.list_entities(type_name, include_deleted)))


@routes.get("/v1/entities/{type_name}/{entity_id:[^/]+}/history")  # ids may hold { and }
async def entity_history(request: web.Request) -> web.Response:
    handle, principal = shard_state(request).handle(request, Action.QUERY)
    _unbound_only(principal)
    type_name = validate_type_name(request.match_info["type_name"], "type_name")
    entity_id = request.match_info["entity_id"]
    return json_response(await off_loop(lambda: handle.entity_history(type_name, entity_id)))


def _bool_param(value: str, name: str) -> bool:
    if value not in ("true", "false"):
        raise BadInput(f"{name}: expected true or false")
    return value == "true"


def _int_param(value: str | None, name: str) -> int:
    text = check_query_param(value, name)
    if not _DIGITS.fullmatch(text):
        raise BadInput(f"{name}: expected a non-negative integer")
    return int(text)


# --- proofs -----------------------------------------------------------------------------


@routes.get("/v1/proof/inclusion/{log_id}")
async def prove_inclusion(request: web.Request) -> web.Response:
    handle, principal = shard_state(request).handle(request, Action.QUERY)
    _unbound_only(principal)
    log_id = request.match_info["log_id"]
    tenant = _read_tenant(request, principal)  # a cluster front names the caller's tenant
    return json_response(await off_loop(lambda: handle.prove_inclusion(log_id, tenant)))


@routes.get("/v1/proof/consistency")
async def prove_consistency(request: web.Request) -> web.Response:
    handle, principal = shard_state(request).handle(request, Action.QUERY)
    _unbound_only(principal)
    first = _int_param(request.query.get("from"), "from")
    return json_response(await off_loop(lambda: handle.prove_consistency(first)))


# --- administration ---------------------------------------------------------------------


@routes.post("/v1/admin/flush")
async def admin_flush(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    await off_loop(handle.flush)
    return web.Response(status=204)


@routes.post("/v1/admin/redrive")
async def admin_redrive(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    return json_response({"redriven": await off_loop(handle.redrive)})


@routes.post("/v1/admin/retention")
async def admin_retention(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    return json_response({"segments_dropped": await off_loop(handle.run_retention)})


@routes.get("/v1/admin/dlq")
async def admin_dlq(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    return json_response({"parked": handle.dlq_count()})


@routes.post("/v1/admin/verify")
async def admin_verify(request: web.Request) -> web.Response:
    handle, _ = shard_state(request).handle(request, Action.ADMINISTER)
    report = (await off_loop(handle.verify)).to_dict()
    report["log_records"] = report.pop("records")
    return json_response(report)


@routes.post("/v1/access/query")
async def query_access(request: web.Request) -> web.Response:
    state = shard_state(request)
    handle, principal = state.handle(request, Action.ADMINISTER)
    q = AccessQuery.from_json(await read_json(request))
    with state.limiter.slot(principal.token_id):
        page = await off_loop(lambda: handle.query_access(q))
    return json_response(page.to_dict(), headers={SNAPSHOT_HEADER: str(page.snapshot)})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format 0.0.4. Needs administer: queue and DLQ figures are operational
    detail an attacker could use."""
    state = shard_state(request)
    state.handle(request, Action.ADMINISTER)
    text = render_prometheus(state.pipeline.metrics, state.gauges())
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


@routes.get("/v1/healthz")
async def healthz(request: web.Request) -> web.Response:
    status, reasons = shard_state(request).pipeline.health.status()
    return json_response({"status": status, "reasons": reasons}, 503 if status == "unhealthy" else 200)
