"""Retention drops whole sealed segments by age or bytes, checkpoints, and keeps proofs valid."""

from pathlib import Path

import pytest

from quipu.core.errors import BadInput
from quipu.core.ledger import Ledger
from quipu.core.merkle import verify_consistency, verify_inclusion
from quipu.core.retention import MICROS_PER_DAY, RetentionPolicy
from quipu.core.table import TableConfig

DAY = MICROS_PER_DAY


class Clock:
    """A settable clock: retention by age is about time passing, so tests move time."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def fill(ledger: Ledger, clock: Clock, days: int, per_day: int) -> None:
    for day in range(days):
        clock.now = (day + 1) * DAY
        for i in range(per_day):
            ledger.append(b"day %d record %d " % (day, i) + b"x" * 200, ts=clock.now)


def open_ledger(root: Path, keys, clock: Clock, policy: RetentionPolicy) -> Ledger:
    config = TableConfig(max_segment_bytes=4096, retention=policy)
    return Ledger.open(root, {"logs": config}, keys=keys, clock=clock)


def test_age_retention_drops_only_old_sealed_segments(tmp_path, keys):
    clock = Clock(DAY)
    with open_ledger(tmp_path, keys, clock, RetentionPolicy.days(3)) as ledger:
        fill(ledger, clock, days=10, per_day=40)
        table = ledger.table()
        before = table.tree_size
        dropped = ledger.run_retention()["logs"]
        assert dropped > 0
        cutoff = clock.now - 3 * DAY
        for seg in table.segments[:-1]:
            assert seg.seal_info.max_ts >= cutoff
        assert table.tree_size == before
        assert all(rec.ts >= cutoff - DAY for rec in table.records(table.first_index))
        assert ledger.verify_integrity().ok


def test_byte_budget_retention_keeps_store_within_budget(tmp_path, keys):
    clock = Clock(DAY)
    budget = 20_000
    with open_ledger(tmp_path, keys, clock, RetentionPolicy(max_bytes=budget)) as ledger:
        fill(ledger, clock, days=2, per_day=200)
        table = ledger.table()
        ledger.run_retention()
        assert table.bytes_on_disk() <= budget + 4096 + 300  # the active segment is never dropped
        assert table.first_index > 0
        assert ledger.verify_integrity().ok


def test_age_or_bytes_either_limit_drops(tmp_path, keys):
    clock = Clock(DAY)
    policy = RetentionPolicy(max_age_micros=100 * DAY, max_bytes=10_000)
    with open_ledger(tmp_path, keys, clock, policy) as ledger:
        fill(ledger, clock, days=2, per_day=100)
        assert ledger.run_retention()["logs"] > 0  # nothing is 100 days old: bytes decided


def test_purge_writes_checkpoint_and_proofs_still_verify(tmp_path, keys):
    clock = Clock(DAY)
    anchored = []
    config = TableConfig(max_segment_bytes=4096, retention=RetentionPolicy(max_bytes=8192))
    with Ledger.open(tmp_path, {"logs": config}, keys=keys, clock=clock, anchor=anchored.append) as ledger:
        fill(ledger, clock, days=1, per_day=300)
        table = ledger.table()
        old_root_size = 5
        old_root = table.root(old_root_size)
        before = len(anchored)
        ledger.run_retention()
        assert len(anchored) == before + 1
        purge_cp = anchored[-1]
        assert purge_cp.record_count == table.record_count
        assert purge_cp.tree_size == table.tree_size
        for index in (table.first_index, table.tree_size - 1):
            p = table.prove_inclusion(index)
            verify_inclusion(p.leaf_index, p.tree_size, p.leaf_hash, p.path, p.root)
        c = table.prove_consistency(old_root_size)
        assert c.first_root == old_root
        verify_consistency(c.first_size, c.second_size, c.first_root, c.second_root, c.proof)
        assert ledger.verify_integrity().ok
    with Ledger.open(tmp_path, {"logs": config}, keys=keys, clock=clock) as reopened:
        assert reopened.verify_integrity().ok
        assert reopened.table().first_index == purge_cp.tree_size - purge_cp.record_count


def test_retention_never_drops_the_active_segment(tmp_path, keys):
    clock = Clock(DAY)
    with open_ledger(tmp_path, keys, clock, RetentionPolicy(max_bytes=1)) as ledger:
        fill(ledger, clock, days=1, per_day=100)
        ledger.run_retention()
        table = ledger.table()
        assert len(table.segments) == 1
        assert table.record_count == table.segments[0].count


def test_nonpositive_retention_limits_are_rejected():
    with pytest.raises(BadInput, match="max_bytes"):
        RetentionPolicy(max_bytes=0)
    with pytest.raises(BadInput, match="max_age_micros"):
        RetentionPolicy(max_age_micros=-1)
