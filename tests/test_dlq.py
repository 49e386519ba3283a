"""The dead-letter queue on its own: its file format, counting, quarantine and rewrite."""

import os

import orjson
import pytest

from quipu.core.errors import BadInput, CorruptStore, UnsupportedFormat
from quipu.core.event import AuditEvent, EntityInput, TargetSpec
from quipu.core.values import Content, Value
from quipu.shard.dlq import DeadLetterQueue, ParkedEvent

T0 = 1_700_000_000_000_000
SECRET = "s3cr3t-customer-value"


def parked(i: int, *, tenant: str | None = "acme", key: str | None = None) -> ParkedEvent:
    event = AuditEvent(
        "robot",
        EntityInput(f"r{i}").text("name", SECRET),
        "POST",
        f"/jobs/{i}",
        Content("Json", '{"n":1}'),
        targets=(TargetSpec("job", EntityInput(f"j{i}").number("size", i)),),
        custom={"ticket": Value.number(i)},
        occurred_at=T0 + i,
        tenant=tenant,
        idempotency_key=key,
    )
    return ParkedEvent(event, "actor: unknown type 'robot'; define it first (define_type)", T0 + 1000 + i)


def test_parked_batch_round_trips_with_tenant_key_and_occurred_at(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "dlq")
    batch = [parked(1, key="k-1"), parked(2, tenant=None)]
    dlq.park(batch)
    [path] = dlq.batches()
    assert path.name == "0000000000000001.dlq"
    assert dlq.load(path) == batch
    doc = orjson.loads(path.read_bytes())
    assert doc["v"] == 1 and doc["entries"][0]["key"] == "k-1" and doc["entries"][0]["tenant"] == "acme"
    assert doc["entries"][0]["event"]["occurred_at"] == T0 + 1


def test_count_is_kept_in_memory_and_restored_on_open(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.park([parked(1), parked(2)])
    dlq.park([parked(3)])
    assert dlq.count() == 3
    assert [p.name for p in dlq.batches()] == ["0000000000000001.dlq", "0000000000000002.dlq"]
    reopened = DeadLetterQueue(tmp_path / "dlq")
    assert reopened.count() == 3
    reopened.park([parked(4)])
    assert reopened.batches()[-1].name == "0000000000000003.dlq"


def test_replace_keeps_the_remaining_entries_or_removes_the_file(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.park([parked(1), parked(2)])
    [path] = dlq.batches()
    dlq.replace(path, [parked(2)])
    assert dlq.load(path) == [parked(2)] and dlq.count() == 1
    dlq.replace(path, [])
    assert not path.exists() and dlq.count() == 0 and dlq.batches() == []


def test_garbage_and_unknown_versions_are_quarantined_on_open_and_counted(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.park([parked(1)])
    (tmp_path / "dlq" / "0000000000000002.dlq").write_bytes(os.urandom(64))
    (tmp_path / "dlq" / "0000000000000003.dlq").write_bytes(b'{"v":9,"entries":[]}')
    reopened = DeadLetterQueue(tmp_path / "dlq")
    assert reopened.quarantined == 2 and reopened.count() == 1
    assert sorted(p.name for p in (tmp_path / "dlq" / "quarantine").iterdir()) == [
        "0000000000000002.dlq",
        "0000000000000003.dlq",
    ]
    assert DeadLetterQueue(tmp_path / "dlq").quarantined == 2  # counted across restarts


def test_unknown_version_is_refused_by_name(tmp_path):
    path = tmp_path / "dlq" / "0000000000000001.dlq"
    dlq = DeadLetterQueue(tmp_path / "dlq")
    path.write_bytes(b'{"v":2,"entries":[]}')
    with pytest.raises(UnsupportedFormat, match="format version 2; this release reads version 1"):
        dlq.load(path)


def test_invalid_entry_is_corrupt_and_the_message_shows_no_event_content(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "dlq")
    entry = parked(1).to_json()
    entry["event"]["actor"]["entity_id"] = "../" + SECRET
    path = tmp_path / "dlq" / "0000000000000001.dlq"
    path.write_bytes(orjson.dumps({"v": 1, "entries": [parked(2).to_json(), entry]}))
    with pytest.raises(CorruptStore) as caught:
        dlq.load(path)
    assert "entry 1" in str(caught.value) and SECRET not in str(caught.value)


def test_an_entry_without_occurred_at_cannot_be_parked_or_loaded(tmp_path):
    event = parked(1).event
    without_time = AuditEvent(event.actor_type, event.actor, event.method, event.url, event.content)
    with pytest.raises(BadInput, match="occurred_at"):
        ParkedEvent(without_time, "reason", T0)
    entry = parked(1).to_json()
    del entry["event"]["occurred_at"]
    path = tmp_path / "dlq" / "0000000000000001.dlq"
    dlq = DeadLetterQueue(tmp_path / "dlq")
    path.write_bytes(orjson.dumps({"v": 1, "entries": [entry]}))
    with pytest.raises(CorruptStore):
        dlq.load(path)


def test_new_batches_never_reuse_a_quarantined_name(tmp_path):
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.park([parked(1)])
    [path] = dlq.batches()
    dlq.quarantine(path)
    assert dlq.count() == 0 and dlq.quarantined == 1
    reopened = DeadLetterQueue(tmp_path / "dlq")
    reopened.park([parked(2)])
    assert [p.name for p in reopened.batches()] == ["0000000000000002.dlq"]


def test_a_temp_file_torn_by_a_crash_is_removed_on_open(tmp_path):
    DeadLetterQueue(tmp_path / "dlq").park([parked(1)])
    torn = tmp_path / "dlq" / "0000000000000002.dlq.123.456.tmp"
    torn.write_bytes(b'{"v":1,"entr')
    reopened = DeadLetterQueue(tmp_path / "dlq")
    assert not torn.exists() and reopened.count() == 1 and reopened.quarantined == 0
