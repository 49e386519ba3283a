"""Opening a store: the lock, what open reads, when checkpoints are signed and anchored,
and that each sync policy's data survives close/reopen (and flush() survives SIGKILL)."""

import importlib.util
import os
from pathlib import Path

import pytest

from quipu.core.checkpoint import Checkpoint
from quipu.core.errors import BadInput, StoreLocked
from quipu.core.keyring import KeyRing
from quipu.core.ledger import Ledger
from quipu.core.retention import RetentionPolicy
from quipu.core.sync import SyncPolicy
from quipu.core.table import TableConfig

_spec = importlib.util.spec_from_file_location("crash_writer", Path(__file__).with_name("crash_writer.py"))
crash_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_writer)
payload, parse_payload = crash_writer.payload, crash_writer.parse_payload

SEGMENT_BYTES = 4096


def fill(ledger: Ledger, start: int, count: int) -> None:
    for seq in range(start, start + count):
        ledger.append(payload(seq))


def seqs_in(ledger: Ledger) -> list[int]:
    return [parse_payload(rec.payload) for rec in ledger.table().records()]


def checkpoint_lines(root: Path) -> list[bytes]:
    path = root / "checkpoints.log"
    return path.read_bytes().splitlines() if path.exists() else []


# --- the lock ----------------------------------------------------------------------------


def test_store_held_by_child_process_is_locked_until_the_holder_is_killed(
    tmp_path, open_ledger, spawn_writer
):
    holder = spawn_writer(tmp_path, "--limit", "50")
    holder.wait_for("done")  # the child holds the store open and waits
    with pytest.raises(StoreLocked) as err:
        open_ledger(tmp_path)
    assert err.value.holder_pid == holder.pid
    assert f"locked by process {holder.pid}" in str(err.value)
    assert holder.alive()
    holder.sigkill()
    # the kernel drops the flock with the process: no stale lock to clean up by hand
    with open_ledger(tmp_path) as ledger:
        assert seqs_in(ledger) == list(range(int(holder.lines()[-2].split()[1]) + 1))
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())


def test_second_open_in_the_same_process_is_refused(tmp_path, open_ledger):
    with open_ledger(tmp_path) as first:
        first.append(b"one")
        with pytest.raises(StoreLocked) as err:
            open_ledger(tmp_path)
        assert err.value.holder_pid == os.getpid()
        assert f"process {os.getpid()}" in str(err.value)
        # the refused open left the holder working
        first.append(b"two")
        first.flush()
    with open_ledger(tmp_path) as again:
        assert [r.payload for r in again.table().records()] == [b"one", b"two"]


def test_failed_open_releases_the_lock(tmp_path, open_ledger):
    with open_ledger(tmp_path) as ledger:
        ledger.append(b"x")
    with pytest.raises(BadInput, match="plain identifier"):
        Ledger.open(tmp_path, {"not a name": TableConfig()})
    with open_ledger(tmp_path) as ledger:
        assert ledger.table().tree_size == 1


# --- what open reads -----------------------------------------------------------------


def build_sealed_store(root: Path, open_ledger, segment_bytes: int, count: int) -> list[Path]:
    with open_ledger(root, max_segment_bytes=segment_bytes) as ledger:
        fill(ledger, 0, count)
        paths = [seg.path for seg in ledger.table().segments]
    assert len(paths) >= 5
    return paths


def test_open_does_not_scan_sealed_segments(tmp_path, open_ledger):
    paths = build_sealed_store(tmp_path, open_ledger, SEGMENT_BYTES, 200)
    victim = paths[2]
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # CRC not fixed: any frame walk would see it
    victim.write_bytes(data)
    with open_ledger(tmp_path) as ledger:  # open succeeds: it read header and seal only
        table = ledger.table()
        assert table.tree_size == 200
        assert len(table.segments) == len(paths)
        assert table.segments[2].seal_info is not None
        report = ledger.verify_integrity()
    assert not report.ok
    assert f"segment {victim.name}: frame CRC mismatch" in "\n".join(report.problems)


def read_bytes_counter() -> int:
    """Bytes this process has read through read(2)-like calls (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_open_reads_the_active_segment_not_the_whole_store(tmp_path, open_ledger):
    segment_bytes = 256 * 1024
    with open_ledger(tmp_path, max_segment_bytes=segment_bytes) as ledger:
        table, seq = ledger.table(), 0
        while len(table.segments) < 17:  # 16 sealed segments, a fresh active one
            fill(ledger, seq, 1)
            seq += 1
        fill(ledger, seq, 10)
        count = seq + 10
        paths = [seg.path for seg in table.segments]
    sealed = sum(p.stat().st_size for p in paths[:-1])
    assert sealed > 4_000_000
    before = read_bytes_counter()
    ledger = open_ledger(tmp_path, max_segment_bytes=segment_bytes)
    read = read_bytes_counter() - before
    try:
        assert ledger.table().tree_size == count
        assert seqs_in(ledger)[-1] == count - 1
    finally:
        ledger.close()
    # headers, seal trailers, the small active segment and checkpoints.log: not 4 MB
    assert read < sealed // 10, f"open read {read} bytes of a store with {sealed} sealed bytes"


# --- checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("ring", ["public_only", "empty", "none"])
def test_no_checkpoint_without_a_private_key(tmp_path, public_keys, ring):
    keys = {"public_only": public_keys, "empty": KeyRing(), "none": None}[ring]
    config = TableConfig(max_segment_bytes=SEGMENT_BYTES)
    with Ledger.open(tmp_path, {"logs": config}, keys=keys) as ledger:
        fill(ledger, 0, 100)
        assert len(ledger.table().segments) >= 4  # several seals happened
        assert ledger.checkpoint() is None
        assert ledger.verify_integrity().ok
    assert not (tmp_path / "checkpoints.log").exists()


def test_anchor_hook_gets_every_checkpoint_once_after_it_is_logged(tmp_path, open_ledger):
    anchored: list[Checkpoint] = []
    logged_when_anchored: list[bytes] = []

    def anchor(cp: Checkpoint) -> None:
        anchored.append(cp)
        logged_when_anchored.append(checkpoint_lines(tmp_path)[-1])

    with open_ledger(tmp_path, anchor=anchor) as ledger:
        fill(ledger, 0, 100)
        seals = len(ledger.table().segments) - 1
        assert len(anchored) == seals
        on_demand = ledger.checkpoint()
        assert anchored[-1] is on_demand
    lines = checkpoint_lines(tmp_path)
    assert len(lines) == seals + 1
    assert anchored == [Checkpoint.from_json(line) for line in lines]
    # each checkpoint was already in checkpoints.log when its hook ran
    assert [Checkpoint.from_json(line) for line in logged_when_anchored] == anchored
    assert len({cp.tree_size for cp in anchored}) == len(anchored)


def test_failing_anchor_hook_breaks_neither_appends_nor_checkpoints(tmp_path, open_ledger):
    calls = []

    def anchor(cp: Checkpoint) -> None:
        calls.append(cp)
        raise RuntimeError("the transparency log is down")

    with open_ledger(tmp_path, anchor=anchor) as ledger:
        fill(ledger, 0, 100)  # seals inside append call the hook
        seals = len(ledger.table().segments) - 1
        assert seals >= 3
        cp = ledger.checkpoint()
        assert cp is not None and cp.tree_size == 100
        fill(ledger, 100, 10)
        assert ledger.table().tree_size == 110
        seals = len(ledger.table().segments) - 1
        report = ledger.verify_integrity()
        assert report.ok, report.problems
    assert len(calls) == seals + 1
    assert len(checkpoint_lines(tmp_path)) == seals + 1
    with open_ledger(tmp_path) as ledger:
        assert seqs_in(ledger) == list(range(110))


def test_checkpoints_are_written_on_seal_on_demand_and_after_a_purge(tmp_path, open_ledger):
    retention = RetentionPolicy(max_bytes=3 * SEGMENT_BYTES)
    with open_ledger(tmp_path, retention=retention) as ledger:
        table = ledger.table()
        assert checkpoint_lines(tmp_path) == []
        seq = 0
        while len(table.segments) < 2:  # up to the first seal
            fill(ledger, seq, 1)
            seq += 1
        assert len(checkpoint_lines(tmp_path)) == 1
        sealed = Checkpoint.from_json(checkpoint_lines(tmp_path)[0])
        assert sealed.tree_size == table.segments[1].header.base_index
        assert sealed.segment_seq == 2
        while len(table.segments) < 7:
            fill(ledger, seq, 1)
            seq += 1
        assert len(checkpoint_lines(tmp_path)) == 6  # one per seal
        ledger.flush()
        assert len(checkpoint_lines(tmp_path)) == 6  # flush() does not checkpoint
        ledger.checkpoint()
        assert len(checkpoint_lines(tmp_path)) == 7
        dropped = ledger.run_retention()["logs"]
        assert dropped > 0
        lines = checkpoint_lines(tmp_path)
        assert len(lines) == 8
        purge = Checkpoint.from_json(lines[-1])
        assert purge.tree_size == table.tree_size == seq
        assert purge.record_count == table.record_count < seq
        assert ledger.run_retention()["logs"] == 0
        assert len(checkpoint_lines(tmp_path)) == 8  # nothing purged, nothing signed
        report = ledger.verify_integrity()
        assert report.ok, report.problems


# --- sync policies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        SyncPolicy.always(),
        SyncPolicy.every_n(7),
        SyncPolicy.every_n_or_interval(50, 0.01),
        SyncPolicy.os_managed(),
    ],
    ids=lambda p: p.kind,
)
def test_every_sync_policy_round_trips_across_close_and_reopen(tmp_path, open_ledger, policy):
    with open_ledger(tmp_path, sync=policy) as ledger:
        fill(ledger, 0, 123)
        ledger.table().append_many(payload(s) for s in range(123, 140))
        assert len(ledger.table().segments) >= 5
    with open_ledger(tmp_path, sync=policy) as ledger:
        assert seqs_in(ledger) == list(range(140))
        fill(ledger, 140, 10)
        report = ledger.verify_integrity()
        assert report.ok, report.problems
    with open_ledger(tmp_path, sync=policy) as ledger:
        assert seqs_in(ledger) == list(range(150))
        assert ledger.table().tree_size == 150


def test_flush_makes_group_committed_records_survive_sigkill(
    tmp_path, open_ledger, private_pem_path, spawn_writer
):
    # A group commit that never fires on its own (N and the interval are out of reach):
    # only the child's final flush() can make its records durable before the kill.
    writer = spawn_writer(
        tmp_path,
        "--pem",
        str(private_pem_path),
        "--limit",
        "400",
        "--flush-at-end-only",
        "--sync-n",
        "1000000",
        "--sync-seconds",
        "3600",
        "--segment-bytes",
        str(16 << 20),
    )
    writer.wait_for("done")
    acked = writer.acked()
    assert acked >= 399
    assert [line for line in writer.lines() if line.startswith("acked")] == [f"acked {acked}"]
    writer.sigkill()
    with open_ledger(tmp_path, max_segment_bytes=16 << 20) as ledger:
        assert seqs_in(ledger) == list(range(acked + 1))
        report = ledger.verify_integrity()
        assert report.ok, report.problems
