"""Crash recovery: SIGKILLed writers never lose acknowledged records; torn tails are cut off.

The soak test kills a real writer process (tests/crash_writer.py) at random moments, many
times over the same store, and checks after every restart that nothing acknowledged by a
returned flush() went missing. The deterministic tests build the torn tails a crash leaves.
"""

import importlib.util
import os
import random
import time
import zlib
from pathlib import Path

import pytest

from quipu.core.merkle import leaf_hash

_spec = importlib.util.spec_from_file_location("crash_writer", Path(__file__).with_name("crash_writer.py"))
crash_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_writer)
payload, parse_payload = crash_writer.payload, crash_writer.parse_payload

HEADER_SIZE = 84


def stored_seqs(ledger) -> list[int]:
    return [parse_payload(rec.payload) for rec in ledger.table().records()]


@pytest.mark.slow
def test_sigkill_loop_never_loses_acknowledged_records(tmp_path, open_ledger, private_pem_path, spawn_writer):
    root = tmp_path / "store"
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    ctx = f"(random seed {seed})"
    args = ("--pem", str(private_pem_path), "--segment-bytes", "16384", "--sync-n", "50")
    acked, kills, kills_while_writing = -1, 0, 0
    budget_end = time.monotonic() + 20.0  # bounds the loop's length, asserts nothing
    while kills < 20 or (kills < 40 and time.monotonic() < budget_end):
        writer = spawn_writer(root, *args, "--seed", str(kills))
        if kills % 5 == 4:
            # now and then, kill during start-up / recovery rather than mid-append
            time.sleep(rng.uniform(0.0, 0.12))
        else:
            last_on_disk = int(writer.wait_for("open ").split()[1])
            assert last_on_disk >= acked, (
                f"run {kills}: store reopened at seq {last_on_disk}, but seq {acked} had been "
                f"acknowledged {ctx}"
            )
            time.sleep(rng.uniform(0.05, 0.4))
            kills_while_writing += 1
        assert writer.alive(), f"writer died on its own {ctx}:\n{writer.err.read_text()}"
        writer.sigkill()
        kills += 1
        acked = max(acked, writer.acked())
    assert kills >= 20 and kills_while_writing >= 16
    assert acked > 1000, f"the writers acknowledged too little to test anything {ctx}"

    with open_ledger(root, max_segment_bytes=16384) as ledger:
        table = ledger.table()
        seqs = stored_seqs(ledger)
        # every acknowledged record is there, exactly once and in order (and nothing else)
        assert seqs == list(range(len(seqs))), f"records out of sequence {ctx}"
        assert len(seqs) - 1 >= acked, f"acked {acked} but only {len(seqs)} records {ctx}"
        assert table.tree_size == len(seqs)
        assert len(table.segments) > 5
        report = ledger.verify_integrity()
        assert report.ok, f"{report.problems} {ctx}"
        assert report.records == len(seqs)
        checkpoints = (root / "checkpoints.log").read_bytes().splitlines()
        assert len(checkpoints) >= 5
        # and the store takes new records after all that
        start = len(seqs)
        table.append_many(payload(s) for s in range(start, start + 100))
        ledger.flush()
        assert ledger.checkpoint().tree_size == start + 100
    with open_ledger(root, max_segment_bytes=16384) as ledger:
        assert stored_seqs(ledger) == list(range(start + 100))
        assert ledger.verify_integrity().ok


# --- deterministic torn tails ----------------------------------------------------------


def build(root: Path, open_ledger, count: int = 60) -> Path:
    """A closed store of `count` records; returns its active segment (holding some records)."""
    with open_ledger(root) as ledger:
        for seq in range(count):
            ledger.append(payload(seq))
        ledger.flush()
        active = ledger.table().segments[-1]
        assert active.count >= 3
        path = active.path
    return path


def last_frame(data: bytes) -> tuple[int, bytes]:
    """(offset, bytes) of the last frame of a segment file."""
    off, last = HEADER_SIZE, None
    while off < len(data):
        length = int.from_bytes(data[off : off + 4], "little")
        last = off
        off += 8 + length
    assert off == len(data)
    return last, data[last:]


def check_recovered(root: Path, open_ledger, active: Path, good_size: int, torn: bytes, count: int):
    """Reopening cut exactly `torn` off `active` into quarantine/ and kept every record."""
    with open_ledger(root) as ledger:
        table = ledger.table()
        assert active.stat().st_size == good_size
        assert [parse_payload(r.payload) for r in table.records()] == list(range(count))
        assert table.tree_size == count
        assert table.root() == table.spine.root(count)
        report = ledger.verify_integrity()
        assert report.ok, report.problems
        # appending after the cut continues the chain
        table.append(payload(count))
        ledger.flush()
    quarantined = list((root / "quarantine").iterdir())
    assert len(quarantined) == 1
    assert quarantined[0].read_bytes() == torn
    assert quarantined[0].name == f"logs-{active.stem}-{good_size}.torn"
    with open_ledger(root) as ledger:
        assert [parse_payload(r.payload) for r in ledger.table().records()] == list(range(count + 1))
        assert ledger.verify_integrity().ok


def test_garbage_after_last_frame_is_quarantined_and_cut(tmp_path, open_ledger):
    active = build(tmp_path, open_ledger)
    good_size = active.stat().st_size
    garbage = bytes(random.Random(7).getrandbits(8) for _ in range(777))
    with open(active, "ab") as f:
        f.write(garbage)
    check_recovered(tmp_path, open_ledger, active, good_size, garbage, 60)


def test_half_written_frame_is_quarantined_and_cut(tmp_path, open_ledger):
    active = build(tmp_path, open_ledger)
    data = active.read_bytes()
    _, frame = last_frame(data)
    half = frame[: len(frame) // 2]  # a real frame's header and half its body
    with open(active, "ab") as f:
        f.write(half)
    check_recovered(tmp_path, open_ledger, active, len(data), half, 60)


def test_torn_frame_header_is_quarantined_and_cut(tmp_path, open_ledger):
    active = build(tmp_path, open_ledger)
    data = active.read_bytes()
    with open(active, "ab") as f:
        f.write(data[-3:])  # fewer bytes than a frame header
    check_recovered(tmp_path, open_ledger, active, len(data), data[-3:], 60)


def test_crc_broken_final_frame_is_cut_never_read_as_a_record(tmp_path, open_ledger):
    active = build(tmp_path, open_ledger)
    data = bytearray(active.read_bytes())
    offset, _ = last_frame(bytes(data))
    # the body is complete and well-formed but one payload byte is off: a torn sector
    data[offset + 8 + 41 + 20] ^= 0x40
    assert zlib.crc32(bytes(data[offset + 8 :])) != int.from_bytes(data[offset + 4 : offset + 8], "little")
    active.write_bytes(data)
    with open_ledger(tmp_path) as ledger:
        table = ledger.table()
        payloads = [r.payload for r in table.records()]
        # the spine, built before the crash, knew record 59: it is cut back too
        assert table.tree_size == 59
        assert leaf_hash(bytes(data[offset + 8 + 41 :])) not in {leaf_hash(p) for p in payloads}
    assert [parse_payload(p) for p in payloads] == list(range(59))
    assert active.stat().st_size == offset
    # the bytes are kept as evidence, not destroyed
    assert (tmp_path / "quarantine" / f"logs-{active.stem}-{offset}.torn").read_bytes() == data[offset:]
    # without a checkpoint covering record 59, the shorter log is consistent
    with open_ledger(tmp_path) as ledger:
        report = ledger.verify_integrity()
        assert report.ok, report.problems


def test_crc_broken_frame_covered_by_checkpoint_is_reported(tmp_path, open_ledger):
    """Cutting a signed record on open is recovery, but verify must still say it is gone."""
    with open_ledger(tmp_path) as ledger:
        for seq in range(60):
            ledger.append(payload(seq))
        cp = ledger.checkpoint()
        active = ledger.table().segments[-1].path
    data = bytearray(active.read_bytes())
    data[-1] ^= 0xFF
    active.write_bytes(data)
    with open_ledger(tmp_path) as ledger:
        assert ledger.table().tree_size == 59
        report = ledger.verify_integrity()
    assert not report.ok
    assert f"covers {cp.tree_size} records but the tree has 59 (truncated)" in "\n".join(report.problems)
