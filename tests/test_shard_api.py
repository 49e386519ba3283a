"""The v1 HTTP API of one real shard process on loopback: every endpoint's success path and
its documented error statuses, checked against the contract
(reference/quipu-server-v1-openapi.json) and SPEC §6.

One shard serves the module: each test writes under its own actor id (or tenant) and reads
back only what it wrote, so tests do not see each other's rows.
"""

import http.client
import json
import secrets
import socket
import threading
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from shard_proc import ROLES, ShardProcess, actor_query, append_request, define_types, wait_until

from quipu.core.merkle import verify_consistency, verify_inclusion
from quipu.core.schema import TypeSchema

CURSOR_HEADER = "X-Quipu-Next-Cursor"
TENANT_HEADER = "X-Quipu-Tenant"
BASE_MICROS = 1_700_000_000_000_000  # occurred_at of the rows tests place in time themselves
# Values that must never reach the shard's log (checked by the last test of the module).
NEEDLE = f"needle-{secrets.token_hex(6)}"
PATH_ENTITY_ID = f"path-entity-{secrets.token_hex(6)}"
HEALTHY_ANYWHERE = {"min_free_bytes": 0, "min_free_ratio": 0.0}  # "ok" on a nearly full CI disk
LEDGER_DOC = {
    "type_name": "ledger_doc",
    "fields": [{"name": "name", "kind": "Text", "indexed": True}, {"name": "pages", "kind": "Number"}],
}
# Every operation of reference/quipu-server-v1-openapi.json.
REFERENCE_OPERATIONS = (
    ("/v1/proof/inclusion/{log_id}", "get"),
    ("/v1/proof/consistency", "get"),
    ("/v1/healthz", "get"),
    ("/v1/openapi.json", "get"),
    ("/v1/types", "post"),
    ("/v1/types", "get"),
    ("/v1/columns", "post"),
    ("/v1/logs", "post"),
    ("/v1/logs/query", "post"),
    ("/v1/logs/export", "post"),
    ("/v1/entities/{type_name}", "get"),
    ("/v1/entities/{type_name}/{entity_id}/history", "get"),
    ("/v1/admin/flush", "post"),
    ("/v1/admin/redrive", "post"),
    ("/v1/admin/retention", "post"),
    ("/v1/admin/dlq", "get"),
    ("/v1/admin/verify", "post"),
)
SPEC_METRICS = (
    "quipu_queue_depth",
    "quipu_dlq_entries",
    "quipu_writes_ok_total",
    "quipu_write_retries_total",
    "quipu_writes_parked_total",
    "quipu_events_lost_total",
    "quipu_emit_rejected_total",
    "quipu_write_latency_seconds",
    "quipu_store_bytes",
    "quipu_disk_free_bytes",
    "quipu_disk_total_bytes",
    "quipu_writer_alive",
    "quipu_disk_full",
    "quipu_disk_low",
    "quipu_verify_runs_total",
)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    s = ShardProcess.prepare(tmp_path_factory.mktemp("api"), health=HEALTHY_ANYWHERE)
    s.config["store"]["retention_days"] = None  # rows placed in 2023 must not age out mid-run
    s.add_token("acme", {"role": "admin", "tenant": "acme"})
    s.add_token("everywhere", {"role": "admin", "tenant": "*"})
    s.write_config()
    s.launch()
    try:
        define_types(s)
        define_types(s, LEDGER_DOC)
        yield s
    finally:
        s.stop()


# --- helpers ----------------------------------------------------------------------------


def emit(shard, body: dict, **kw: object) -> None:
    status, answer = shard.json("POST", "/v1/logs", body, **kw)
    assert (status, answer) == (202, {"status": "queued"}), answer


def query(shard, body: dict, **kw: object) -> list[dict]:
    status, logs = shard.json("POST", "/v1/logs/query", body, **kw)
    assert status == 200, logs
    return logs


def ndjson(items: list[dict]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


# --- health and the API document -----------------------------------------------------------


def test_healthz_answers_ok_without_a_token(shard):
    for role in (None, "nobody"):
        status, body = shard.json("GET", "/v1/healthz", role=role)
        assert status == 200
        assert body["status"] == "ok" and body["reasons"] == []


def test_openapi_document_is_served_without_a_token_and_lists_every_v1_path(shard):
    status, doc = shard.json("GET", "/v1/openapi.json", role=None)
    assert status == 200
    missing = {
        (path, method) for path, method in REFERENCE_OPERATIONS if method not in doc["paths"].get(path, {})
    }
    assert not missing, f"the shard's document lacks reference operations {sorted(missing)}"
    for extra in ("/v1/logs/batch", "/v1/logs/count", "/v1/access/query"):
        assert extra in doc["paths"], f"{extra} is served but not documented"


# --- writing and reading -----------------------------------------------------------------


def test_appended_event_is_queued_then_rendered_as_a_log_view(shard):
    body = append_request(
        "viewer",
        url="/api/docs/7",
        content="renamed the doc",
        targets=[("default_target", "doc-7", "Quarterly report")],
        occurred_at=BASE_MICROS + 7,
    )
    emit(shard, body)
    shard.flush()
    (view,) = query(shard, actor_query("viewer"))
    assert len(view["log_id"]) == 32 and int(view["log_id"], 16) >= 0
    assert view["occurred_at"] == BASE_MICROS + 7
    assert view["timestamp"].startswith("2023-11-14T22:13:20")
    assert view["tenant"] is None
    assert (view["method"], view["url"]) == ("PUT", "/api/docs/7")
    assert view["content"] == {"Text": "renamed the doc"}
    assert view["custom"] == {}
    assert view["actor"]["entity_type"] == "default_actor"
    assert view["actor"]["entity_id"] == "viewer"
    assert view["actor"]["fields"]["name"] == {"Text": "actor viewer"}
    (target,) = view["targets"]
    assert (target["entity_type"], target["entity_id"], target["version"]) == ("default_target", "doc-7", 1)
    assert target["fields"]["name"] == {"Text": "Quarterly report"}


def test_repeated_idempotency_key_answers_duplicate_and_records_once(shard):
    key = f"key-{secrets.token_hex(8)}"
    body = append_request("retrier")
    first = shard.json("POST", "/v1/logs", body, headers={"Idempotency-Key": key})
    again = shard.json("POST", "/v1/logs", body, headers={"Idempotency-Key": key})
    assert first == (202, {"status": "queued"})
    assert again == (202, {"status": "duplicate"})
    shard.flush()
    after_flush = shard.json("POST", "/v1/logs", body, headers={"Idempotency-Key": key})
    assert after_flush == (202, {"status": "duplicate"})
    shard.flush()
    assert shard.count(actor_query("retrier")) == 1


def test_count_counts_exactly_the_matching_rows(shard):
    for i in range(5):
        emit(shard, append_request("counter", method="POST" if i < 2 else "PUT", url=f"/count/{i}"))
    shard.flush()
    assert shard.count(actor_query("counter")) == 5
    assert shard.count(actor_query("counter", method="POST")) == 2
    assert shard.count(actor_query("counter", url="/count/3")) == 1
    assert shard.count(actor_query("counter", from_micros=0, to_micros=1)) == 0
    for role in ("auditor", "admin"):
        assert shard.count(actor_query("counter"), role=role) == 5


def test_query_pages_by_cursor_give_every_row_once_and_ignore_rows_added_meanwhile(shard):
    times = [BASE_MICROS + 1_000 + 10 * i for i in range(25)]
    for at in times:
        emit(shard, append_request("pager", occurred_at=at))
    shard.flush()
    q = actor_query("pager", limit=7)
    seen: list[dict] = []
    cursor, pages = None, 0
    while True:
        r = shard.request("POST", "/v1/logs/query", {**q, "cursor": cursor} if cursor else q)
        assert r.status == 200, r.data[:300]
        page = r.json()
        seen += page
        pages += 1
        if pages == 1:  # rows arriving mid-paging, some inside the paged range: not in this walk
            for at in (times[3] + 1, times[20] + 1, times[-1] + 5):
                emit(shard, append_request("pager", occurred_at=at))
            shard.flush()
        cursor = r.header(CURSOR_HEADER)
        if cursor is None:
            break
        assert len(page) == 7
        assert pages < 10, "the cursor walk does not end"
    assert pages == 4
    assert [v["occurred_at"] for v in seen] == sorted(times, reverse=True)
    assert len({v["log_id"] for v in seen}) == 25
    assert shard.count(actor_query("pager")) == 28


def test_query_in_ascending_order_with_a_limit_returns_the_oldest_rows(shard):
    for i in range(4):
        emit(shard, append_request("ascender", occurred_at=BASE_MICROS + 2_000 + i))
    shard.flush()
    logs = query(shard, actor_query("ascender", order="asc", limit=3))
    assert [v["occurred_at"] for v in logs] == [BASE_MICROS + 2_000 + i for i in range(3)]


def test_export_streams_every_matching_row_as_ndjson_in_order(shard):
    total = 3_000
    for start in range(0, total, 500):
        batch = [
            append_request("exporter", url=f"/export/{i}", occurred_at=BASE_MICROS + 10_000 + i)
            for i in range(start, start + 500)
        ]
        r = shard.request("POST", "/v1/logs/batch", batch)
        assert r.status == 202 and r.json()["queued"] == 500, r.data[:300]
    shard.flush()
    lines = shard.export(actor_query("exporter", order="asc"))
    assert len(lines) == total
    assert [v["url"] for v in lines] == [f"/export/{i}" for i in range(total)]
    assert [v["occurred_at"] for v in lines] == [BASE_MICROS + 10_000 + i for i in range(total)]
    newest = shard.export(actor_query("exporter", limit=10))
    assert [v["url"] for v in newest] == [f"/export/{i}" for i in range(total - 1, total - 11, -1)]
    assert shard.export(actor_query("exporter", method="DELETE")) == []


# --- batches -----------------------------------------------------------------------------


def test_batch_as_json_array_gives_each_event_its_own_result(shard):
    keys = [f"batch-{secrets.token_hex(6)}" for _ in range(2)]
    items = [
        {**append_request("batcher", url="/batch/0"), "idempotency_key": keys[0]},
        {**append_request("batcher", url="/batch/1"), "method": "NOT A METHOD"},
        {**append_request("batcher", url="/batch/2"), "idempotency_key": keys[1]},
    ]
    status, body = shard.json("POST", "/v1/logs/batch", items)
    assert status == 202
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["status"] for r in results] == ["queued", "rejected", "queued"]
    assert "method" in results[1]["error"]
    assert (body["queued"], body["rejected"], body["duplicate"]) == (2, 1, 0)
    shard.flush()
    assert sorted(v["url"] for v in query(shard, actor_query("batcher"))) == ["/batch/0", "/batch/2"]


def test_batch_as_ndjson_answers_a_repeated_key_duplicate(shard):
    known, fresh = f"nd-{secrets.token_hex(6)}", f"nd-{secrets.token_hex(6)}"
    emit(shard, append_request("ndjsoner", url="/nd/known"), headers={"Idempotency-Key": known})
    items = [
        {**append_request("ndjsoner", url="/nd/known"), "idempotency_key": known},
        {**append_request("ndjsoner", url="/nd/fresh"), "idempotency_key": fresh},
        {**append_request("ndjsoner", url="/nd/fresh"), "idempotency_key": fresh},
        {**append_request("ndjsoner", url="/nd/badkey"), "idempotency_key": "has space"},
        append_request("ndjsoner", url="/nd/unkeyed"),
    ]
    r = shard.request(
        "POST", "/v1/logs/batch", raw=ndjson(items), headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status == 202, r.data[:300]
    body = r.json()
    statuses = [x["status"] for x in body["results"]]
    assert statuses == ["duplicate", "queued", "duplicate", "rejected", "queued"]
    assert "idempotency_key" in body["results"][3]["error"]
    shard.flush()
    urls = sorted(v["url"] for v in query(shard, actor_query("ndjsoner")))
    assert urls == ["/nd/fresh", "/nd/known", "/nd/unkeyed"]


def test_batch_refuses_roles_without_emit(shard):
    items = [append_request("batch-forbidden")]
    for role in ("auditor", "nobody"):
        shard.request("POST", "/v1/logs/batch", items, role=role).error(403)
    shard.flush()
    assert shard.count(actor_query("batch-forbidden")) == 0


# --- types, columns, entities ------------------------------------------------------------


def test_types_are_defined_listed_and_redefined_additively_only(shard):
    invoice = {"type_name": "invoice", "fields": [{"name": "number", "kind": "Text", "indexed": True}]}
    assert shard.request("POST", "/v1/types", invoice).status == 204
    grown = {"type_name": "invoice", "fields": [*invoice["fields"], {"name": "amount", "kind": "Number"}]}
    assert shard.request("POST", "/v1/types", grown).status == 204
    assert shard.request("POST", "/v1/types", grown).status == 204, "repeating a definition is a no-op"
    refusals = {
        "kind changed": [{"name": "number", "kind": "Number", "indexed": True}, grown["fields"][1]],
        "field removed": [invoice["fields"][0]],
        "new required field": [*grown["fields"], {"name": "due", "kind": "Text", "required": True}],
    }
    for what, fields in refusals.items():
        message = shard.request("POST", "/v1/types", {"type_name": "invoice", "fields": fields}).error(400)
        assert "additive" in message or "required" in message, (what, message)
    for role in ("admin", "auditor", "service"):
        status, types = shard.json("GET", "/v1/types", role=role)
        assert status == 200
        listed = {t["type_name"]: t for t in types}
        assert listed["invoice"] == TypeSchema.from_json(grown).to_json()
        assert {"default_actor", "default_target", "ledger_doc"} <= set(listed)
    shard.request("GET", "/v1/types", role="nobody").error(403)
    for role in ("auditor", "service", "nobody"):
        shard.request("POST", "/v1/types", {"type_name": "sneaky", "fields": []}, role=role).error(403)
    assert "sneaky" not in {t["type_name"] for t in shard.json("GET", "/v1/types")[1]}


def test_custom_column_is_registered_checked_on_write_and_returned(shard):
    assert shard.request("POST", "/v1/columns", {"name": "region", "kind": "Text"}).status == 204
    assert shard.request("POST", "/v1/columns", {"name": "region", "kind": "Text"}).status == 204
    emit(shard, append_request("columnist", custom={"region": {"Text": "eu-west"}}))
    wrong_kind = append_request("columnist", custom={"region": {"Number": 3}})
    shard.request("POST", "/v1/logs", wrong_kind).error(400)
    shard.request("POST", "/v1/logs", append_request("columnist", custom={"nocolumn": "x"})).error(400)
    shard.request("POST", "/v1/columns", {"name": "region", "kind": "Number"}).error(400)
    shard.request("POST", "/v1/columns", {"name": "zone"}, role="service").error(403)
    status, columns = shard.json("GET", "/v1/columns", role="service")
    assert status == 200 and {"name": "region", "kind": "Text", "required": False} in columns
    shard.request("GET", "/v1/columns", role="nobody").error(403)
    shard.flush()
    (view,) = query(shard, actor_query("columnist"))
    assert view["custom"] == {"region": {"Text": "eu-west"}}


def _doc_event(
    entity_id: str, name: str, method: str = "PUT", at: int = 0, type_name: str = "ledger_doc"
) -> dict:
    return append_request("librarian", method=method, targets=[(type_name, entity_id, name)], occurred_at=at)


def test_entities_list_latest_versions_and_history_keeps_every_version(shard):
    define_types(shard, {**LEDGER_DOC, "type_name": "shelf_doc"})
    emit(shard, _doc_event("doc-a", "draft", at=BASE_MICROS + 1, type_name="shelf_doc"))
    emit(shard, _doc_event("doc-a", "final", at=BASE_MICROS + 2, type_name="shelf_doc"))
    emit(shard, _doc_event("doc-b", "scratch", at=BASE_MICROS + 3, type_name="shelf_doc"))
    emit(shard, _doc_event("doc-b", "scratch", method="DELETE", at=BASE_MICROS + 4, type_name="shelf_doc"))
    shard.flush()

    status, live = shard.json("GET", "/v1/entities/shelf_doc", role="auditor")
    assert status == 200
    assert [(e["entity_id"], e["version"], e["fields"]["name"]) for e in live] == [
        ("doc-a", 2, {"Text": "final"})
    ]
    status, everything = shard.json("GET", "/v1/entities/shelf_doc?include_deleted=true")
    assert status == 200
    assert {e["entity_id"]: e["deleted"] for e in everything} == {"doc-a": False, "doc-b": True}
    assert shard.json("GET", "/v1/entities/shelf_doc?include_deleted=false")[1] == live

    status, history = shard.json("GET", "/v1/entities/shelf_doc/doc-a/history")
    assert status == 200
    assert [(v["version"], v["fields"]["name"]["Text"]) for v in history] == [(1, "draft"), (2, "final")]
    status, history = shard.json("GET", "/v1/entities/shelf_doc/doc-b/history")
    assert [v["deleted"] for v in history] == [False, True]

    shard.request("GET", "/v1/entities/shelf_doc?include_deleted=maybe").error(400)
    shard.request("GET", f"/v1/entities/shelf_doc/{PATH_ENTITY_ID}/history").error(404)
    assert shard.request("GET", "/v1/entities/never_defined").status in (400, 404)
    for role in ("service", "nobody"):
        shard.request("GET", "/v1/entities/shelf_doc", role=role).error(403)
        shard.request("GET", "/v1/entities/shelf_doc/doc-a/history", role=role).error(403)


def test_renamed_entity_is_found_by_its_old_name_and_renders_as_recorded(shard):
    emit(shard, _doc_event("doc-r", "old title", at=BASE_MICROS + 11))
    emit(shard, _doc_event("doc-r", "new title", at=BASE_MICROS + 12))
    shard.flush()
    old_name = {"entity_type": "ledger_doc", "field": "name", "value": {"Text": "old title"}}
    hits = query(shard, {"targets": [old_name]})
    assert [v["targets"][0]["fields"]["name"]["Text"] for v in hits] == ["new title", "old title"]
    assert query(shard, {"targets": [old_name], "include_past": False}) == []


# --- proofs ------------------------------------------------------------------------------


def _inclusion(shard, log_id: str) -> dict:
    status, proof = shard.json("GET", f"/v1/proof/inclusion/{log_id}")
    assert status == 200, proof
    return proof


def _verify_inclusion(proof: dict) -> None:
    verify_inclusion(
        proof["leaf_index"],
        proof["tree_size"],
        bytes.fromhex(proof["leaf"]),
        [bytes.fromhex(h) for h in proof["audit_path"]],
        bytes.fromhex(proof["merkle_root"]),
    )


def test_inclusion_proof_verifies_against_the_returned_root_in_every_log_id_form(shard):
    for i in range(3):
        emit(shard, append_request("prover", url=f"/prove/{i}"))
    shard.flush()
    logs = query(shard, actor_query("prover"))
    for view in logs:
        proof = _inclusion(shard, view["log_id"])
        assert proof["log_id"] == view["log_id"]
        _verify_inclusion(proof)
        for form in (str(int(view["log_id"], 16)), view["log_id"].upper()):
            same = _inclusion(shard, form)
            assert (same["leaf_index"], same["leaf"]) == (proof["leaf_index"], proof["leaf"])
            _verify_inclusion(same)
    assert len({_inclusion(shard, v["log_id"])["leaf_index"] for v in logs}) == 3
    shard.request("GET", f"/v1/proof/inclusion/{logs[0]['log_id']}", role="service").error(403)


def test_consistency_proof_from_an_earlier_tree_verifies_against_the_root_seen_then(shard):
    emit(shard, append_request("consistent"))
    shard.flush()
    (view,) = query(shard, actor_query("consistent"))
    earlier = _inclusion(shard, view["log_id"])  # the (size, root) an auditor kept
    for i in range(5):
        emit(shard, append_request("consistent", url=f"/later/{i}"))
    shard.flush()
    status, proof = shard.json("GET", f"/v1/proof/consistency?from={earlier['tree_size']}", role="auditor")
    assert status == 200, proof
    assert proof["first_size"] == earlier["tree_size"]
    assert proof["second_size"] >= earlier["tree_size"] + 5
    verify_consistency(
        proof["first_size"],
        proof["second_size"],
        bytes.fromhex(earlier["merkle_root"]),
        bytes.fromhex(proof["merkle_root"]),
        [bytes.fromhex(h) for h in proof["proof"]],
    )
    status, same = shard.json("GET", f"/v1/proof/consistency?from={proof['second_size']}")
    assert status == 200
    assert (same["first_size"], same["second_size"]) == (proof["second_size"], proof["second_size"])
    assert (same["proof"], same["merkle_root"]) == ([], proof["merkle_root"])


def test_malformed_log_id_is_400_and_unknown_log_id_is_404(shard):
    emit(shard, append_request("unknown-ids"))
    shard.flush()
    (view,) = query(shard, actor_query("unknown-ids"))
    real = view["log_id"]
    for malformed in ("not-a-log-id", "zz" * 16, "9" * 60, "-5", real[:-1] + "g"):
        shard.request("GET", f"/v1/proof/inclusion/{malformed}").error(400)
    beyond = real[:22] + "ffffffffff"  # this store's tag, a leaf index past the tree
    other_store = real[:16] + format(int(real[16:22], 16) ^ 1, "06x") + real[22:]
    for unknown in (beyond, other_store, str(int(other_store, 16))):
        shard.request("GET", f"/v1/proof/inclusion/{unknown}").error(404)
    for bad_from in ("", "?from=", "?from=abc", "?from=-1", "?from=0", "?from=1e3", "?from=99999999999"):
        shard.request("GET", f"/v1/proof/consistency{bad_from}").error(400)


# --- administration ----------------------------------------------------------------------

ADMIN_CALLS = (
    ("POST", "/v1/admin/flush"),
    ("POST", "/v1/admin/redrive"),
    ("POST", "/v1/admin/retention"),
    ("GET", "/v1/admin/dlq"),
    ("POST", "/v1/admin/verify"),
    ("POST", "/v1/access/query"),
    ("GET", "/metrics"),
)


def test_admin_endpoints_answer_their_documented_shapes(shard):
    emit(shard, append_request("administrator"))
    r = shard.request("POST", "/v1/admin/flush")
    assert (r.status, r.data) == (204, b"")
    assert shard.json("POST", "/v1/admin/redrive") == (200, {"redriven": 0})
    status, retention = shard.json("POST", "/v1/admin/retention")
    assert status == 200 and retention == {"segments_dropped": 0}
    assert shard.json("GET", "/v1/admin/dlq") == (200, {"parked": 0})
    status, report = shard.json("POST", "/v1/admin/verify")
    assert status == 200
    assert report["ok"] is True and report["problems"] == []
    assert report["segments_checked"] >= 1
    assert report["log_records"] >= shard.count({}) >= 1


def test_admin_endpoints_refuse_roles_without_administer(shard):
    for method, path in ADMIN_CALLS:
        for role in ("auditor", "service", "nobody"):
            body = {} if path == "/v1/access/query" else None
            shard.request(method, path, body, role=role).error(403)


def test_concurrent_verifies_each_get_a_report_or_409(shard):
    replies = []

    def verify():
        replies.append(shard.request("POST", "/v1/admin/verify"))

    threads = [threading.Thread(target=verify) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replies) == 6
    assert {r.status for r in replies} <= {200, 409}
    assert any(r.status == 200 for r in replies)
    for r in replies:
        if r.status == 409:
            r.error(409)
        else:
            assert r.json()["ok"] is True


# --- authentication and grants -----------------------------------------------------------

# (method, path, body, the action it needs; "any" = a role granted at least one action)
AUTHED_CALLS = (
    ("POST", "/v1/logs", append_request("unauthenticated"), "emit"),
    ("POST", "/v1/logs/batch", [append_request("unauthenticated")], "emit"),
    ("POST", "/v1/logs/query", {}, "query"),
    ("POST", "/v1/logs/count", {}, "query"),
    ("POST", "/v1/logs/export", {}, "query"),
    ("GET", "/v1/types", None, "any"),
    ("POST", "/v1/types", {"type_name": "unauthenticated", "fields": []}, "administer"),
    ("POST", "/v1/columns", {"name": "unauthenticated"}, "administer"),
    ("GET", "/v1/entities/default_actor", None, "query"),
    ("GET", "/v1/entities/default_actor/x/history", None, "query"),
    ("GET", "/v1/proof/inclusion/" + "0" * 32, None, "query"),
    ("GET", "/v1/proof/consistency?from=1", None, "query"),
    ("POST", "/v1/admin/flush", None, "administer"),
    ("POST", "/v1/admin/redrive", None, "administer"),
    ("POST", "/v1/admin/retention", None, "administer"),
    ("GET", "/v1/admin/dlq", None, "administer"),
    ("POST", "/v1/admin/verify", None, "administer"),
    ("POST", "/v1/access/query", {}, "administer"),
    ("GET", "/metrics", None, "administer"),
)


def test_missing_unknown_and_expired_tokens_get_one_identical_401(shard):
    credentials = {
        "missing": {},
        "unknown": {"Authorization": "Bearer tok-never-issued"},
        "expired": {"Authorization": f"Bearer {shard.tokens['expired']}"},
        "wrong scheme": {"Authorization": f"Basic {shard.tokens['admin']}"},
        "no token": {"Authorization": "Bearer"},
        "extra part": {"Authorization": f"Bearer {shard.tokens['admin']} x"},
    }
    bodies = set()
    for method, path, body, _ in AUTHED_CALLS:
        for what, headers in credentials.items():
            r = shard.request(method, path, body, role=None, headers=headers)
            r.error(401)
            assert r.header("WWW-Authenticate") == "Bearer", (path, what)
            bodies.add(r.data)
    assert len(bodies) == 1, f"401 bodies differ: {bodies}"
    shard.flush()
    assert shard.count(actor_query("unauthenticated")) == 0
    assert "unauthenticated" not in {t["type_name"] for t in shard.json("GET", "/v1/types")[1]}


def test_roles_without_the_grant_are_refused_with_403_and_nothing_is_recorded(shard):
    refused = 0
    for role, grants in ROLES.items():
        for method, path, body, action in AUTHED_CALLS:
            if action in grants or (action == "any" and grants):
                continue
            shard.request(method, path, body, role=role).error(403)
            refused += 1
    assert refused == 19 + 16 + 11, "deny by default: nobody gets nothing, each role only its grant"
    shard.flush()
    assert shard.count(actor_query("unauthenticated")) == 0
    assert "unauthenticated" not in {t["type_name"] for t in shard.json("GET", "/v1/types")[1]}


def test_query_over_the_per_token_limit_is_429_and_other_tokens_are_unaffected(tmp_path):
    """One export held open (the client reads nothing, so the shard's socket buffers fill
    and the handler waits) occupies the token's only query slot."""
    limited = ShardProcess.prepare(tmp_path, health=HEALTHY_ANYWHERE)
    limited.config["auth"]["max_concurrent_queries"] = 1
    limited.write_config()
    limited.launch()
    try:
        define_types(limited)
        bulk = "x" * 200_000  # 60 rows of 200 kB: far more than loopback socket buffers hold
        for i in range(60):
            emit(limited, append_request("bulky", content=f"{i} {bulk}"))
        limited.flush()
        conn, held = _open_export(limited, actor_query("bulky"), limited.tokens["admin"])
        try:
            assert held.status == 200
            for path in ("/v1/logs/query", "/v1/logs/count", "/v1/logs/export"):
                r = limited.request("POST", path, actor_query("bulky", limit=1))
                r.error(429)
                assert r.header("Retry-After") is not None
            assert len(query(limited, actor_query("bulky", limit=1), role="auditor")) == 1
            assert limited.count(actor_query("bulky"), role="auditor") == 60
            lines = held.read().splitlines()
        finally:
            conn.close()
        assert [json.loads(line)["content"]["Text"].split()[0] for line in lines] == [
            str(i) for i in range(59, -1, -1)
        ]
        # The handler frees the slot as it ends, which the client may see a moment later.
        wait_until(
            lambda: limited.request("POST", "/v1/logs/count", {}).status == 200,
            "the token's query slot is free again after its export ended",
        )
    finally:
        limited.stop()


def _open_export(
    shard, body: dict, token: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Start an export on a socket with a tiny receive buffer and read only its headers: the
    shard has taken the query slot before it sends them and keeps it until the last row."""
    parts = urlsplit(shard.url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect((parts.hostname, parts.port))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.sock = sock
    conn.request(
        "POST",
        "/v1/logs/export",
        body=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    return conn, conn.getresponse()


# --- tenants -----------------------------------------------------------------------------


def test_unbound_admin_may_name_a_tenant_and_then_reads_only_that_tenant(shard):
    red, blue = f"red-{secrets.token_hex(4)}", f"blue-{secrets.token_hex(4)}"
    for tenant, n in ((red, 2), (blue, 1)):
        for i in range(n):
            emit(shard, append_request("tenanted", url=f"/{tenant}/{i}"), headers={TENANT_HEADER: tenant})
    r = shard.request("POST", "/v1/logs/batch", [append_request("tenanted")], headers={TENANT_HEADER: blue})
    assert r.status == 202 and r.json()["queued"] == 1
    shard.flush()
    for tenant, n in ((red, 2), (blue, 2)):
        named = {"headers": {TENANT_HEADER: tenant}}
        logs = query(shard, actor_query("tenanted"), **named)
        assert len(logs) == n and {v["tenant"] for v in logs} == {tenant}
        assert shard.count(actor_query("tenanted"), **named) == n
        assert {v["tenant"] for v in shard.export(actor_query("tenanted"), **named)} == {tenant}
        assert shard.count(actor_query("tenanted", tenant=tenant)) == n
        assert shard.count(actor_query("tenanted"), token=shard.tokens["everywhere"], **named) == n
    assert shard.count(actor_query("tenanted")) == 4, "a token bound to no tenant that names none sees all"


def test_tenant_bound_token_writes_and_reads_only_its_own_tenant(shard):
    acme = {"token": shard.tokens["acme"]}
    other = {TENANT_HEADER: "globex"}
    shard.request("POST", "/v1/logs", append_request("acme-user"), headers=other, **acme).error(403)
    batch = [append_request("acme-user")]
    shard.request("POST", "/v1/logs/batch", batch, headers=other, **acme).error(403)
    emit(shard, append_request("acme-user", url="/acme/0"), **acme)
    emit(shard, append_request("acme-user", url="/acme/1"), headers={TENANT_HEADER: "acme"}, **acme)
    emit(shard, append_request("acme-user", url="/globex/0"), headers=other)
    shard.flush()

    logs = query(shard, {}, **acme)
    assert sorted(v["url"] for v in logs) == ["/acme/0", "/acme/1"]
    assert {v["tenant"] for v in logs} == {"acme"}
    assert shard.count({}, **acme) == 2
    assert sorted(v["url"] for v in shard.export({}, **acme)) == ["/acme/0", "/acme/1"]
    assert shard.count(actor_query("acme-user"), headers=other) == 1, "the refused writes left nothing"
    for path in ("/v1/logs/query", "/v1/logs/count", "/v1/logs/export"):
        shard.request("POST", path, {}, headers=other, **acme).error(403)
        shard.request("POST", path, {"tenant": "globex"}, **acme).error(403)
    # Registry and proofs are per shard, not per tenant: refused rather than shown.
    for path in ("/v1/entities/default_actor", "/v1/entities/default_actor/acme-user/history"):
        shard.request("GET", path, **acme).error(403)
    shard.request("GET", f"/v1/proof/inclusion/{logs[0]['log_id']}", **acme).error(403)
    shard.request("GET", "/v1/proof/consistency?from=1", **acme).error(403)


# --- the access log, metrics and the shard's own log ------------------------------------------


def test_access_log_shows_the_shape_of_earlier_queries_never_their_values(shard):
    probe = {
        "actor_type": "default_actor",
        "actor_id": NEEDLE,
        "method": "PATCH",
        "url": f"/secret/{NEEDLE}",
        "targets": [
            {"entity_type": "default_target", "field": "name", "value": {"Text": NEEDLE}, "mode": "contains"}
        ],
    }
    assert query(shard, probe, role="auditor") == []
    assert shard.count(probe, role="auditor") == 0
    assert shard.export(probe, role="auditor") == []
    shard.request("GET", f"/v1/entities/default_target/{NEEDLE}/history").error(404)

    r = shard.request("POST", "/v1/access/query", {"operation": "query", "limit": 100})
    assert r.status == 200, r.data[:300]
    assert NEEDLE.encode() not in r.data
    for token in shard.tokens.values():
        assert token.encode() not in r.data
    records = r.json()["records"]
    shapes = [rec["shape"] for rec in records if rec["shape"].get("targets")]
    assert any(
        s["targets"][0]["field"] == "name" and s["targets"][0]["mode"] == "contains" and s["url"] is True
        for s in shapes
    ), records[:5]
    everything = shard.request("POST", "/v1/access/query", {"limit": 10_000})
    assert everything.status == 200 and NEEDLE.encode() not in everything.data
    assert {"query", "count", "entity_history"} <= {rec["op"] for rec in everything.json()["records"]}


def test_metrics_need_administer_and_expose_every_spec_family(shard):
    r = shard.request("GET", "/metrics")
    assert r.status == 200
    assert r.header("Content-Type").startswith("text/plain")
    families = list(text_string_to_metric_families(r.data.decode()))
    names = {f.name for f in families} | {s.name for f in families for s in f.samples}
    missing = [name for name in SPEC_METRICS if name not in names]
    assert not missing, f"/metrics lacks {missing}"
    samples = {s.name: s for f in families for s in f.samples if not s.labels}
    assert samples["quipu_writer_alive"].value == 1
    assert samples["quipu_writes_ok_total"].value >= 1
    rejected = [s for f in families for s in f.samples if s.name == "quipu_emit_rejected_total"]
    assert rejected and all("reason" in s.labels for s in rejected)
    shard.request("GET", "/metrics", role=None).error(401)


def test_shard_log_never_holds_a_token_a_query_value_or_an_entity_id_from_a_path(shard):
    """Runs last: everything the module sent is in the log by now."""
    shard.request(
        "POST",
        "/v1/logs/query",
        actor_query(NEEDLE),
        role=None,
        headers={"Authorization": "Bearer " + NEEDLE},
    )
    shard.request("GET", f"/v1/entities/default_target/{PATH_ENTITY_ID}/history")
    shard.request("GET", f"/v1/proof/inclusion/{NEEDLE}")
    shard.flush()
    text = shard.log()
    assert "/v1/logs/query" in text, "the access log lines are missing: nothing was checked"
    leaks = [value for value in (NEEDLE, PATH_ENTITY_ID, *shard.tokens.values()) if value in text]
    assert not leaks, f"the shard log holds {leaks}"
