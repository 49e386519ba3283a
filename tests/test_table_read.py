"""Random access by global index: what proofs and the audit store's indexes stand on."""

import pytest

from quipu.core.errors import BadInput, NotFound
from quipu.core.retention import RetentionPolicy


def payload(i: int) -> bytes:
    return b"record %d " % i + b"p" * (i % 90)


def test_every_record_reads_back_by_index_across_sealed_and_active_segments(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        table.append_many(payload(i) for i in range(300))
        assert len(table.segments) > 3
        for i in range(300):  # some still in the active segment's write buffer
            assert table.read(i).payload == payload(i)
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        assert [table.read(i).payload for i in range(300)] == [payload(i) for i in range(300)]


def test_missing_offsets_file_is_rebuilt_from_the_segment(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        ledger.table().append_many(payload(i) for i in range(200))
    offsets = sorted((tmp_path / "logs").glob("*.qoff"))
    assert offsets
    offsets[0].unlink()
    offsets[1].write_bytes(b"QOFF garbage")
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        assert [table.read(i).payload for i in range(200)] == [payload(i) for i in range(200)]
    assert offsets[0].exists()


def test_purged_and_future_records_are_not_found(tmp_path, open_ledger):
    with open_ledger(tmp_path, retention=RetentionPolicy(max_bytes=6000)) as ledger:
        table = ledger.table()
        table.append_many(payload(i) for i in range(200))
        ledger.run_retention()
        first = table.first_index
        assert first > 0
        assert table.read(first).payload == payload(first)
        for index in (0, first - 1, 200, -1):
            with pytest.raises(NotFound):
                table.read(index)
        assert not (tmp_path / "logs" / "0000000001.qoff").exists()


def test_edited_offsets_file_is_reported_by_verify(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        ledger.table().append_many(payload(i) for i in range(200))
    path = sorted((tmp_path / "logs").glob("*.qoff"))[1]
    raw = bytearray(path.read_bytes())
    raw[-4:] = raw[-8:-4]  # the last record now points at the one before it
    path.write_bytes(bytes(raw))
    with open_ledger(tmp_path) as ledger:
        report = ledger.verify_integrity()
    assert not report.ok
    assert "offsets file does not match" in report.problems[0]


def test_a_bad_timestamp_appends_nothing_of_its_batch(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        table.append(b"before")
        with pytest.raises(BadInput, match="timestamp"):
            table.append_stamped([(5, b"ok"), (-1, b"bad"), (6, b"never")])
        assert table.tree_size == 1
        assert ledger.verify_integrity().ok


def test_each_record_keeps_its_own_timestamp(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        table.append_stamped([(30, b"a"), (10, b"b"), (20, b"c")])
        assert [table.read(i).ts for i in range(3)] == [30, 10, 20]
        assert ledger.verify_integrity().ok
