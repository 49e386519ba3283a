"""The meta-audit: every query and admin call leaves one record with its shape, never its values."""

import pytest

from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.errors import Conflict
from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.keyring import HmacKey, KeyRing
from quipu.core.query_spec import AccessQuery, LogQuery, TargetFilter
from quipu.core.retention import RetentionPolicy
from quipu.core.schema import BlindIndex, FieldDef, Protection, TypeSchema, default_actor_type
from quipu.core.values import Content, Value

PATIENT = TypeSchema("patient", (FieldDef.text("ssn").protect(Protection.HMAC).blind(BlindIndex("Exact")),))
SECRET = "078-05-1120"


def open_store(root, rsa_key, **options) -> AuditStore:
    ring = KeyRing([rsa_key], [HmacKey(1, b"h" * 32)])
    store = AuditStore.open(StoreConfig(root, keys=ring, access_log=True, **options))
    store.define_type(default_actor_type(), actor="setup")
    store.define_type(PATIENT, actor="setup")
    return store


def visit(i: int) -> AuditEvent:
    patient = TargetSpec("patient", EntityInput(f"p{i}").text("ssn", SECRET))
    return AuditEvent(
        "default_actor", EntityInput("dr-who"), "GET", "/chart", Content("Text", "read"), targets=(patient,)
    )


def test_each_query_and_admin_call_is_recorded_once_with_its_shape(tmp_path, rsa_key):
    with open_store(tmp_path, rsa_key) as store:
        store.append(visit(1))
        by_ssn = LogQuery(targets=(TargetFilter.exact("patient", "ssn", Value.text_(SECRET)),), method="GET")
        assert store.count(by_ssn, actor="auditor-1") == 1
        store.query(by_ssn, actor="auditor-1")
        store.verify_integrity(actor="admin")
        store.flush(actor="admin")
        page = store.query_access(AccessQuery(order="asc"), actor="admin")
        ops = [(r["actor"], r["op"]) for r in page.records]
        assert ops == [
            ("setup", "define_type"),
            ("setup", "define_type"),
            ("auditor-1", "count"),
            ("auditor-1", "query"),
            ("admin", "verify_integrity"),
            ("admin", "flush"),
        ]
        shape = page.records[3]["shape"]
        assert shape["targets"][0]["field"] == "ssn"
        assert shape["targets"][0]["mode"] == "exact"
        assert shape["method"] is True


def test_probe_values_never_reach_the_access_log(tmp_path, rsa_key):
    with open_store(tmp_path, rsa_key) as store:
        store.append(visit(1))
        flt = TargetFilter.exact("patient", "ssn", Value.text_(SECRET))
        store.query(LogQuery(targets=(flt,), url="/chart", method="GET"), actor="auditor")
        store.flush()
    access_bytes = b"".join(p.read_bytes() for p in (tmp_path / "access").iterdir() if p.is_file())
    assert b"auditor" in access_bytes  # the grep sees the records at all
    for value in (SECRET.encode(), b"/chart"):
        assert value not in access_bytes


def test_reading_the_access_log_is_recorded_exactly_once(tmp_path, rsa_key):
    with open_store(tmp_path, rsa_key) as store:
        before = store.query_access(AccessQuery(), actor="admin").records
        after = store.query_access(AccessQuery(limit=1000), actor="admin").records
        assert len(after) == len(before) + 1
        assert after[0]["op"] == "query_access"
        assert [r["op"] for r in after].count("query_access") == 1  # a read never shows itself
        assert store.query_access(AccessQuery(operation="query_access"), actor="x").records


def test_access_log_pages_with_a_cursor_and_filters(tmp_path, rsa_key):
    with open_store(tmp_path, rsa_key) as store:
        for i in range(25):
            store.flush(actor=f"op{i % 2}")
        seen, cursor = [], None
        while True:
            page = store.query_access(AccessQuery(actor="op1", limit=4, cursor=cursor), actor="admin")
            seen += page.records
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(seen) == 12
        assert all(r["actor"] == "op1" for r in seen)
        assert [r["at"] for r in seen] == sorted((r["at"] for r in seen), reverse=True)


def test_access_log_is_verified_and_has_its_own_retention(tmp_path, rsa_key):
    options = {"max_segment_bytes": 4096, "access_retention": RetentionPolicy(max_bytes=9000)}
    with open_store(tmp_path, rsa_key, **options) as store:
        for _ in range(200):
            store.entity_types(actor="poller")
        store.checkpoint()
        assert store.verify_integrity().ok
        store.run_retention()
        assert store._ledger.table("access").first_index > 0
        assert store._ledger.table("logs").first_index == 0
        assert store.verify_integrity().ok
    record = sorted((tmp_path / "access").glob("*.qseg"))[-2]
    record.chmod(0o644)
    data = bytearray(record.read_bytes())
    data[200] ^= 1
    record.write_bytes(bytes(data))
    with open_store(tmp_path, rsa_key, **options) as store:
        report = store.verify_integrity()
    assert not report.ok
    assert any(p.startswith("access:") for p in report.problems)


def test_query_access_without_the_access_log_is_a_clear_error(tmp_path, rsa_key):
    with AuditStore.open(StoreConfig(tmp_path)) as store, pytest.raises(Conflict, match="access log is off"):
        store.query_access(AccessQuery())
