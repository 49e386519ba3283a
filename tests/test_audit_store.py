"""The embedded AuditStore: record once, find the same history from every related entity."""

from pathlib import Path

import pytest

from quipu.core import merkle
from quipu.core.audit_store import AuditStore, StoreConfig
from quipu.core.errors import BadInput, NotFound
from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.keyring import HmacKey, KeyRing
from quipu.core.query_spec import LogQuery, TargetFilter
from quipu.core.schema import (
    BlindIndex,
    ColumnDef,
    FieldDef,
    Protection,
    TypeSchema,
    default_actor_type,
    default_target_type,
)
from quipu.core.values import Content, Value

T0 = 1_700_000_000_000_000
DOCUMENT = TypeSchema(
    "document",
    (
        FieldDef.text("name").idx(),
        FieldDef.text("ssn").protect(Protection.HMAC).blind(BlindIndex("Ngram", 3)),
        FieldDef.text("owner").protect(Protection.RSA),
    ),
)


@pytest.fixture(scope="module")
def ring(rsa_key) -> KeyRing:
    return KeyRing([rsa_key], [HmacKey(1, b"k" * 32)])


def open_store(root: Path, ring: KeyRing, **options) -> AuditStore:
    options.setdefault("max_segment_bytes", 8192)
    store = AuditStore.open(StoreConfig(root, keys=ring, **options))
    store.define_type(default_actor_type())
    store.define_type(default_target_type())
    store.define_type(DOCUMENT)
    return store


def doc_event(i: int, name: str, *, method: str = "PUT", actor: str = "alice", tenant=None) -> AuditEvent:
    doc = EntityInput(f"d{i % 10}").text("name", name).text("ssn", f"123-45-{i % 10:04d}")
    return AuditEvent(
        "default_actor",
        EntityInput(actor).text("name", actor.title()),
        method,
        f"/docs/{i % 10}",
        Content("Text", f"change {i}"),
        targets=(TargetSpec("document", doc.text("owner", f"Owner {i % 10}")),),
        occurred_at=T0 + i * 1000,
        tenant=tenant,
    )


def by_name(name: str, mode: str = "exact") -> LogQuery:
    flt = TargetFilter.exact("document", "name", Value.text_(name))
    return LogQuery(targets=(getattr(flt, mode)() if mode != "exact" else flt,))


def test_one_row_is_found_from_actor_and_every_target(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        event = AuditEvent(
            "default_actor",
            EntityInput("alice").text("name", "Alice"),
            "PUT",
            "/docs/1",
            Content("Text", "edit"),
            targets=(
                TargetSpec("document", EntityInput("d1").text("name", "plan")),
                TargetSpec("default_target", EntityInput("p7").text("name", "project seven")),
            ),
        )
        log_id = store.append(event)
        assert len(log_id) == 32
        doors = [
            by_name("plan"),
            LogQuery(targets=(TargetFilter.exact("default_target", "name", Value.text_("project seven")),)),
            LogQuery(actor_type="default_actor", actor_id="alice"),
        ]
        for q in doors:
            assert [v["log_id"] for v in store.query(q).logs] == [log_id]


def test_renamed_entity_is_found_by_old_name_and_renders_as_recorded(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        old = [store.append(doc_event(3, "draft-v1")) for _ in range(2)]
        new = store.append(doc_event(3, "final-report"))
        hits = store.query(by_name("draft-v1")).logs
        assert [h["log_id"] for h in hits] == [new, *reversed(old)]
        names = [h["targets"][0]["fields"]["name"] for h in hits]
        assert names == [{"Text": "final-report"}, {"Text": "draft-v1"}, {"Text": "draft-v1"}]
        current_only = LogQuery(targets=by_name("draft-v1").targets, include_past=False)
        assert store.count(current_only) == 0
        assert store.count(LogQuery(targets=by_name("final-report").targets, include_past=False)) == 3
        history = store.entity_history("document", "d3")
        assert [v["fields"]["name"] for v in history] == [{"Text": "draft-v1"}, {"Text": "final-report"}]


def test_every_match_mode_on_plain_and_protected_fields(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        for i in range(10):
            store.append(doc_event(i, f"Quarterly Report {i}"))
        assert store.count(by_name("Quarterly Report 4")) == 1
        assert store.count(by_name("quarterly report 4", "exact_ci")) == 1
        assert store.count(by_name("quarterly", "prefix")) == 10
        assert store.count(by_name("report 7", "contains")) == 1
        ssn = TargetFilter.exact("document", "ssn", Value.text_("123-45-0006"))
        assert store.count(LogQuery(targets=(ssn,))) == 1
        assert store.count(LogQuery(targets=(ssn.contains(),))) >= 1


def test_contains_on_rsa_field_without_index_needs_the_plaintext_cache(tmp_path, ring):
    owner = TargetFilter.exact("document", "owner", Value.text_("Owner 4")).contains()
    with open_store(tmp_path, ring) as store:
        store.append(doc_event(4, "x"))
    write_only = KeyRing([type(ring.rsa_key())(1, ring.rsa_key().public)], [HmacKey(1, b"k" * 32)])
    with open_store(tmp_path, write_only) as store, pytest.raises(BadInput, match="plaintext cache"):
        store.count(LogQuery(targets=(owner,)))
    with open_store(tmp_path, ring, plaintext_cache=True) as store:
        assert store.count(LogQuery(targets=(owner,))) == 1


def test_write_only_store_returns_ciphertext(tmp_path, ring):
    write_only = KeyRing([type(ring.rsa_key())(1, ring.rsa_key().public)], [HmacKey(1, b"k" * 32)])
    with open_store(tmp_path, write_only) as store:
        store.append(doc_event(1, "x"))
        owner = store.query(LogQuery()).logs[0]["targets"][0]["fields"]["owner"]
        assert set(owner) == {"Rsa"}
    with open_store(tmp_path, ring) as store:
        owner = store.query(LogQuery()).logs[0]["targets"][0]["fields"]["owner"]
        assert owner == {"Text": "Owner 1"}


def test_no_protected_plaintext_reaches_disk(tmp_path, ring):
    secrets = [b"Owner 7", b"123-45-0007"]
    with open_store(tmp_path, ring) as store:
        store.append(doc_event(7, "public-name"))
        store.flush()
        store.checkpoint()
    blobs = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"public-name" in blobs  # the grep can see plain values at all
    for secret in secrets:
        assert secret not in blobs
        assert secret.lower() not in blobs


def test_actor_method_time_and_tenant_filters_combine(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        for i in range(60):
            method = "DELETE" if i % 3 == 0 else "PUT"
            actor = "bob" if i % 2 else "alice"
            store.append(doc_event(i, "n", method=method, actor=actor, tenant=f"t{i % 2}"))
        q = LogQuery(
            actor_type="default_actor",
            actor_id="bob",
            method="DELETE",
            from_micros=T0 + 10_000,
            to_micros=T0 + 40_000,
        )
        expected = [i for i in range(10, 40) if i % 3 == 0 and i % 2]
        assert store.count(q) == len(expected)
        assert [h["occurred_at"] for h in store.query(q).logs] == [T0 + i * 1000 for i in reversed(expected)]
        assert store.count(LogQuery(tenant="t0")) == 30
        assert all(h["tenant"] == "t1" for h in store.query(LogQuery(tenant="t1", limit=100)).logs)


def test_segments_outside_the_time_range_are_never_opened(tmp_path, ring):
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        for i in range(300):
            store.append(doc_event(i, "n"))
        total = len(store._logs.segments)
        page = store.query(LogQuery(from_micros=T0 + 295_000, to_micros=T0 + 300_000, limit=50))
        assert len(page.logs) == 5
        assert total > 10
        assert page.segments_scanned <= 2


def test_target_query_decodes_only_its_matches(tmp_path, ring):
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        store.append(doc_event(0, "needle"))
        for i in range(1, 400):
            store.append(doc_event(i, "hay") if i % 10 else doc_event(i + 1, "hay"))
        page = store.query(by_name("needle"))
        assert page.rows_decoded == len(page.logs) == 1


def test_desc_and_asc_pages_cover_everything_once(tmp_path, ring):
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        ids = [store.append(doc_event(i, "n")) for i in range(90)]
        for order, expected in (("desc", ids[::-1]), ("asc", ids)):
            seen, cursor = [], None
            while True:
                page = store.query(LogQuery(order=order, limit=13, cursor=cursor))
                seen += [h["log_id"] for h in page.logs]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == expected


def test_cursor_pages_show_the_snapshot_while_rows_arrive(tmp_path, ring):
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        first = [store.append(doc_event(i, "n")) for i in range(40)]
        page = store.query(LogQuery(limit=10))
        seen = [h["log_id"] for h in page.logs]
        i = 40
        while page.next_cursor:
            store.append(doc_event(i, "n"))  # newer and (by occurred_at) older rows arrive
            store.append(doc_event(i - 100, "n"))
            i += 1
            page = store.query(LogQuery(limit=10, cursor=page.next_cursor))
            seen += [h["log_id"] for h in page.logs]
        assert seen == first[::-1]


def test_bad_or_foreign_cursor_is_a_clear_error(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        for i in range(5):
            store.append(doc_event(i, "n"))
        cursor = store.query(LogQuery(limit=2)).next_cursor
        with pytest.raises(BadInput, match="cursor"):
            store.query(LogQuery(limit=2, cursor="not-a-cursor"))
        with pytest.raises(BadInput, match="cursor"):
            store.query(LogQuery(limit=2, method="PUT", cursor=cursor))


def test_bad_events_record_nothing(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        store.define_column(ColumnDef("ticket", "Number"))
        good = doc_event(1, "n")
        bad = [
            AuditEvent("nosuchtype", EntityInput("a"), "PUT", "/x", Content("Text", "x")),
            AuditEvent(**{**good.__dict__, "custom": {"nocolumn": Value.text_("x")}}),
            AuditEvent(**{**good.__dict__, "custom": {"ticket": Value.text_("not a number")}}),
            good.target(TargetSpec("document", EntityInput("d9").text("colour", "red"))),
        ]
        for event in bad:
            with pytest.raises(BadInput):
                store.append_many([good, event])
        assert store.count(LogQuery()) == 0
        assert store.list_entities("document") == []


def test_redefinition_is_additive_only(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        grown = TypeSchema("document", (*DOCUMENT.fields, FieldDef.text("status")))
        store.define_type(grown)
        changed = TypeSchema("document", (FieldDef.number("name"), *DOCUMENT.fields[1:]))
        with pytest.raises(BadInput, match="name"):
            store.define_type(changed)
    with AuditStore.open(StoreConfig(tmp_path, keys=ring)) as store:
        assert [t for t in store.entity_types() if t.type_name == "document"] == [grown]


def test_inclusion_proof_by_log_id_verifies(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        ids = [store.append(doc_event(i, "n")) for i in range(50)]
        p = store.prove_inclusion(ids[17])
        merkle.verify_inclusion(
            p["leaf_index"],
            p["tree_size"],
            bytes.fromhex(p["leaf"]),
            [bytes.fromhex(h) for h in p["audit_path"]],
            bytes.fromhex(p["merkle_root"]),
        )
        c = store.prove_consistency(10)
        merkle.verify_consistency(
            10,
            c["second_size"],
            bytes.fromhex(c["first_root"]),
            bytes.fromhex(c["merkle_root"]),
            [bytes.fromhex(h) for h in c["proof"]],
        )
        with pytest.raises(BadInput):
            store.prove_inclusion("zz")
        with pytest.raises(NotFound):
            store.prove_inclusion("0" * 32)


def test_indexes_survive_reopen_and_missing_index_files_are_rebuilt(tmp_path, ring):
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        for i in range(200):
            store.append(doc_event(i, f"name{i % 10}"))
        before = [h["log_id"] for h in store.query(by_name("name3")).logs]
    for idx in list((tmp_path / "logs").glob("*.qidx"))[:3]:
        idx.unlink()
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        assert [h["log_id"] for h in store.query(by_name("name3")).logs] == before
        assert store.count(LogQuery()) == 200
        assert store.verify_integrity().ok


def test_an_edited_log_index_is_reported_by_verify(tmp_path, ring):
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        for i in range(100):
            store.append(doc_event(i, f"name{i % 10}"))
        assert store.verify_integrity().ok
    idx = sorted((tmp_path / "logs").glob("*.qidx"))[0]
    idx.write_bytes(idx.read_bytes().replace(b"PUT", b"GET", 1))
    with open_store(tmp_path, ring, max_segment_bytes=4096) as store:
        report = store.verify_integrity()
    assert not report.ok
    assert "does not match its rows" in report.problems[-1]


def test_delete_marks_only_the_first_target_and_reads_add_no_versions(tmp_path, ring):
    with open_store(tmp_path, ring) as store:
        doc = TargetSpec("default_target", EntityInput("doc1").text("name", "doc-1"))
        folder = TargetSpec("default_target", EntityInput("f1").text("name", "folder-1"))
        actor = EntityInput("u1").text("name", "user1")
        for method in ("PUT", "DELETE", "GET", "DELETE", "GET"):
            store.append(
                AuditEvent("default_actor", actor, method, "/d", Content("Text", "x"), targets=(doc, folder))
            )
        assert [v["deleted"] for v in store.entity_history("default_target", "doc1")] == [False, True]
        assert [v["deleted"] for v in store.entity_history("default_target", "f1")] == [False]
        assert len(store.entity_history("default_actor", "u1")) == 1
        assert [e["entity_id"] for e in store.list_entities("default_target")] == ["f1"]
        assert len(store.list_entities("default_target", include_deleted=True)) == 2
        store.append(AuditEvent("default_actor", actor, "POST", "/d", Content("Text", "x"), targets=(doc,)))
        assert store.entity_history("default_target", "doc1")[-1]["deleted"] is False


def test_write_only_store_adds_no_version_for_an_unchanged_encrypted_field(tmp_path, ring):
    write_only = KeyRing([type(ring.rsa_key())(1, ring.rsa_key().public)], [HmacKey(1, b"k" * 32)])
    with open_store(tmp_path, write_only) as store:
        for i in range(5):
            store.append(doc_event(10 * i + 3, "same name"))
        assert len(store.entity_history("document", "d3")) == 1
        store.append(doc_event(3, "new name"))
        assert len(store.entity_history("document", "d3")) == 2
