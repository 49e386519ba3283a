"""Store states a crash can leave between two steps of a seal, a purge or a close, and what
open and verify make of each (regressions of bugs found by the tamper and crash tests)."""

import shutil
import time

from quipu.core.retention import RetentionPolicy
from quipu.core.segment import HEADER_SIZE
from quipu.core.sync import SyncPolicy


def fill(ledger, count, size=200):
    return [ledger.append(b"%06d" % i + b"r" * size) for i in range(count)]


def segment_files(root):
    return sorted((root / "logs").glob("*.qseg"))


def test_close_never_hangs_with_a_tiny_group_commit_interval(tmp_path, open_ledger):
    for i in range(200):
        ledger = open_ledger(tmp_path / str(i % 4), sync=SyncPolicy.every_n_or_interval(1000, 0.0005))
        ledger.append(b"x")
        ledger.close()


def test_group_commit_timer_syncs_records_appended_during_its_wait(tmp_path, open_ledger):
    """A record appended after a count-triggered sync re-arms the timer and reaches the
    disk within the interval, with no further append and no flush()."""
    ledger = open_ledger(tmp_path / "live", sync=SyncPolicy.every_n_or_interval(3, 0.05))
    fill(ledger, 3)  # the count triggers a sync
    fill(ledger, 1)  # buffered: only the timer can sync it now
    seen = 0
    for attempt in range(100):  # polls a copy of the files: exactly what a SIGKILL leaves
        copy = tmp_path / f"copy{attempt}"
        shutil.copytree(tmp_path / "live", copy, ignore=shutil.ignore_patterns("LOCK"))
        with open_ledger(copy) as snapshot:
            seen = snapshot.table().tree_size
        if seen == 4:
            break
        time.sleep(0.02)
    ledger.close()
    assert seen == 4


def test_crash_between_seal_and_next_segment_reopens_without_inflating_the_tree(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        fill(ledger, 100)
        sealed_records = ledger.table().segments[-1].header.base_index
    newest = segment_files(tmp_path)[-1]
    newest.unlink()  # the active segment did not exist yet when the crash hit
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        assert table.tree_size == sealed_records
        assert [r.index for r in table.records()] == list(range(sealed_records))
        assert ledger.verify_integrity().ok
        index = ledger.append(b"after the crash")
        assert index == sealed_records
        assert ledger.verify_integrity().ok


def test_interrupted_segment_creation_leaves_nothing_to_misread(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        fill(ledger, 40)
        before = ledger.table().tree_size
    leftover = tmp_path / "logs" / "0000000099.qseg.tmp"
    leftover.write_bytes(b"\0" * (HEADER_SIZE // 2))
    with open_ledger(tmp_path) as ledger:
        assert not leftover.exists()
        assert ledger.table().tree_size == before
        assert ledger.verify_integrity().ok


def test_swapped_active_and_sealed_segment_opens_and_is_reported(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        fill(ledger, 60)
        ledger.checkpoint()
    *_, sealed, active = segment_files(tmp_path)
    sealed.chmod(0o644)
    a, b = sealed.read_bytes(), active.read_bytes()
    sealed.write_bytes(b)
    active.write_bytes(a)
    with open_ledger(tmp_path) as ledger:
        report = ledger.verify_integrity()
    assert not report.ok
    assert "swapped or renamed" in report.problems[0]


def test_purge_checkpoint_never_claims_records_not_yet_on_disk(tmp_path, open_ledger):
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    ledger = open_ledger(live, sync=SyncPolicy.every_n(1000), retention=RetentionPolicy(max_bytes=8192))
    fill(ledger, 90)
    ledger.flush()
    fill(ledger, 5)  # buffered in the process, not yet handed to the OS
    assert ledger.run_retention()["logs"] > 0
    shutil.copytree(live, crashed, ignore=shutil.ignore_patterns("LOCK"))  # what a SIGKILL leaves
    ledger.close()
    with open_ledger(crashed) as reopened:
        assert reopened.verify_integrity().ok
        assert reopened.table().tree_size == 95
