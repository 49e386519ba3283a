"""Every way of tampering with a closed store's files is caught by verify_integrity(), by name.

Each case builds a real store of several sealed segments, signs a checkpoint, closes it,
edits the files on disk the way an attacker with file access (but without the signing key)
could, reopens the store and checks that verify_integrity() reports the right kind of break.
Each case first checks that the same store verified clean before the tamper.
"""

import dataclasses
import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import orjson
import pytest

from quipu.core import segment as segment_format
from quipu.core.chain import chain_next
from quipu.core.checkpoint import Checkpoint
from quipu.core.keyring import RsaKey
from quipu.core.merkle import leaf_hash, node_hash
from quipu.core.retention import RetentionPolicy
from quipu.core.segment import SegmentHeader
from quipu.core.spine import HEADER_SIZE as SPINE_HEADER_SIZE

RECORDS = 300
SEGMENT_BYTES = 4096

# The on-disk layout as the brief documents it (checked against the module once, below).
HEADER_SIZE = 84
FRAME = struct.Struct("<II")  # body length, zlib.crc32(body)
RECORD = struct.Struct("<BQ32s")  # kind=1, ts, chain; the payload follows
SEAL = struct.Struct("<BQQQQ32s")  # kind=2, sealed_at, count, min ts, max ts, chain head


def test_documented_layout_matches_the_module():
    assert segment_format.HEADER_SIZE == HEADER_SIZE
    assert FRAME.size + SEAL.size == segment_format.SEAL_FRAME_SIZE


# --- building stores -------------------------------------------------------------------


def payload(i: int) -> bytes:
    """A deterministic record of 100..300 bytes."""
    digest = hashlib.sha256(b"record %d" % i).digest()
    size = 100 + digest[0] * 200 // 255
    return (b"record %05d|" % i + digest * 10)[:size]


def build_store(root: Path, open_ledger, records: int = RECORDS, ts_base: int | None = None, **kw):
    """A closed store: `records` records over several sealed segments, then a checkpoint."""
    with open_ledger(root, max_segment_bytes=SEGMENT_BYTES, **kw) as ledger:
        for i in range(records):
            ledger.append(payload(i), ts=None if ts_base is None else ts_base + i)
        table = ledger.table()
        assert len(table.segments) >= 8
        assert table.segments[-1].count >= 3, "the active segment should hold some records"
        cp = ledger.checkpoint()
        if kw.get("keys", "default") is not None:
            assert cp is not None and cp.tree_size == records
        report = ledger.verify_integrity()
        assert report.ok, report.problems
    return cp


def seg_path(root: Path, seq: int) -> Path:
    return root / "logs" / f"{seq:010d}.qseg"


def seg_paths(root: Path) -> list[Path]:
    return sorted((root / "logs").glob("*.qseg"))


def writable(path: Path) -> Path:
    """Sealed segments are 0444: an attacker with file access just chmods them."""
    os.chmod(path, 0o644)
    return path


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, end, body) of every frame after the header."""
    out, off = [], HEADER_SIZE
    while off < len(data):
        length, crc = FRAME.unpack_from(data, off)
        body = data[off + FRAME.size : off + FRAME.size + length]
        assert zlib.crc32(body) == crc
        out.append((off, off + FRAME.size + length, body))
        off += FRAME.size + length
    return out


def put_frame(data: bytearray, offset: int, body: bytes) -> None:
    """Overwrite the frame at `offset` with a same-length `body` and a recomputed CRC."""
    (length,) = struct.unpack_from("<I", data, offset)
    assert len(body) == length
    FRAME.pack_into(data, offset, length, zlib.crc32(body))
    data[offset + FRAME.size : offset + FRAME.size + length] = body


def verify(root: Path, open_ledger, **kw):
    with open_ledger(root, max_segment_bytes=SEGMENT_BYTES, **kw) as ledger:
        return ledger.verify_integrity()


def assert_caught(report, *needles: str) -> None:
    assert report.ok is False
    text = "\n".join(report.problems)
    for needle in needles:
        assert needle in text, f"{needle!r} not in problems:\n{text}"


def edit_record_with_crc(path: Path, frame_no: int) -> int:
    """Flip one payload byte of the frame_no-th record and recompute its CRC; returns its ts."""
    data = bytearray(writable(path).read_bytes())
    offset, _, body = frames(data)[frame_no]
    assert body[0] == 1
    edited = bytearray(body)
    edited[RECORD.size + 5] ^= 0x01
    put_frame(data, offset, bytes(edited))
    path.write_bytes(data)
    return RECORD.unpack_from(body)[1]


# --- the cases -------------------------------------------------------------------------


def test_untouched_store_verifies_ok(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    report = verify(tmp_path, open_ledger)
    assert report.ok, report.problems
    assert report.problems == []
    assert report.records == RECORDS
    assert report.segments_checked == len(seg_paths(tmp_path))


def test_record_edited_in_sealed_segment_with_crc_recomputed(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    edit_record_with_crc(seg_path(tmp_path, 3), 2)
    report = verify(tmp_path, open_ledger)
    assert_caught(report, "0000000003.qseg", "chain value mismatch (record edited)")


def test_record_timestamp_edited_in_sealed_segment_with_crc_recomputed(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    path = writable(seg_path(tmp_path, 2))
    data = bytearray(path.read_bytes())
    offset, _, body = frames(data)[1]
    kind, ts, chain = RECORD.unpack_from(body)
    put_frame(data, offset, RECORD.pack(kind, ts - 3_600_000_000, chain) + body[RECORD.size :])
    path.write_bytes(data)
    report = verify(tmp_path, open_ledger)
    assert_caught(report, "0000000002.qseg", "chain value mismatch (record edited)")


def test_record_edited_in_active_segment_with_crc_recomputed(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    active = seg_paths(tmp_path)[-1]
    edit_record_with_crc(active, 0)
    with open_ledger(tmp_path) as ledger:
        # the edit passes the CRC walk at open: nothing is cut off, nothing quarantined
        assert ledger.table().tree_size == RECORDS
        report = ledger.verify_integrity()
    assert not (tmp_path / "quarantine").exists()
    assert_caught(report, active.name, "chain value mismatch (record edited)")


def test_record_edited_with_its_chain_value_recomputed_differs_from_the_spine(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    path = writable(seg_path(tmp_path, 3))
    data = bytearray(path.read_bytes())
    fr = frames(bytes(data))
    prev_chain = RECORD.unpack_from(fr[1][2])[2]
    offset, _, body = fr[2]
    _, ts, _ = RECORD.unpack_from(body)
    new_payload = b"X" + body[RECORD.size + 1 :]
    put_frame(
        data, offset, RECORD.pack(1, ts, chain_next(prev_chain, ts, leaf_hash(new_payload))) + new_payload
    )
    path.write_bytes(data)
    with open_ledger(tmp_path) as ledger:
        index = ledger.table().segments[2].header.base_index + 2
        report = ledger.verify_integrity()
    assert_caught(report, f"record {index} (segment {path.name}): leaf differs from the Merkle spine")


def test_middle_segment_removed(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    seg_path(tmp_path, 4).unlink()
    report = verify(tmp_path, open_ledger)
    assert_caught(report, "0000000005.qseg follows sequence 3: a segment was removed")


def test_two_sealed_segments_swapped(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    a, b = writable(seg_path(tmp_path, 3)), writable(seg_path(tmp_path, 4))
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    report = verify(tmp_path, open_ledger)
    assert_caught(report, "0000000003.qseg holds sequence 4 (segments swapped or renamed)")


def test_segment_replaced_by_same_seq_segment_of_another_store(tmp_path, open_ledger):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    build_store(ours, open_ledger)
    build_store(theirs, open_ledger)  # same payloads, same layout, another store id
    assert seg_path(ours, 4).stat().st_size == seg_path(theirs, 4).stat().st_size
    writable(seg_path(ours, 4)).write_bytes(seg_path(theirs, 4).read_bytes())
    report = verify(ours, open_ledger)
    assert_caught(report, "segment 0000000004.qseg belongs to another store")


def test_newest_records_truncated_after_checkpoint(tmp_path, open_ledger):
    cp = build_store(tmp_path, open_ledger)
    active = seg_paths(tmp_path)[-1]
    data = active.read_bytes()
    cut_at = frames(data)[-2][0]  # a clean frame boundary: the two newest records go
    with open(active, "r+b") as f:
        f.truncate(cut_at)
    with open_ledger(tmp_path) as ledger:
        assert ledger.table().tree_size == RECORDS - 2  # the spine follows the records
        report = ledger.verify_integrity()
    assert_caught(report, f"covers {cp.tree_size} records but the tree has {RECORDS - 2} (truncated)")


def test_newest_segment_deleted_after_checkpoint(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    seg_paths(tmp_path)[-1].unlink()
    report = verify(tmp_path, open_ledger)
    assert_caught(report, f"covers {RECORDS} records", "(truncated)")


def test_whole_chain_rewritten_from_another_store_without_the_key(tmp_path, open_ledger):
    """Same payloads, other timestamps (a backdated rewrite): every Merkle root matches, so
    only the signed chain head can tell."""
    ours, forged = tmp_path / "ours", tmp_path / "forged"
    cp = build_store(ours, open_ledger, ts_base=1_700_000_000_000_000)
    build_store(forged, open_ledger, ts_base=1_500_000_000_000_000, keys=None)
    assert not (forged / "checkpoints.log").exists()
    for p in seg_paths(ours):
        p.unlink()
    for name in ("STORE", "logs/spine.qspn", *(f"logs/{p.name}" for p in seg_paths(forged))):
        shutil.copyfile(forged / name, ours / name)
    with open_ledger(ours) as ledger:
        assert ledger.table().root(cp.tree_size) == cp.merkle_root  # payloads are the same
        report = ledger.verify_integrity()
    assert_caught(
        report,
        "chain head differs from the record it covers (chain rewritten)",
        "latest checkpoint head",
    )


def rewrite_from_scratch(root: Path, edit_index: int, spine: bool = True) -> None:
    """What a tamperer with file access but no key can do: edit one record, then recompute
    every later chain value, CRC, seal, segment seed and (if `spine`) the Merkle spine."""
    head, index, leaves = None, 0, []
    for path in seg_paths(root):
        data = bytearray(writable(path).read_bytes())
        header = SegmentHeader.unpack(path, bytes(data[:HEADER_SIZE]))
        if head is None:
            head = header.seed
        data[:HEADER_SIZE] = dataclasses.replace(header, seed=head).pack()
        for offset, _, body in frames(bytes(data)):
            if body[0] == 1:
                _, ts, _ = RECORD.unpack_from(body)
                rec_payload = body[RECORD.size :]
                if index == edit_index:
                    rec_payload = b"FORGED" + rec_payload[6:]
                head = chain_next(head, ts, leaf_hash(rec_payload))
                leaves.append(leaf_hash(rec_payload))
                put_frame(data, offset, RECORD.pack(1, ts, head) + rec_payload)
                index += 1
            else:
                fields = list(SEAL.unpack(body))
                fields[-1] = head
                put_frame(data, offset, SEAL.pack(*fields))
        path.write_bytes(data)
    spine_path = root / "logs" / "spine.qspn"
    if spine:
        spine_path.write_bytes(spine_bytes(spine_path.read_bytes()[:SPINE_HEADER_SIZE], leaves))


def spine_bytes(header: bytes, leaves: list[bytes]) -> bytes:
    """A spine file written from scratch: every complete subtree in post-order."""
    out, frontier = bytearray(header), []
    for n, leaf in enumerate(leaves):
        out += leaf
        h = leaf
        while n & 1:
            h = node_hash(frontier.pop(), h)
            out += h
            n >>= 1
        frontier.append(h)
    return bytes(out)


def test_chain_recomputed_but_spine_kept_differs_from_spine(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    rewrite_from_scratch(tmp_path, edit_index=40, spine=False)
    report = verify(tmp_path, open_ledger)
    assert_caught(report, "record 40 (segment", "leaf differs from the Merkle spine")


def test_whole_chain_rewritten_in_place_without_the_key(tmp_path, open_ledger):
    cp = build_store(tmp_path, open_ledger)
    rewrite_from_scratch(tmp_path, edit_index=40)
    # The forgery is self-consistent: without the signed checkpoints nothing looks wrong...
    log = tmp_path / "checkpoints.log"
    aside = log.rename(tmp_path / "aside.log")
    forged = verify(tmp_path, open_ledger)
    assert forged.ok, forged.problems
    aside.rename(log)
    # ...but every checkpoint signed after record 40 pins the original root and head.
    report = verify(tmp_path, open_ledger)
    assert_caught(
        report,
        f"Merkle root at size {cp.tree_size} differs (log rewritten)",
        "chain head differs from the record it covers (chain rewritten)",
    )


def last_checkpoint_line(root: Path) -> tuple[list[bytes], dict]:
    lines = (root / "checkpoints.log").read_bytes().splitlines()
    return lines, orjson.loads(lines[-1])


def write_lines(root: Path, lines: list[bytes]) -> None:
    (root / "checkpoints.log").write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("tree_size", lambda v: v - 1),
        ("record_count", lambda v: v - 1),
        ("merkle_root", lambda v: "00" * 32),
        ("chain_head", lambda v: v[:-2] + ("00" if v[-2:] != "00" else "11")),
        ("created_at", lambda v: v + 1),
    ],
)
def test_checkpoint_line_edited(tmp_path, open_ledger, field, change):
    build_store(tmp_path, open_ledger)
    lines, obj = last_checkpoint_line(tmp_path)
    obj[field] = change(obj[field])
    write_lines(tmp_path, [*lines[:-1], orjson.dumps(obj)])
    report = verify(tmp_path, open_ledger)
    assert_caught(
        report,
        f"checkpoints.log line {len(lines)}): signature does not verify",
    )


def forge_truncation(root: Path, open_ledger, key: RsaKey) -> Checkpoint:
    """Cut the two newest records and replace the last checkpoint with one that describes the
    truncated log exactly (right size, root and head), signed with `key`."""
    active = seg_paths(root)[-1]
    data = active.read_bytes()
    fr = frames(data)
    with open(active, "r+b") as f:
        f.truncate(fr[-2][0])
    head = RECORD.unpack_from(fr[-3][2])[2]
    lines, _ = last_checkpoint_line(root)
    real = Checkpoint.from_json(lines[-1])
    with open_ledger(root, keys=None) as ledger:  # the tamperer can run Quipu too
        root_hash = ledger.table().root(real.tree_size - 2)
    forged = dataclasses.replace(
        real,
        tree_size=real.tree_size - 2,
        record_count=real.record_count - 2,
        merkle_root=root_hash,
        chain_head=head,
    ).signed_with(key)
    write_lines(root, [*lines[:-1], forged.to_json()])
    return forged


def test_checkpoint_resigned_with_another_key(tmp_path, open_ledger, other_rsa_key):
    build_store(tmp_path, open_ledger)
    lines, _ = last_checkpoint_line(tmp_path)
    forged = forge_truncation(tmp_path, open_ledger, other_rsa_key)
    assert forged.key_version == 1
    report = verify(tmp_path, open_ledger)
    # The forged checkpoint is right about everything but who signed it.
    assert_caught(report, f"line {len(lines)}): signature does not verify")
    assert len(report.problems) == 1, report.problems


def test_checkpoint_resigned_with_unknown_key_version(tmp_path, open_ledger, other_rsa_private):
    build_store(tmp_path, open_ledger)
    lines, _ = last_checkpoint_line(tmp_path)
    key = RsaKey(2, other_rsa_private.public_key(), other_rsa_private)
    forge_truncation(tmp_path, open_ledger, key)
    report = verify(tmp_path, open_ledger)
    assert_caught(report, f"line {len(lines)}): key version 2 is not in the key ring")
    assert len(report.problems) == 1, report.problems


def test_forged_truncation_signed_with_our_key_would_verify(tmp_path, open_ledger, rsa_key):
    """Control for the two cases above: the forgery is only caught because of its signer."""
    build_store(tmp_path, open_ledger)
    forge_truncation(tmp_path, open_ledger, rsa_key)
    report = verify(tmp_path, open_ledger)
    assert report.ok, report.problems


def test_oldest_segment_deleted_outside_retention(tmp_path, open_ledger):
    cp = build_store(tmp_path, open_ledger)
    first = seg_path(tmp_path, 1)
    removed = frames(first.read_bytes())
    first.unlink()
    count = sum(1 for _, _, body in removed if body[0] == 1)
    with open_ledger(tmp_path) as ledger:
        assert ledger.table().first_index == count
        assert ledger.table().tree_size == cp.tree_size  # the spine still knows every leaf
        report = ledger.verify_integrity()
    assert_caught(
        report,
        f"records 0..{count - 1} were removed after the latest checkpoint "
        "(segments deleted outside retention)",
    )


def test_two_oldest_segments_deleted_outside_retention(tmp_path, open_ledger):
    build_store(tmp_path, open_ledger)
    seg_path(tmp_path, 1).unlink()
    seg_path(tmp_path, 2).unlink()
    report = verify(tmp_path, open_ledger)
    assert_caught(report, "(segments deleted outside retention)")


def test_retention_purge_verifies_ok_and_later_deletion_is_caught(tmp_path, open_ledger):
    retention = RetentionPolicy(max_bytes=6 * SEGMENT_BYTES)
    build_store(tmp_path, open_ledger, retention=retention)
    with open_ledger(tmp_path, retention=retention) as ledger:
        before = len(ledger.table().segments)
        dropped = ledger.run_retention()["logs"]
        assert dropped > 0
        assert len(ledger.table().segments) == before - dropped
        first = ledger.table().first_index
        assert first > 0
        report = ledger.verify_integrity()
        assert report.ok, report.problems
    remaining = seg_paths(tmp_path)
    assert len(remaining) == before - dropped
    assert remaining[0].name == f"{dropped + 1:010d}.qseg"
    report = verify(tmp_path, open_ledger, retention=retention)
    assert report.ok, report.problems
    assert report.records == RECORDS - first
    # the purge's checkpoint pins the new first record: deleting one more segment shows
    remaining[0].unlink()
    report = verify(tmp_path, open_ledger, retention=retention)
    assert_caught(report, f"records {first}..", "(segments deleted outside retention)")
